"""Informed ceilings: how much of the no-prompt-to-oracle gap a router recovers when it is *told* what no
prompt-only predictor can know. They bound what better prompt features can buy on a dataset.

Routers, each a per-model logistic regression fitted on train, deciding with the artifact's predicted costs
(like kNN and TF-IDF in `routoo eval`, so only the quality information differs):
- told category: the prompt's category from the dataset (the topic signal, without error);
- told probes' mean: the share of the probe models that answered this very prompt right (its difficulty);
- told category + probes: both, with each probe's outcome as its own feature.

The probes are models taken *out* of the pool, whose outcomes on the test prompt are read as features.
They must leave the pool: a router told every pool model's outcome but the predicted model's own is biased
against the one model that is right (its right answer raises every other model's prediction, never its
own), and on mmlu-pro/dev routes worse than the no-prompt router while its AUROC is 0.87.
"""

from __future__ import annotations

import numpy as np

from evals.config import EvalConfig
from evals.pool import evaluate_pool
from evals.references import SingleModel, best_single, coverage_floor, single_models
from evals.report import pool_json, run_meta
from evals.routers import RouterPredictions, artifact_predictions, no_prompt_router, oracle_router
from evals.scorer_metric import scorer_aucs
from predictor_service.artifact import Artifact
from training import baselines
from training.data import RoutingDataset
from training.metrics import quality_metrics, rounded_metrics


def default_probes(singles: list[SingleModel], n: int, keep: set[str]) -> list[str]:
    """The n cheapest of the train pool's models, other than `keep`, labelled on every train prompt (where no
    paid model is, on coverage_floor's share): what a cascade would run first."""
    floor = coverage_floor(singles, 1.0)
    cheapest = sorted(singles, key=lambda m: m.cost_usd)     # stable: pool order among equal costs
    return [m.name for m in cheapest if m.coverage >= floor and m.name not in keep][:n]


def category_features(train: RoutingDataset, ds: RoutingDataset) -> np.ndarray:
    """One-hot of the train categories; a category train never saw is all zeros."""
    names = sorted({p.category for p in train.prompts})
    index = {c: i for i, c in enumerate(names)}
    out = np.zeros((len(ds), len(names)), dtype=np.float32)
    for row, p in enumerate(ds.prompts):
        if p.category in index:
            out[row, index[p.category]] = 1.0
    return out


def _outcomes(probe_quality: np.ndarray, train_rate: np.ndarray) -> np.ndarray:
    """Probe outcomes with unknown cells filled by that probe's train accuracy."""
    return np.where(np.isnan(probe_quality), train_rate, probe_quality).astype(np.float32)


def informed_ceilings(train_ds: RoutingDataset, test_ds: RoutingDataset, artifact: Artifact, *,
                      probes: list[str] | None = None, n_probes: int = 8, config: EvalConfig | None = None,
                      show_progress: bool = True) -> dict:
    """Frontiers of Routoo and the told routers on the test models minus the probes (JSON-able, with the
    same summary rows as `routoo eval`)."""
    config = config or EvalConfig()
    art_names = artifact.manifest.model_names
    shared = [n for n in test_ds.model_names if n in art_names and n in train_ds.model_names]
    if probes is None:
        # The reference models stay in the pool; the best one is guessed from train, never from test.
        train_shared = train_ds.select_models(shared)
        singles = single_models(shared, train_shared.quality, train_shared.cost_usd)
        best_guess = best_single(singles, config.min_reference_coverage).name
        probes = default_probes(singles, n_probes, {best_guess, config.ref_model or ""})
    if not probes:
        raise ValueError(f"no model can be a probe: the pool {shared} has none but the references")
    unknown = [p for p in probes if p not in test_ds.model_names or p not in train_ds.model_names]
    if unknown:
        raise ValueError(f"probe model(s) {unknown} need labels in both train and test; "
                         f"choose from {[n for n in test_ds.model_names if n in train_ds.model_names]}")
    pool = [n for n in shared if n not in probes]
    if len(pool) < 2:
        raise ValueError(f"the probes {probes} leave {pool} to route among; a pool needs two models")
    train, test = train_ds.select_models(pool), test_ds.select_models(pool)

    quality, cost, _ = artifact_predictions(artifact, test.texts, show_progress=show_progress)
    cols = [art_names.index(n) for n in pool]
    decision_cost = cost[:, cols]
    probe_train = train_ds.select_models(probes).quality
    train_rate = baselines.per_model_rate(probe_train)
    probe_train = _outcomes(probe_train, train_rate)
    probe_test = _outcomes(test_ds.select_models(probes).quality, train_rate)
    cat_train, cat_test = category_features(train, train), category_features(train, test)

    def told(name: str, x_train: np.ndarray, x_test: np.ndarray) -> RouterPredictions:
        return RouterPredictions(name, baselines.per_model_logistic(x_train, train.quality, x_test),
                                 decision_cost)

    no_prompt = no_prompt_router(train.quality, train.cost_usd, len(test))
    routers = [RouterPredictions(f"routoo ({artifact.manifest.encoder})", quality[:, cols], decision_cost),
               no_prompt,
               told("told category", cat_train, cat_test),
               told("told probes' mean", probe_train.mean(axis=1, keepdims=True),
                    probe_test.mean(axis=1, keepdims=True)),
               told("told category + probes", np.hstack([cat_train, probe_train]),
                    np.hstack([cat_test, probe_test]))]
    oracle = oracle_router(test.quality, test.cost_usd)
    result = evaluate_pool("without probes", pool, routers, oracle, test.quality, test.cost_usd, config,
                           no_prompt=no_prompt.name, show_progress=show_progress)
    # The same routers in the held-out scorer's metric (scorer_metric.py); the told category also on the
    # full pool, the table's, which needs no probe out of it.
    full_train, full_test = train_ds.select_models(shared), test_ds.select_models(shared)
    cat_full = baselines.per_model_logistic(category_features(full_train, full_train), full_train.quality,
                                            category_features(full_train, full_test))
    scorer = {"without probes": scorer_aucs({r.name: r.quality for r in routers if r is not no_prompt},
                                            train.quality, train.cost_usd, test.quality, test.cost_usd, pool, config),
              "full pool": scorer_aucs({routers[0].name: quality[:, [art_names.index(n) for n in shared]],
                                        "told category": cat_full}, full_train.quality, full_train.cost_usd,
                                       full_test.quality, full_test.cost_usd, shared, config)}
    return {"meta": run_meta(artifact, train_ds, test_ds), "probes": probes,
            "quality_metrics": {r.name: rounded_metrics(quality_metrics(test.quality, r.quality)) for r in routers},
            "pools": {"without probes": pool_json(result)}, "scorer_metric": scorer}
