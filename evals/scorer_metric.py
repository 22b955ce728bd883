"""The held-out scorer's metric (issue 14): operating-points-only frontier AUC, each model priced at its mean
train cost, so that figures here read like the issue's table of the four sets kept aside.

For lambda over 0 and a geometric grid, each prompt goes to argmax_m(quality[m] - lambda * mean train cost
of m) among its labelled models (the selector's tradeoff policy); the realised accuracy and cost at each
lambda are one operating point. AUC = area under the running maximum of accuracy over cost in [0, the most
accurate single model's cost], cost normalised by that cost (evaluation.area_under_points); gap =
(AUC - no-prompt) / (oracle - no-prompt). Every router decides with the same prices, the no-prompt router
(each model's train accuracy) and the oracle (the test labels) included, so only the quality differs.
`routoo eval` instead decides with the artifact's predicted costs and reports the hull AUC beside this.
"""

from __future__ import annotations

import numpy as np

from training import baselines
from evals.config import EvalConfig
from evals.frontier import area_under_points, gap_recovered
from evals.references import best_single, single_models
from evals.routers import RouterPredictions, mean_cost
from evals.sweeps import eligible_cells as _eligible, sweep, tradeoff_breakpoints

GRID_POINTS = 400      # geometric lambdas between the router's first and last decision change, plus 0


def geometric_lambdas(quality: np.ndarray, price: np.ndarray, eligible: np.ndarray,
                      n: int = GRID_POINTS) -> np.ndarray:
    """0 and n lambdas spaced geometrically from half the smallest positive breakpoint to twice the largest
    (past it every prompt gets its cheapest model)."""
    breaks = tradeoff_breakpoints(quality, price, eligible)
    breaks = breaks[breaks > 0]
    if breaks.size == 0:
        return np.array([0.0])
    return np.concatenate([[0.0], np.geomspace(breaks.min() / 2, breaks.max() * 2, n)])


def scorer_aucs(routers: dict[str, np.ndarray], train_quality: np.ndarray, train_cost: np.ndarray,
                quality: np.ndarray, cost_usd: np.ndarray, names: list[str],
                config: EvalConfig | None = None) -> dict[str, dict]:
    """{router: {"auc", "gap"}} for each (n_test, n_models) quality prediction, plus "no-prompt" and
    "oracle"; train_* give the prices (mean train cost) and the no-prompt router, test columns in `names`."""
    config = config or EvalConfig()
    eligible = _eligible(quality, cost_usd)
    keep = eligible.any(axis=1)
    quality, cost_usd, eligible = quality[keep], cost_usd[keep], eligible[keep]
    price = mean_cost(train_cost, len(quality))                            # (n, n_models)
    best = best_single(single_models(names, quality, cost_usd), config.min_reference_coverage)
    preds = {name: np.asarray(q, np.float64)[keep] for name, q in routers.items()}
    preds["no-prompt"] = baselines.per_model_mean(train_quality, len(quality)).astype(np.float64)
    preds["oracle"] = np.nan_to_num(quality, nan=0.0)
    aucs = {}
    for name, q in preds.items():
        router = RouterPredictions(name, q, price)
        fr = sweep(router, "tradeoff", geometric_lambdas(q, price, eligible), eligible, quality, cost_usd)
        aucs[name] = area_under_points(fr.cost_usd / best.cost_usd, fr.accuracy)
    return {name: {"auc": round(a, 5), "gap": round(gap_recovered(a, aucs["no-prompt"], aucs["oracle"]), 4)}
            for name, a in aucs.items()}


def format_scorer_table(title: str, rows: dict[str, dict]) -> str:
    lines = [f"\n{title} (operating points only, mean train cost as price)", f"{'router':<40}{'AUC':>8}{'gap':>8}"]
    lines += [f"{name[:39]:<40}{r['auc']:>8.4f}{r['gap']:>8.3f}" for name, r in rows.items()]
    return "\n".join(lines)
