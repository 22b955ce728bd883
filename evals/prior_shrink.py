"""Prior shrink: the served quality logit pulled toward each model's train accuracy by a share alpha,

    logit q'[m] = (1 - alpha) * logit q[m] + alpha * logit prior[m]        prior: per-model train mean

a James-Stein-like damping of the per-prompt differences between models, which routing decisions turn on.

Why. The head is calibrated for log loss (its temperature), not for the frontier, and it is sure of itself
on prompts unlike its train prompts. Measured on prompts it was not trained on (alpha 0 -> 0.5 -> 0.75,
frontier AUC of the tradeoff policy): mmlu-pro/dev 0.7958 -> 0.7995 -> 0.7985 with the committed head;
the suite's heldout-cats (4 categories never seen) 0.8322 -> 0.8437 -> 0.8502. Out of fold on train the
same knob is nearly flat (mmlu-pro/train 0.7667 -> 0.7680 -> 0.7673, heldout-cats/train 0.7444 -> 0.7443 ->
0.7444): in-distribution folds cannot see the shift that the shrink protects against, but they do bound
what it costs.

How it is chosen (train only). The one-standard-error rule (Hastie, Tibshirani & Friedman, ESL 7.10):
among the candidate alphas, the largest whose out-of-fold frontier AUC is within one paired-bootstrap
standard error of the best one's. Where CV cannot tell the candidates apart it keeps the most conservative;
where a shrink costs out of fold more than the noise, it is not taken. The rule was adopted after the
heldout-cats diagnosis above; the test side is never read to apply it.

How it is served. Exactly folded into the artifact's weights, so every path (compiled CPU loop, Triton
kernels, ONNX graphs) scores it unchanged: the head's quality rows and bias x (1 - alpha), plus
alpha * logit(prior) / inv_temperature on the bias (the temperature multiplies the bias), and the lexical
part's weights x (1 - alpha).
"""

from __future__ import annotations

import logging
from dataclasses import replace

import numpy as np

from predictor_service.artifact import Artifact
from predictor_service.lexical import LexicalPart
from training.baselines import per_model_rate
from training.data import RoutingDataset
from training.metrics import logit

log = logging.getLogger(__name__)

ALPHAS = (0.0, 0.25, 0.5, 0.75)   # 1.0 would be the no-prompt router: the prompt must still count
BOOTSTRAP = 200                   # paired resamples of the train prompts, as the head search's
MODES = ("auto", "off")


def shrunk(quality: np.ndarray, prior: np.ndarray, alpha: float) -> np.ndarray:
    """(n, n_models) quality pulled toward prior (n_models,) by alpha in logit space."""
    z = (1 - alpha) * logit(quality) + alpha * logit(prior)[None, :]
    return 1 / (1 + np.exp(-z))


def unshrunk(quality: np.ndarray, prior: np.ndarray, alpha: float) -> np.ndarray:
    """The inverse of shrunk: the predictor's quality before a shrink by alpha."""
    z = (logit(quality) - alpha * logit(prior)[None, :]) / (1 - alpha)
    return 1 / (1 + np.exp(-z))


def one_se_choice(aucs: np.ndarray, boot: np.ndarray, alphas: tuple[float, ...] = ALPHAS) -> tuple[int, list[float]]:
    """(index of the kept alpha, each candidate's paired standard error against the best): the largest alpha
    whose AUC is within one standard error of the best's. aucs (n_candidates,), boot (n_boot, n_candidates)."""
    if len(aucs) != len(alphas) or boot.shape[1] != len(alphas):
        raise ValueError(f"need one AUC and one bootstrap column per alpha ({len(alphas)}), got "
                         f"{len(aucs)} and {boot.shape[1]}")
    best = int(np.argmax(aucs))
    se = [float(np.std(boot[:, i] - boot[:, best])) for i in range(len(alphas))]
    within = [i for i in range(len(alphas)) if aucs[i] >= aucs[best] - se[i]]
    return max(within, key=lambda i: alphas[i]), se


def choose_prior_shrink(served_oof: np.ndarray, train_ds: RoutingDataset, *, mode: str = "auto",
                        alphas: tuple[float, ...] = ALPHAS, seed: int = 0,
                        predicted_cost: np.ndarray | None = None) -> dict:
    """The decision record: every candidate's out-of-fold frontier AUC and its standard error, the rule, the
    kept alpha (0.0 with mode "off") and the prior it shrinks toward. With predicted_cost (the artifact's
    costs for the train prompts) each candidate is judged by the mean of two AUCs: deciding with each model's
    mean train cost (the held-out scorer's way) and with the predicted costs (the selector's way); on
    mmlu-pro/dev a shrink of 0.5 raised the first and lowered the second (0.7982 -> 0.8007, 0.8014 -> 0.7958)."""
    from evals.oof import oof_comparison

    if mode not in MODES:
        raise ValueError(f"prior shrink mode must be one of {MODES}, got {mode!r}")
    prior = per_model_rate(train_ds.quality)
    if mode == "off":
        return {"mode": "off", "alpha": 0.0}
    preds = {f"{a:g}": shrunk(served_oof, prior, a) for a in alphas}
    runs = {"mean train cost": oof_comparison(preds, train_ds.quality, train_ds.cost_usd, train_ds.model_names,
                                              n_boot=BOOTSTRAP, seed=seed)}
    if predicted_cost is not None:
        runs["predicted cost"] = oof_comparison(preds, train_ds.quality, train_ds.cost_usd, train_ds.model_names,
                                                n_boot=BOOTSTRAP, seed=seed, decide_cost=predicted_cost)
    aucs = np.mean([[res["auc"][name] for name in preds] for res in runs.values()], axis=0)
    kept, se = one_se_choice(aucs, np.mean([res["boot"] for res in runs.values()], axis=0), alphas)
    candidates = {name: {"oof_frontier_auc": round(float(aucs[i]), 5), "se_vs_best": round(se[i], 5),
                         **{f"deciding with {how}": round(float(res["auc"][name]), 5) for how, res in runs.items()}}
                  for i, name in enumerate(preds)}
    return {"mode": mode, "by": "out-of-fold train frontier AUC of the served predictor (mean over deciding with "
            f"{' and with '.join(runs)}), one-standard-error rule (largest alpha within one paired-bootstrap SE "
            f"of the best, {BOOTSTRAP} resamples)",
            "candidates": candidates, "best": f"{alphas[int(np.argmax(aucs))]:g}", "alpha": float(alphas[kept]),
            "prior": [round(float(p), 6) for p in prior]}


def apply_prior_shrink(artifact: Artifact, alpha: float, prior: np.ndarray) -> None:
    """Folds the shrink into the artifact's head (and lexical part) in place; alpha 0 changes nothing."""
    import torch

    if not 0.0 <= alpha < 1.0:
        raise ValueError(f"prior shrink alpha must be in [0, 1), got {alpha}")
    if alpha == 0.0:
        return
    w, inv_t = artifact.weights, float(artifact.manifest.inv_temperature)
    added = torch.as_tensor(alpha * logit(prior) / inv_t, dtype=torch.float32)
    artifact.weights = replace(w, quality_emb=w.quality_emb * (1 - alpha),
                               quality_bias=w.quality_bias * (1 - alpha) + added)
    part = artifact.lexical
    if part is not None:
        artifact.lexical = LexicalPart(part.weights * (1 - alpha), part.vocab, part.bigram_bits,
                                       part.storage).rounded()


def attach_prior_shrink(artifact: Artifact, result: dict, train_ds: RoutingDataset,
                        dev_ds: RoutingDataset | None, *, mode: str = "auto") -> dict:
    """choose_prior_shrink on the served out-of-fold predictions (result["served_oof_quality"], else the
    head's), folded into the artifact and recorded in manifest.training["prior_shrink"]; with dev_ds the
    manifest's dev metrics and result["head"] become the shrunk predictor's."""
    from evals.routers import artifact_predictions, rescore_dev

    served = result.get("served_oof_quality")
    served = result["oof_quality"] if served is None else served
    seed = int(artifact.manifest.training.get("config", {}).get("seed", 0))
    # The artifact's own cost rows on its train prompts (in sample: the ridge rows barely overfit 7k prompts).
    predicted_cost = artifact_predictions(artifact, train_ds.texts)[1] if mode != "off" else None
    record = choose_prior_shrink(served, train_ds, mode=mode, seed=seed, predicted_cost=predicted_cost)
    alpha = record["alpha"]
    if alpha > 0:
        prior = np.array(record["prior"])
        apply_prior_shrink(artifact, alpha, prior)
        result["served_oof_quality"] = shrunk(served, prior, alpha)
        if dev_ds is not None:
            rescore_dev(artifact, result, dev_ds.select_models(train_ds.model_names), before="head_before_prior_shrink")
    artifact.manifest.training["prior_shrink"] = record
    result["prior_shrink"] = record
    log.info("prior shrink: alpha %g", alpha)
    return record


def describe(record: dict) -> list[str]:
    """Lines for `routoo train`'s stdout."""
    if record.get("mode") == "off":
        return ["prior shrink: off"]
    lines = [f"prior shrink: alpha {record['alpha']:g} (best out of fold {record['best']}), chosen by {record['by']}"]
    for name, row in record["candidates"].items():
        each = ", ".join(f"{k} {v:.4f}" for k, v in row.items() if k.startswith("deciding with"))
        lines.append(f"  alpha {name:>4}: out-of-fold frontier AUC {row['oof_frontier_auc']:.4f} "
                     f"(SE vs best {row['se_vs_best']:.4f}; {each})")
    return lines
