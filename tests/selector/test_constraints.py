"""The selector's constraints: the chosen model satisfies every one (hypothesis, against a plain reference),
each exclusion has its reason, and a bad field or an empty eligible set is named."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from selector.constraints import (DENIED, DISABLED, ELIGIBLE, NOT_ALLOWED, TOO_EXPENSIVE, TOO_SLOW, Constraints,
                                  InvalidRequest, NoEligibleModel, require_eligible)
from selector.pool import Pool, PoolModel
from tests.support.strategies import constraints_for, policies, scored_pools


def satisfies(pool, constraints, j, cost):
    model = pool.models[j]
    return (model.enabled and (not constraints.allow or model.name in constraints.allow)
            and model.name not in constraints.deny
            and (constraints.max_latency_ms is None or model.p95_latency_ms <= constraints.max_latency_ms)
            and (constraints.max_cost_usd is None or cost[j] <= constraints.max_cost_usd))


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


def test_unknown_names_are_listed_once_each_and_at_most_eight():
    pool = Pool((PoolModel("a", 1, 1, 100),))
    with pytest.raises(InvalidRequest) as error:
        Constraints(deny=("zz", "a", "zz") + tuple(f"n{i}" for i in range(20))).validate(pool)
    assert str(error.value).startswith(
        "constraints.deny: unknown model(s) ['zz', 'n0', 'n1', 'n2', 'n3', 'n4', 'n5', 'n6', '... 13 more']")


def test_a_cost_cap_below_a_float32_cost_excludes_it():
    # Compared in float32, the cap would round up to the cost itself and let the model through.
    pool = Pool((PoolModel("a", 1, 1, 100), PoolModel("b", 1, 1, 100)))
    cost = np.array([1e-4, 1e-5], dtype=np.float32)
    cap = float(cost[0]) - 1e-15
    assert np.float32(cap) == cost[0]
    constraints = Constraints(max_cost_usd=cap)
    assert constraints.exclusions(pool, cost[None, :])[0].tolist() == [TOO_EXPENSIVE, ELIGIBLE]
    assert constraints.exclusions_one(pool, cost) == [TOO_EXPENSIVE, ELIGIBLE]


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
