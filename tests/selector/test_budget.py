"""The budgeted assignment of RouteBatch against exact solvers (brute force, and a DP on integer costs): never
over the budget, within the Lagrangian bound, within 1% of the optimum on routing-shaped batches."""

import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from selector.budget import BudgetTooSmall, assign_budget
from selector.constraints import InvalidRequest
from tests.support.strategies import unit


def brute_force_optimum(quality, cost, eligible, budget_usd):
    """Exact: every combination; the best summed quality within budget (math.fsum), or None."""
    best = None
    options = [np.flatnonzero(row) for row in eligible]
    for combo in itertools.product(*options):
        rows = np.arange(len(combo))
        if math.fsum(cost[rows, list(combo)]) <= budget_usd:
            value = float(quality[rows, list(combo)].sum())
            best = value if best is None else max(best, value)
    return best


def dp_optimum(quality, cost_units, budget_units):
    """Exact for integer costs: best summed quality per total cost, one prompt at a time."""
    best = np.full(budget_units + 1, -np.inf)
    best[0] = 0.0
    for q_row, c_row in zip(quality, cost_units):
        new = np.full_like(best, -np.inf)
        for q, c in zip(q_row, c_row):
            if c <= budget_units:
                new[c:] = np.maximum(new[c:], best[:budget_units + 1 - c] + q)
        best = new
    return float(best.max())


def check_assignment(result, quality, cost, eligible, budget_usd):
    rows = np.arange(len(quality))
    assert eligible[rows, result.choice].all()
    assert math.fsum(cost[rows, result.choice]) <= budget_usd
    assert result.total_cost_usd == math.fsum(cost[rows, result.choice])
    assert math.isclose(result.total_quality, math.fsum(quality[rows, result.choice]))


@st.composite
def small_batches(draw):
    n, m = draw(st.integers(1, 5)), draw(st.integers(1, 4))
    quality = np.array(draw(st.lists(unit, min_size=n * m, max_size=n * m))).reshape(n, m)
    # Integer and real costs both: integer ones make exact ties, which real data rarely has.
    cost_values = st.integers(0, 20).map(float) | st.floats(0, 20, allow_nan=False)
    cost = np.array(draw(st.lists(cost_values, min_size=n * m, max_size=n * m))).reshape(n, m)
    eligible = np.array(draw(st.lists(st.booleans(), min_size=n * m, max_size=n * m))).reshape(n, m)
    eligible[np.arange(n), draw(st.lists(st.integers(0, m - 1), min_size=n, max_size=n))] = True
    budget = draw(st.floats(0, 20 * n, allow_nan=False))
    return quality, cost, eligible, budget


@settings(max_examples=400, deadline=None)
@given(batch=small_batches())
def test_batch_never_exceeds_the_budget_and_stays_within_the_lagrangian_bound(batch):
    """On any instance: within budget, eligible choices, and at most one prompt's quality range below the
    exact optimum (the relaxation's guarantee; the repairs only add)."""
    quality, cost, eligible, budget = batch
    optimum = brute_force_optimum(quality, cost, eligible, budget)
    if optimum is None:
        with pytest.raises(BudgetTooSmall, match="total_budget_usd"):
            assign_budget(quality, cost, eligible, budget)
        return
    result = assign_budget(quality, cost, eligible, budget)
    check_assignment(result, quality, cost, eligible, budget)
    widest = max(float(q[e].max() - q[e].min()) for q, e in zip(quality, eligible))
    assert result.total_quality >= optimum - widest - 1e-9


def routing_shaped_batch(rng, n, m):
    """Per-model accuracy plus per-prompt noise, prices spanning a decade or more, integer cost units so
    the DP is exact; budget between the cheapest and the best-quality assignment."""
    accuracy = rng.uniform(0.15, 0.9, m)
    price = rng.integers(1, 40, m)
    quality = np.clip(accuracy + rng.normal(0, 0.25, (n, m)), 0, 1)
    cost_units = np.maximum(1, np.round(price * rng.lognormal(0, 0.3, (n, m)))).astype(np.int64)
    low, high = cost_units.min(axis=1).sum(), cost_units[np.arange(n), quality.argmax(axis=1)].sum()
    return quality, cost_units, int(rng.integers(low, max(low, high) + 1))


def test_batch_is_within_one_percent_of_the_exact_optimum():
    rng = np.random.default_rng(7)
    gaps = []
    for _ in range(150):
        n, m = int(rng.integers(3, 60)), int(rng.integers(2, 9))
        quality, cost_units, budget_units = routing_shaped_batch(rng, n, m)
        # Units of 2**-17 USD (~$0.0000076, the scale of one prompt's cost): exact in binary, so the
        # solver's float sums and the DP's integer sums agree on what fits.
        cost = cost_units * 2.0 ** -17
        budget = budget_units * 2.0 ** -17
        result = assign_budget(quality, cost, np.ones_like(quality, dtype=bool), budget)
        check_assignment(result, quality, cost, np.ones_like(quality, dtype=bool), budget)
        optimum = dp_optimum(quality, cost_units, budget_units)
        gaps.append((optimum - result.total_quality) / optimum)
    assert max(gaps) <= 0.01, f"worst gap {max(gaps):.4f}"


def test_batch_of_ten_thousand_prompts_by_32_models_stays_within_budget():
    rng = np.random.default_rng(3)
    quality = rng.beta(2, 2, (10_000, 32)).astype(np.float32)
    cost = (rng.lognormal(-8, 1.5, 32) * rng.lognormal(0, 0.3, (10_000, 32))).astype(np.float32)
    eligible = rng.random((10_000, 32)) < 0.9
    eligible[:, 0] = True
    rows = np.arange(10_000)
    cheapest = np.where(eligible, cost, np.inf).min(axis=1).sum(dtype=np.float64)
    best = cost[rows, np.where(eligible, quality, -1).argmax(axis=1)].sum(dtype=np.float64)
    for budget in (float(cheapest), float(cheapest + 0.3 * (best - cheapest)), float(best) * 2):
        result = assign_budget(quality, cost, eligible, budget)
        check_assignment(result, quality, cost, eligible, budget)
    # The relaxation's price makes cheaper choices as the budget shrinks.
    prices = [assign_budget(quality, cost, eligible, cheapest + f * (best - cheapest)).quality_per_usd
              for f in (0.2, 0.5, 0.8)]
    assert prices[0] > prices[1] > prices[2] > 0


def test_budget_that_affords_the_best_models_takes_them():
    quality = np.array([[0.9, 0.5], [0.2, 0.8]])
    cost = np.array([[3.0, 1.0], [1.0, 2.0]])
    result = assign_budget(quality, cost, np.ones((2, 2), bool), 5.0)
    assert result.choice.tolist() == [0, 1] and result.quality_per_usd == 0.0


@pytest.mark.parametrize("budget", [-1.0, math.nan])
def test_a_negative_or_nan_budget_is_invalid(budget):
    with pytest.raises(InvalidRequest, match="total_budget_usd: must be a number >= 0"):
        assign_budget(np.ones((1, 1)), np.ones((1, 1)), np.ones((1, 1), bool), budget)


def test_a_budget_below_the_cheapest_assignment_says_what_it_would_take():
    with pytest.raises(BudgetTooSmall, match=r"total_budget_usd: 1 is below \$3"):
        assign_budget(np.ones((3, 2)), np.ones((3, 2)) * [1.0, 2.0], np.ones((3, 2), bool), 1.0)
