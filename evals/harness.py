"""Routing evaluation: Routoo's accuracy/cost frontier against baselines, on any canonical dataset.

A router predicts, for every (prompt, model), a quality and an expected cost; one of the selector's
policies turns them into one model per prompt (evals/sweeps.py). Sweeping the policy's parameter gives
operating points: (realised total cost, realised accuracy) on the test data. This module runs the whole
evaluation on two datasets and an artifact; its parts, each with its definitions
(docs/evaluation.md has the recipe and the numbers):
- evals/routers.py: the routers compared (Routoo's head, kNN, TF-IDF, no-prompt, oracle);
- evals/sweeps.py: policy sweeps into operating points;
- evals/frontier.py: frontier hull, AUC, gap recovered, reach and accuracy-at-cost;
- evals/references.py: single models and the best single model costs are normalised by;
- evals/pool.py: one pool's frontiers, figures, bootstrap intervals and budget sweep;
- evals/report.py: the JSON, the text tables and the plot.
"""

from __future__ import annotations

import logging
from dataclasses import asdict

import numpy as np

from evals.config import EvalConfig
from evals.frontier import area_under_frontier
from evals.pool import evaluate_pool
from evals.references import best_single, closed_model, single_models
from evals.report import pool_json, run_meta
from evals.routers import (RouterPredictions, artifact_predictions, knn_quality, no_prompt_router,
                           oracle_router)
from evals.sweeps import eligible_cells, sweep, tradeoff_lambdas
from predictor_service.artifact import Artifact
from training import baselines
from training.data import RoutingDataset
from training.metrics import quality_metrics, rounded_metrics

log = logging.getLogger(__name__)


def choose_knn_k(train_x: np.ndarray, train_quality: np.ndarray, train_cost: np.ndarray,
                 decision_cost: np.ndarray, config: EvalConfig, names: list[str]) -> tuple[int, dict[int, float]]:
    """k with the best tradeoff-frontier AUC on a held-out part of train (the test split is never read)."""
    order = np.random.default_rng(config.seed).permutation(len(train_x))
    cut = max(1, int(len(order) * config.knn_holdout))
    held, fit = np.sort(order[:cut]), np.sort(order[cut:])
    q, c = train_quality[held], train_cost[held]
    eligible = eligible_cells(q, c)
    keep = eligible.any(axis=1)
    q, c, eligible = q[keep], c[keep], eligible[keep]
    held = held[keep]
    singles = single_models(names, q, c)
    best = best_single(singles, config.min_reference_coverage)
    scores = {}
    ks = [k for k in config.knn_ks if k <= len(fit)] or [len(fit)]
    for k in ks:
        pred = RouterPredictions(f"kNN-{k}", knn_quality(train_x[fit], train_quality[fit], train_x[held], k),
                                 decision_cost[held])
        lambdas = tradeoff_lambdas(pred.quality, pred.expected_cost_usd, eligible, config.lambdas // 2)
        fr = sweep(pred, "tradeoff", lambdas, eligible, q, c)
        scores[k] = area_under_frontier(fr.cost_usd / best.cost_usd, fr.accuracy)
    return max(scores, key=scores.get), scores


def evaluate(train_ds: RoutingDataset, test_ds: RoutingDataset, artifact: Artifact, *,
             pool: list[str] | None = None, config: EvalConfig | None = None,
             show_progress: bool = True) -> dict:
    """The full evaluation: every pool's frontiers, baselines, figures and the RouteBatch sweep, as JSON-able
    data. `pool` restricts the models (default: those both the artifact and the test data have)."""
    config = config or EvalConfig()
    art_names = artifact.manifest.model_names
    if pool is None:
        pool = [n for n in test_ds.model_names if n in art_names]
        missing = [n for n in test_ds.model_names if n not in art_names]
        if missing:
            log.warning("test models the artifact does not predict, left out: %s", missing)
    else:
        unknown = [n for n in pool if n not in art_names or n not in test_ds.model_names]
        if unknown:
            raise ValueError(f"--pool model(s) {unknown} are not in both the artifact and the test data; "
                             f"choose from {[n for n in art_names if n in test_ds.model_names]}")
    if not pool:
        raise ValueError(f"the artifact's models {art_names} and the test data's {test_ds.model_names} share none")
    missing_train = [n for n in pool if n not in train_ds.model_names]
    if missing_train:
        raise ValueError(f"pool model(s) {missing_train} have no train labels for the baselines; "
                         f"the train data has {train_ds.model_names}")
    test = test_ds.select_models(pool)
    train_sub = train_ds.select_models(pool)
    art_cols = [art_names.index(n) for n in pool]

    quality_pred, cost_pred, test_x = artifact_predictions(artifact, test.texts, show_progress=show_progress)
    encoder_name = artifact.manifest.encoder
    head = RouterPredictions(f"routoo ({encoder_name})", quality_pred[:, art_cols], cost_pred[:, art_cols])
    train_q_pred, train_cost_pred, train_x = artifact_predictions(artifact, train_sub.texts,
                                                                  show_progress=show_progress)
    del train_q_pred
    train_cost_pred = train_cost_pred[:, art_cols]

    no_prompt = no_prompt_router(train_sub.quality, train_sub.cost_usd, len(test))
    k, k_scores = choose_knn_k(train_x, train_sub.quality, train_sub.cost_usd, train_cost_pred, config, pool)
    knn = RouterPredictions(f"kNN-{k} ({encoder_name})", knn_quality(train_x, train_sub.quality, test_x, k),
                            head.expected_cost_usd, f"k from {k_scores} (held-out train frontier AUC)")
    routers = [head, no_prompt, knn]
    if config.tfidf:
        tfidf = baselines.tfidf_logistic(train_sub.texts, train_sub.quality, test.texts)
        routers.append(RouterPredictions("TF-IDF + LR", tfidf, head.expected_cost_usd))
    oracle = oracle_router(test.quality, test.cost_usd)
    quality_metrics_rows = {r.name: rounded_metrics(quality_metrics(test.quality, r.quality))
                            for r in routers if r is not no_prompt}
    quality_metrics_rows[no_prompt.name] = rounded_metrics(quality_metrics(test.quality, no_prompt.quality))

    pools = {"full": pool}
    open_pool = [n for n in pool if not closed_model(n, config.closed_model_prefixes)]
    if open_pool and len(open_pool) < len(pool):
        pools["open-weights"] = open_pool
    results = {}
    for label, names in pools.items():
        cols = np.array([pool.index(n) for n in names])
        results[label] = evaluate_pool(label, names, [r.columns(cols) for r in routers], oracle.columns(cols),
                                       test.quality[:, cols], test.cost_usd[:, cols], config,
                                       no_prompt=no_prompt.name, show_progress=show_progress)
    return {"meta": run_meta(artifact, train_ds, test_ds),
            "config": asdict(config),
            "knn": {"k": k, "holdout_auc_by_k": {str(kk): v for kk, v in k_scores.items()}},
            "quality_metrics": quality_metrics_rows,
            "routers": {r.name: r.note for r in [*routers, oracle]},
            "pools": {label: pool_json(res) for label, res in results.items()},
            "_results": results}
