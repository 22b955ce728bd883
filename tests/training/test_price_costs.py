"""Costs estimated from list prices for models whose per-prompt costs are unknown."""

import numpy as np
import pytest

from training.price_costs import fill_unknown_costs, input_tokens, typical_output_tokens

TEXTS = ["short", "a somewhat longer prompt", "x" * 401]
PRICES = [[1.0, 2.0], [0.5, 4.0], [3.0, 3.0]]


def _costs(prices, output_tokens):
    """The canonical data's formula: ceil(chars / 4) input tokens x input price + output x output price."""
    return np.stack([(input_tokens(TEXTS) * p_in + output_tokens * p_out) / 1e6 for p_in, p_out in prices], axis=1)


def test_input_tokens_round_up_a_quarter_of_the_characters():
    np.testing.assert_array_equal(input_tokens(TEXTS), [2, 6, 101])


def test_output_tokens_are_solved_from_costs_and_prices():
    cost = _costs(PRICES, np.array([100.0, 200.0, 300.0]))    # every model: 200 output tokens on average
    assert typical_output_tokens(TEXTS, cost, PRICES) == pytest.approx(200.0)
    # Models without prices or with too few known costs say nothing.
    cost[:, 1] = np.nan
    assert typical_output_tokens(TEXTS, cost, [[None, None], PRICES[1], [3.0, None]]) is None


def test_unknown_costs_are_filled_from_prices_and_known_ones_kept():
    cost = _costs(PRICES, np.full(3, 50.0))
    cost[:, 2] = np.nan
    cost[0, 2] = 0.123                                        # one known cost is too few to fit a row on
    filled, names = fill_unknown_costs(TEXTS, cost, PRICES, ["a", "b", "c"])
    assert names == ["c"]
    np.testing.assert_allclose(filled[1:, 2], (input_tokens(TEXTS[1:]) * 3.0 + 50.0 * 3.0) / 1e6)
    assert filled[0, 2] == 0.123
    np.testing.assert_array_equal(filled[:, :2], cost[:, :2])


def test_free_models_stay_free_and_complete_costs_are_untouched():
    cost = _costs(PRICES, np.full(3, 50.0))
    cost[:, 0] = 0.0                                          # known to cost nothing: not unknown
    filled, names = fill_unknown_costs(TEXTS, cost, PRICES, ["a", "b", "c"])
    assert names == [] and filled is cost


def test_a_model_without_costs_or_prices_is_a_clear_error():
    cost = _costs(PRICES, np.full(3, 50.0))
    cost[:, 1] = np.nan
    with pytest.raises(ValueError, match="'b' has no known cost and no prices"):
        fill_unknown_costs(TEXTS, cost, [PRICES[0], [None, 1.0], PRICES[2]], ["a", "b", "c"])
