"""The held-out scorer's metric (evals/scorer_metric.py): operating points, mean train cost."""

import numpy as np
import pytest

from evals.scorer_metric import scorer_aucs


def test_scorer_metric_ranks_an_informed_router_over_a_blind_one():
    rng = np.random.default_rng(0)
    n, names = 400, ["cheap", "mid", "dear"]
    quality = (rng.random((n, 3)) < [0.3, 0.5, 0.8]).astype(np.float64)
    cost = np.tile([1e-4, 1e-3, 1e-2], (n, 1))
    train_q = (rng.random((n, 3)) < [0.3, 0.5, 0.8]).astype(np.float64)
    informed = np.clip(quality * 0.6 + 0.2 + rng.normal(0, 0.1, quality.shape), 0, 1)
    blind = np.clip(train_q.mean(0) + rng.normal(0, 0.1, quality.shape), 0, 1)
    rows = scorer_aucs({"informed": informed, "blind": blind}, train_q, cost, quality, cost, names)
    assert rows["oracle"]["gap"] == pytest.approx(1.0) and rows["no-prompt"]["gap"] == pytest.approx(0.0)
    # With 3 models the oracle has 3 operating points only, so a router with many can pass it here.
    assert rows["informed"]["gap"] > 0.5 and rows["blind"]["gap"] < rows["informed"]["gap"] - 0.3
