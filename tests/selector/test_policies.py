"""The selector's pure parts: policies, constraints, the budgeted assignment (against exact solvers), the pool."""

import itertools
import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from predictor_service.artifact import default_artifact_path
from selector.budget import BudgetTooSmall, assign_budget
from selector.constraints import (DENIED, DISABLED, ELIGIBLE, NOT_ALLOWED, TOO_EXPENSIVE, TOO_SLOW, Constraints,
                                  InvalidRequest, NoEligibleModel, require_eligible)
from selector.policies import POLICIES, CostCapPolicy, QualityTargetPolicy, TradeoffPolicy, make_policy, rank_rows
from selector.pool import (DEFAULT_POOL_PATH, STAND_IN_P95_LATENCY_MS, Pool, PoolError, PoolMismatchError, PoolModel,
                           ServedPool, blended_usd_per_mtok, load_pool, match_pool, pool_for_models, pool_toml)


# --- strategies -----------------------------------------------------------------------------------------

unit = st.floats(0, 1, allow_nan=False)
usd = st.floats(0, 0.01, allow_nan=False)     # per-prompt costs are 1e-5..1e-2 USD on the real data


@st.composite
def scored_pools(draw, max_models=8):
    """A pool with random latency and enabled flags, and one prompt's (quality, expected_cost_usd)."""
    n = draw(st.integers(1, max_models))
    models = tuple(PoolModel(f"m{j}", 1.0, 1.0, draw(st.sampled_from([300.0, 800.0, 1500.0, 3000.0])),
                             enabled=draw(st.booleans()) if j else True) for j in range(n))
    quality = np.array(draw(st.lists(unit, min_size=n, max_size=n)))
    cost = np.array(draw(st.lists(usd, min_size=n, max_size=n)))
    return Pool(models), quality, cost


@st.composite
def constraints_for(draw, pool):
    names = pool.names
    return Constraints(
        allow=tuple(draw(st.lists(st.sampled_from(names), unique=True, max_size=len(names)))),
        deny=tuple(draw(st.lists(st.sampled_from(names), unique=True, max_size=max(0, len(names) - 1)))),
        max_latency_ms=draw(st.none() | st.sampled_from([500.0, 1000.0, 2000.0, 5000.0])),
        max_cost_usd=draw(st.none() | usd))


def policies():
    return (st.builds(TradeoffPolicy, st.floats(0, 1e6)) | st.builds(QualityTargetPolicy, unit)
            | st.builds(CostCapPolicy, usd))


def satisfies(pool, constraints, j, cost):
    model = pool.models[j]
    return (model.enabled and (not constraints.allow or model.name in constraints.allow)
            and model.name not in constraints.deny
            and (constraints.max_latency_ms is None or model.p95_latency_ms <= constraints.max_latency_ms)
            and (constraints.max_cost_usd is None or cost[j] <= constraints.max_cost_usd))


# --- policies and constraints ---------------------------------------------------------------------------

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
@given(data=st.data(), scored=scored_pools(), policy=policies())
def test_chosen_model_satisfies_every_constraint(data, scored, policy):
    pool, quality, cost = scored
    constraints = data.draw(constraints_for(pool))
    codes = constraints.exclusions(pool, cost[None, :])
    satisfying = [j for j in range(len(pool)) if satisfies(pool, constraints, j, cost)]
    assert [j for j in range(len(pool)) if codes[0, j] == ELIGIBLE] == satisfying
    if not satisfying:
        with pytest.raises(NoEligibleModel, match="constraints|pool file"):
            require_eligible(codes, constraints)
        return
    ranking = policy.select(quality, cost, require_eligible(codes, constraints)[0])
    assert sorted(ranking.tolist()) == satisfying          # every eligible model ranked, nothing else
    assert satisfies(pool, constraints, int(ranking[0]), cost)


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


def test_constraints_name_the_bad_field_and_the_valid_values():
    pool = Pool((PoolModel("a", 1, 1, 100), PoolModel("b", 1, 1, 100)))
    with pytest.raises(InvalidRequest, match=r"constraints.allow: unknown model\(s\) \['zz'\]; valid models are \['a', 'b'\]"):
        Constraints(allow=("a", "zz")).validate(pool)
    with pytest.raises(InvalidRequest, match="constraints.deny"):
        Constraints(deny=("zz",)).validate(pool)
    for field in ("max_latency_ms", "max_cost_usd"):
        for value in (-1.0, math.nan):
            with pytest.raises(InvalidRequest, match=f"constraints.{field}"):
                Constraints(**{field: value}).validate(pool)


def test_exclusion_reasons_and_the_message_when_nothing_is_left():
    pool = Pool((PoolModel("off", 1, 1, 100, enabled=False), PoolModel("slow", 1, 1, 5000),
                 PoolModel("denied", 1, 1, 100), PoolModel("pricey", 1, 1, 100), PoolModel("other", 1, 1, 100)))
    constraints = Constraints(allow=("off", "slow", "denied", "pricey"), deny=("denied",), max_latency_ms=1000,
                              max_cost_usd=0.001)
    cost = np.array([[0.0, 0.0, 0.0, 0.01, 0.0]])
    codes = constraints.exclusions(pool, cost)
    assert codes[0].tolist() == [DISABLED, TOO_SLOW, DENIED, TOO_EXPENSIVE, NOT_ALLOWED]
    assert constraints.reason(TOO_SLOW, pool, 1, 0.0) == "constraints.max_latency_ms: p95 latency 5000 ms > 1000 ms"
    assert constraints.reason(TOO_EXPENSIVE, pool, 3, 0.01).startswith("constraints.max_cost_usd")
    with pytest.raises(NoEligibleModel) as error:
        require_eligible(codes, constraints)
    for culprit in ("pool file", "constraints.allow", "constraints.deny", "constraints.max_latency_ms=1000",
                    "constraints.max_cost_usd=0.001"):
        assert culprit in str(error.value)


# --- budgeted assignment --------------------------------------------------------------------------------

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


# --- pool -----------------------------------------------------------------------------------------------

def test_default_pool_has_the_32_models_and_prices_of_the_default_artifact():
    # The committed artifact's manifest carries the training data's pool and prices, so this holds on a
    # machine without ../shared/data too.
    manifest = json.loads((default_artifact_path() / "manifest.json").read_text())
    pool = load_pool()
    assert pool.names == manifest["model_names"] and len(pool.names) == 32
    for model, (input_usd, output_usd) in zip(pool.models, manifest["model_prices"]):
        assert (model.input_usd_per_mtok, model.output_usd_per_mtok) == (input_usd, output_usd)
        assert model.p95_latency_ms > 0 and model.enabled
    assert "STAND-IN" in DEFAULT_POOL_PATH.read_text()


@pytest.mark.parametrize("body, message", [
    ("[[models]]\nname = 'a'\ninput_usd_per_mtok = -1\noutput_usd_per_mtok = 1\np95_latency_ms = 5\n",
     "'input_usd_per_mtok' must be a number >= 0"),
    ("[[models]]\nname = 'a'\ninput_usd_per_mtok = 1\noutput_usd_per_mtok = 1\np95_latency_ms = 0\n",
     "'p95_latency_ms' must be a number > 0"),
    ("[[models]]\nname = 'a'\ninput_usd_per_mtok = 1\noutput_usd_per_mtok = 1\np95_latency_ms = 5\nprice = 3\n",
     r"unknown keys \['price'\]"),
    ("[[models]]\nname = 'a'\ninput_usd_per_mtok = 1\noutput_usd_per_mtok = 1\np95_latency_ms = 5\n" * 2,
     r"duplicate model names in the pool: \['a'\]"),
    ("models = [", "not valid TOML"),
])
def test_bad_pool_files_are_refused_with_the_file_and_the_value(tmp_path, body, message):
    path = tmp_path / "pool.toml"
    path.write_text(body)
    with pytest.raises(PoolError, match=message) as error:
        load_pool(path)
    assert str(path) in str(error.value)


def test_pool_mismatch_names_every_difference():
    pool = Pool((PoolModel("a", 1, 1, 5), PoolModel("b", 1, 1, 5), PoolModel("extra", 1, 1, 5)))
    served = ServedPool(("b", "a", "missing"), ((1, 1), (1, 1), (1, 1)))
    with pytest.raises(PoolMismatchError, match=r"not in the pool file: \['missing'\].*not served by the predictor: "
                                                r"\['extra'\]"):
        match_pool(pool, served)


def test_a_pool_for_other_models_keeps_known_settings_and_reads_back(tmp_path):
    base = Pool((PoolModel("known", 9.0, 9.0, 1234.0, enabled=False),))
    names = ["known", 'odd "name" \\ é\x01\x7f🙂', "unpriced"]
    pool = pool_for_models(names, [[1.0, 2.0], [0.5, 0.25], [None, None]], base=base)
    path = tmp_path / "pool.toml"
    path.write_text(pool_toml(pool, "header line\nsecond \x01\udc80"), encoding="utf-8")
    loaded = load_pool(path)
    assert loaded == pool and loaded.names == names
    # Prices as trained; latency and `enabled` from the base pool where it has the model, else stand-ins.
    assert loaded.models[0] == PoolModel("known", 1.0, 2.0, 1234.0, enabled=False)
    assert loaded.models[2] == PoolModel("unpriced", 0.0, 0.0, STAND_IN_P95_LATENCY_MS)
    # A model without a trained price keeps the predictor's cost (scale 1), whatever the file's 0 says.
    served = ServedPool(tuple(names), ((1.0, 2.0), (0.5, 0.25), None))
    assert match_pool(loaded, served).cost_scale.tolist() == [1.0, 1.0, 1.0]
    with pytest.raises(PoolError, match="lone surrogate"):
        pool_toml(pool_for_models(["bad\udc80"], [[1.0, 1.0]]))


def test_pool_order_and_prices_are_mapped_onto_the_predictor_columns():
    pool = Pool((PoolModel("a", 2.0, 6.0, 5), PoolModel("b", 1.0, 1.0, 5), PoolModel("c", 1.0, 1.0, 5)))
    served = ServedPool(("c", "a", "b"), ((1.0, 1.0), (1.0, 3.0), None))
    columns = match_pool(pool, served)
    # a: pool blended 4.0 over trained 2.0; b: trained price unknown, kept; c: same price.
    assert columns.cost_scale.tolist() == [blended_usd_per_mtok(2, 6) / blended_usd_per_mtok(1, 3), 1.0, 1.0]
    quality = np.array([[0.3, 0.1, 0.2]])          # predictor order: c, a, b
    cost = np.array([[3.0, 1.0, 2.0]])
    q, c = columns.apply(quality, cost)
    assert q.tolist() == [[0.1, 0.2, 0.3]] and c.tolist() == [[2.0, 2.0, 3.0]]
