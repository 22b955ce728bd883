"""Routing quality measured on train alone: the tradeoff-frontier AUC of out-of-fold predictions, the
figure a recipe (window, width, ...) is chosen by without reading any test split.

Out-of-fold quality comes from training.train's ensemble (each train prompt scored by the member that never
saw it); decisions use each model's mean train cost, like the no-prompt router, so only the quality
prediction differs between candidates. The AUC is the same as `routoo eval`'s: area under the concave
frontier over cost normalised by the best single model's, divided out by no-prompt and oracle into gap
recovered. oof_comparison scores several candidates on the same prompts with a paired bootstrap, so a
choice between them can demand more than the prompts' sampling noise.
"""

from __future__ import annotations

import numpy as np

from evals.config import EvalConfig
from evals.frontier import area_under_frontier, gap_recovered
from evals.pool import bootstrap_aucs
from evals.references import best_single, single_models
from evals.routers import RouterPredictions, mean_cost, no_prompt_router, oracle_router
from evals.sweeps import eligible_cells as _eligible, sweep, tradeoff_lambdas


def oof_comparison(oof_qualities: dict[str, np.ndarray], quality: np.ndarray, cost_usd: np.ndarray,
                   names: list[str], *, n_boot: int = 0, seed: int = 0, config: EvalConfig | None = None,
                   decide_cost: np.ndarray | None = None) -> dict:
    """{"auc": {name: AUC}, "gap_recovered": {name: gap}, "no_prompt_auc", "oracle_auc", "boot"} for each named
    (n, n_models) out-of-fold prediction on the train prompts; "boot" is (n_boot, len(oof_qualities)) AUCs on
    prompt resamples shared by every candidate (paired), or None without n_boot. decide_cost: the (n, n_models)
    costs the candidates decide with (e.g. an artifact's predicted ones; default each model's mean train cost);
    the same seed gives the same resamples, so comparisons under both stay paired."""
    config = config or EvalConfig()
    eligible = _eligible(quality, cost_usd)
    keep = eligible.any(axis=1)
    quality, cost_usd, eligible = quality[keep], cost_usd[keep], eligible[keep]
    singles = single_models(names, quality, cost_usd)
    best = best_single(singles, config.min_reference_coverage)
    decide_cost = mean_cost(cost_usd, len(quality)) if decide_cost is None else np.asarray(decide_cost)[keep]
    routers = [RouterPredictions(key, q[keep].astype(np.float64), decide_cost) for key, q in oof_qualities.items()]
    routers += [no_prompt_router(quality, cost_usd, len(quality)), oracle_router(quality, cost_usd)]
    frontiers, aucs = [], []
    for router in routers:
        lambdas = tradeoff_lambdas(router.quality, router.expected_cost_usd, eligible, config.lambdas // 2)
        fr = sweep(router, "tradeoff", lambdas, eligible, quality, cost_usd)
        frontiers.append(fr)
        aucs.append(area_under_frontier(fr.cost_usd / best.cost_usd, fr.accuracy))
    floor, ceiling = aucs[-2], aucs[-1]
    n = len(oof_qualities)
    boot = (bootstrap_aucs(frontiers[:n], quality, cost_usd, names.index(best.name), n_boot, seed)
            if n_boot else None)
    return {"auc": dict(zip(oof_qualities, aucs[:n])),
            "gap_recovered": {key: gap_recovered(a, floor, ceiling) for key, a in zip(oof_qualities, aucs)},
            "no_prompt_auc": floor, "oracle_auc": ceiling, "boot": boot}


def oof_frontier(oof_quality: np.ndarray, quality: np.ndarray, cost_usd: np.ndarray, names: list[str],
                 config: EvalConfig | None = None) -> dict:
    """{"auc", "no_prompt_auc", "oracle_auc", "gap_recovered"} of out-of-fold predictions on train."""
    res = oof_comparison({"oof": oof_quality}, quality, cost_usd, names, config=config)
    return {"auc": res["auc"]["oof"], "no_prompt_auc": res["no_prompt_auc"], "oracle_auc": res["oracle_auc"],
            "gap_recovered": res["gap_recovered"]["oof"]}


def paired_difference(boot_a: np.ndarray, boot_b: np.ndarray) -> tuple[list[float], float]:
    """(95% interval of a - b, share of resamples where a is ahead) over paired bootstrap AUCs, as every
    out-of-fold comparison reports them."""
    diff = np.asarray(boot_a) - np.asarray(boot_b)
    return [round(float(v), 5) for v in np.percentile(diff, [2.5, 97.5])], round(float(np.mean(diff > 0)), 3)
