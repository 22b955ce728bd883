"""Routing quality measured on train alone: the tradeoff-frontier AUC of out-of-fold predictions, the
figure a recipe (window, width, ...) is chosen by without reading any test split.

Out-of-fold quality comes from training.train's ensemble (each train prompt scored by the member that never
saw it); decisions use each model's mean train cost, like the no-prompt router, so only the quality
prediction differs between candidates. The AUC is the same as `routoo eval`'s: area under the concave
frontier over cost normalised by the best single model's, divided out by no-prompt and oracle into gap
recovered.
"""

from __future__ import annotations

import numpy as np

from evals.config import EvalConfig
from evals.frontier import area_under_frontier, gap_recovered
from evals.references import best_single, single_models
from evals.routers import RouterPredictions, mean_cost, no_prompt_router, oracle_router
from evals.sweeps import eligible_cells as _eligible
from evals.sweeps import sweep, tradeoff_lambdas


def oof_frontier(oof_quality: np.ndarray, quality: np.ndarray, cost_usd: np.ndarray, names: list[str],
                 config: EvalConfig | None = None) -> dict:
    """{"auc", "no_prompt_auc", "oracle_auc", "gap_recovered"} of out-of-fold predictions on train."""
    config = config or EvalConfig()
    eligible = _eligible(quality, cost_usd)
    keep = eligible.any(axis=1)
    quality, cost_usd, eligible, oof_quality = quality[keep], cost_usd[keep], eligible[keep], oof_quality[keep]
    best = best_single(single_models(names, quality, cost_usd), config.min_reference_coverage)
    decide_cost = mean_cost(cost_usd, len(quality))
    routers = {"oof": RouterPredictions("oof", oof_quality.astype(np.float64), decide_cost),
               "no_prompt": no_prompt_router(quality, cost_usd, len(quality)),
               "oracle": oracle_router(quality, cost_usd)}
    aucs = {}
    for key, router in routers.items():
        lambdas = tradeoff_lambdas(router.quality, router.expected_cost_usd, eligible, config.lambdas // 2)
        fr = sweep(router, "tradeoff", lambdas, eligible, quality, cost_usd)
        aucs[key] = area_under_frontier(fr.cost_usd / best.cost_usd, fr.accuracy)
    return {"auc": aucs["oof"], "no_prompt_auc": aucs["no_prompt"], "oracle_auc": aucs["oracle"],
            "gap_recovered": gap_recovered(aucs["oof"], aucs["no_prompt"], aucs["oracle"])}
