"""The selector's policies: each one's rule on random pools (hypothesis), the one-prompt and batched paths
deciding alike, and bad parameters named. Constraints, the budget and the pool have files of their own."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from selector.constraints import ELIGIBLE, InvalidRequest, require_eligible
from selector.policies import POLICIES, CostCapPolicy, QualityTargetPolicy, TradeoffPolicy, make_policy, rank_rows
from tests.support.strategies import constraints_for, policies, scored_pools, unit, usd


@settings(max_examples=400, deadline=None)
@given(data=st.data(), scored=scored_pools(), policy=policies(), ties=st.booleans())
def test_the_one_prompt_path_of_route_matches_the_array_path(data, scored, policy, ties):
    """Route's plain-Python path (exclusions_one, rank) decides exactly as exclusions/require_eligible/select,
    on float32 scores as Triton returns them, with exact ties in quality and cost."""
    pool, quality, cost = scored
    if ties:   # a few distinct values, so that keys tie and the tie-break order shows
        quality, cost = np.round(quality, 1), np.round(cost, 3)
    quality, cost = quality.astype(np.float32), cost.astype(np.float32)
    constraints = data.draw(constraints_for(pool))
    codes = constraints.exclusions(pool, cost[None, :])
    assert constraints.exclusions_one(pool, cost) == codes[0].tolist()
    eligible = [j for j, code in enumerate(codes[0].tolist()) if code == ELIGIBLE]
    if eligible:
        expected = policy.select(quality, cost, require_eligible(codes, constraints)[0]).tolist()
        assert policy.rank(quality.tolist(), cost.tolist(), eligible) == expected


@settings(max_examples=300, deadline=None)
@given(scored=scored_pools())
def test_lambda_zero_picks_the_best_predicted_model(scored):
    pool, quality, cost = scored
    eligible = pool.enabled
    chosen = TradeoffPolicy(0).select(quality, cost, eligible)[0]
    assert quality[chosen] == quality[eligible].max()
    # Among equally good models, the cheapest.
    assert cost[chosen] == cost[eligible & (quality == quality[chosen])].min()


@settings(max_examples=300, deadline=None)
@given(scored=scored_pools(), lambdas=st.lists(st.floats(0, 1e6), min_size=2, max_size=12))
def test_expected_cost_never_rises_as_lambda_grows(scored, lambdas):
    pool, quality, cost = scored
    chosen_costs = [cost[TradeoffPolicy(lam).select(quality, cost, pool.enabled)[0]] for lam in sorted(lambdas)]
    assert all(later <= earlier for earlier, later in zip(chosen_costs, chosen_costs[1:]))


@settings(max_examples=300, deadline=None)
@given(scored=scored_pools(), tau=unit)
def test_quality_target_takes_the_cheapest_model_reaching_tau_else_the_best(scored, tau):
    pool, quality, cost = scored
    eligible = pool.enabled
    chosen = QualityTargetPolicy(tau).select(quality, cost, eligible)[0]
    reaching = eligible & (quality >= tau)
    if reaching.any():
        assert reaching[chosen] and cost[chosen] == cost[reaching].min()
    else:
        assert quality[chosen] == quality[eligible].max()


@settings(max_examples=300, deadline=None)
@given(scored=scored_pools(), cap=usd)
def test_cost_cap_takes_the_best_model_within_the_cap_else_the_cheapest(scored, cap):
    pool, quality, cost = scored
    eligible = pool.enabled
    chosen = CostCapPolicy(cap).select(quality, cost, eligible)[0]
    within = eligible & (cost <= cap)
    if within.any():
        assert within[chosen] and quality[chosen] == quality[within].max()
    else:
        assert cost[chosen] == cost[eligible].min()


@settings(max_examples=300, deadline=None)
@given(data=st.data(), scored=scored_pools(max_models=12), policy=policies(), ties=st.booleans(),
       n_rows=st.integers(1, 9))
def test_a_coalesced_batchs_rankings_equal_route_one_prompt_at_a_time(data, scored, policy, ties, n_rows):
    """rank_rows (a coalesced batch of Routes decided at once) gives every row the exclusion codes and
    ranking of Route's one-prompt path (exclusions_one, rank), on float32 scores with exact ties."""
    pool, _, _ = scored
    n = len(pool)
    quality = np.array(data.draw(st.lists(st.lists(unit, min_size=n, max_size=n), min_size=n_rows, max_size=n_rows)))
    cost = np.array(data.draw(st.lists(st.lists(usd, min_size=n, max_size=n), min_size=n_rows, max_size=n_rows)))
    if ties:
        quality, cost = np.round(quality, 1), np.round(cost, 3)
    quality, cost = quality.astype(np.float32), cost.astype(np.float32)
    constraints = data.draw(constraints_for(pool))
    codes, rankings = rank_rows(policy, constraints, pool, quality, cost)
    for i in range(n_rows):
        one = constraints.exclusions_one(pool, cost[i])
        assert codes[i] == one
        assert rankings[i] == policy.rank(quality[i].tolist(), cost[i].tolist(),
                                          [j for j, code in enumerate(one) if code == ELIGIBLE])


@pytest.mark.parametrize("ties", [False, True])
def test_batched_choice_equals_one_prompt_at_a_time(ties):
    rng = np.random.default_rng(1)
    quality, cost = rng.random((200, 7)), rng.random((200, 7)) * 1e-3
    if ties:      # few distinct values: exact ties on every key
        quality, cost = np.round(quality, 1), np.round(cost, 4)
    eligible = rng.random((200, 7)) < 0.7
    eligible[:, 0] = True
    for policy in (TradeoffPolicy(0), TradeoffPolicy(300), QualityTargetPolicy(0.6), CostCapPolicy(4e-4)):
        batched = policy.choose(quality, cost, eligible)
        assert [policy.select(quality[i], cost[i], eligible[i])[0] for i in range(200)] == batched.tolist()


@pytest.mark.parametrize("name, value, message", [
    ("tradeoff", -1.0, "tradeoff.quality_per_usd"), ("tradeoff", math.nan, "tradeoff.quality_per_usd"),
    ("tradeoff", math.inf, "tradeoff.quality_per_usd"), ("quality_target", -0.1, "quality_target.tau"),
    ("quality_target", 1.5, "quality_target.tau"), ("quality_target", math.nan, "quality_target.tau"),
    ("cost_cap", -1e-3, "cost_cap.cap_usd"), ("cost_cap", math.nan, "cost_cap.cap_usd")])
def test_bad_policy_parameters_name_the_field_and_the_valid_range(name, value, message):
    with pytest.raises(InvalidRequest, match=message) as error:
        make_policy(name, value)
    assert error.value.field == message
    assert any(word in str(error.value) for word in (">= 0", "[0, 1]"))


def test_unknown_policy_lists_the_registry():
    with pytest.raises(InvalidRequest, match="cost_cap.*quality_target.*tradeoff"):
        make_policy("cheapest", 0)
    assert sorted(POLICIES) == ["cost_cap", "quality_target", "tradeoff"]
