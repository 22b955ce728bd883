"""Hypothesis strategies the selector's pure tests share: random pools with one prompt's scores, constraints
over a pool, and the three policies. Costs are drawn at the scale of the real data (1e-5..1e-2 USD)."""

import numpy as np
from hypothesis import strategies as st

from selector.constraints import Constraints
from selector.policies import CostCapPolicy, QualityTargetPolicy, TradeoffPolicy
from selector.pool import Pool, PoolModel

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
