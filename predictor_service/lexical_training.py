"""Training of the lexical part (predictor_service/lexical.py), stacked on a trained head, and the
train-only cross-validation that decides whether an artifact keeps it (`routoo train --lexical auto`).

1. Features: each train prompt's token ids (the artifact's encoder window) and hashed bigrams
   (kernels/lexical_logits.lexical_features). A feature seen in fewer than `min_prompts` fitting prompts
   keeps a zero row (it still counts in the prompt's mean, as at serving): rare n-grams cannot memorise.
2. Offsets: the head's out-of-fold quality logits (training.train's result["oof_quality"], temperature
   included), fixed. Stacking on out-of-fold logits fits the residual the head leaves on prompts it did not
   see, which is what it leaves at serving; in-sample logits would leave almost none.
3. Fit: W (n_features, n_models) minimises the masked BCE of sigmoid(offset + mean_f W[f]) on hard labels,
   summed over known labels / n_prompts, + l2 * |W|^2. Convex: full-batch L-BFGS from zero, deterministic.
4. Choice: for each l2 of `l2_grid`, the head's folds again: W fitted on the other folds, the held-out
   fold scored as offset + its lexical logits; out-of-fold frontier AUC (oof_routing) against the head's
   own. The best l2 is kept only if it beats the head by `margin` ("auto"); "on" keeps it regardless and
   "off" never trains it. The final W is fitted on every train prompt with that l2, rounded to its storage.
   (The held-out fold's labels reached the other folds' offsets through the heads that scored them; the
   figures compare with and without the lexical part on the same offsets, so both see that alike.)
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

from kernels.lexical_logits import lexical_features, lexical_logits_reference
from predictor_service.artifact import Artifact
from predictor_service.data import RoutingDataset
from predictor_service.lexical import LexicalPart
from predictor_service.metrics import quality_metrics
from predictor_service.oof_routing import oof_frontier
from predictor_service.training import _torch_threads, fold_assignment

log = logging.getLogger(__name__)

MODES = ("auto", "on", "off")
_LOGIT_CLIP = 1e-6


@dataclass(frozen=True)
class LexicalConfig:
    # 2^16 bigram buckets after the 30,522 token ids: mmlu-pro train has ~0.5M distinct bigrams, ~40k of them
    # in >= 3 prompts, so collisions among the fitted ones are rare and the part stays ~1-2 MB in int8.
    bigram_bits: int = 16
    # A feature needs this many fitting prompts to get a row (below: zero, fixed).
    min_prompts: int = 3
    # L2 strengths tried by the cross-validation. A feature's data gradient is ~ (prompts holding it / n)
    # x (1 / features a prompt), ~1e-5 for a common one on mmlu-pro, so these span "a few logits" to "almost
    # nothing" for weights.
    l2_grid: tuple[float, ...] = (1e-7, 1e-6, 1e-5)
    # Out-of-fold frontier AUC the lexical part must gain to be kept (auto). Paired (same head, same folds),
    # so below the 0.002 seed-to-seed noise of two heads (docs/evaluation.md).
    margin: float = 0.001
    max_iter: int = 60              # L-BFGS iterations per fit
    storage: str = "int8"           # lexical.LEXICAL_STORAGES
    threads: int = 1                # torch threads, as training's (2 busy cores)


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=np.float64), _LOGIT_CLIP, 1 - _LOGIT_CLIP)
    return np.log(p / (1 - p)).astype(np.float32)


def _prompt_slices(feature_ids: np.ndarray, feature_offsets: np.ndarray, rows: np.ndarray):
    """(ids, offsets) of the prompts `rows`, in that order."""
    lengths = np.diff(feature_offsets)[rows]
    starts = feature_offsets[:-1][rows]
    offsets = np.zeros(len(rows) + 1, np.int64)
    np.cumsum(lengths, out=offsets[1:])
    index = np.repeat(starts - offsets[:-1], lengths) + np.arange(int(offsets[-1]))
    return feature_ids[index], offsets


def fit_lexical(feature_ids: np.ndarray, feature_offsets: np.ndarray, offset_logits: np.ndarray,
                quality: np.ndarray, n_features: int, l2: float, config: LexicalConfig) -> torch.Tensor:
    """(n_features, n_models) fp32 weights fitted on every prompt given (step 3 of the module docstring)."""
    n, m = quality.shape
    lengths = np.diff(feature_offsets)
    prompt = np.repeat(np.arange(n), lengths)
    # Prompts holding each feature (each prompt counted once).
    counts = np.bincount(np.unique(prompt * n_features + feature_ids) % n_features, minlength=n_features)
    kept = np.flatnonzero(counts >= config.min_prompts)
    compact = np.full(n_features, len(kept), np.int64)        # unfitted features -> the zero row
    compact[kept] = np.arange(len(kept))
    ids = torch.from_numpy(compact[feature_ids])
    offsets = torch.from_numpy(feature_offsets[:-1].copy())
    per_feature = torch.from_numpy((1.0 / np.maximum(lengths, 1))[prompt].astype(np.float32))
    known = torch.from_numpy(~np.isnan(quality)).float()
    y = torch.from_numpy(np.nan_to_num(quality, nan=0.0)).float()
    base = torch.from_numpy(offset_logits).float()
    w = torch.zeros(len(kept), m, requires_grad=True)
    zero_row = torch.zeros(1, m)
    optimizer = torch.optim.LBFGS([w], max_iter=config.max_iter, line_search_fn="strong_wolfe",
                                  tolerance_grad=1e-9, tolerance_change=1e-12, history_size=10)

    def closure():
        optimizer.zero_grad()
        lex = F.embedding_bag(ids, torch.cat([w, zero_row]), offsets, mode="sum",
                              per_sample_weights=per_feature)                  # (n, m)
        bce = F.binary_cross_entropy_with_logits(base + lex, y, reduction="none")
        loss = (bce * known).sum() / n + l2 * (w * w).sum()
        loss.backward()
        return loss

    with _torch_threads(config.threads):
        optimizer.step(closure)
    weights = torch.zeros(n_features, m)
    weights[torch.from_numpy(kept)] = w.detach()
    return weights


def _frontier_row(quality_pred: np.ndarray, train_ds: RoutingDataset) -> dict:
    oof = oof_frontier(quality_pred, train_ds.quality, train_ds.cost_usd, train_ds.model_names)
    metrics = quality_metrics(train_ds.quality, quality_pred)
    return {"oof_frontier_auc": round(oof["auc"], 5), "oof_gap_recovered": round(oof["gap_recovered"], 4),
            "oof_auroc": round(metrics["auroc_mean"], 5), "oof_log_loss": round(metrics["log_loss"], 5)}


def choose_lexical(artifact: Artifact, result: dict, train_ds: RoutingDataset, *, mode: str = "auto",
                   config: LexicalConfig | None = None) -> tuple[LexicalPart | None, dict]:
    """(the lexical part to keep or None, the decision record with every candidate's out-of-fold figures)."""
    config = config or LexicalConfig()
    if mode not in MODES:
        raise ValueError(f"lexical mode must be one of {MODES}, got {mode!r}")
    if mode == "off":
        return None, {"mode": "off", "kept": False}
    if artifact.manifest.encoder != "static":
        raise ValueError(f"the lexical part reads the static encoder's token ids; this artifact's encoder is "
                         f"{artifact.manifest.encoder!r} (train with --lexical off)")
    started = time.perf_counter()
    encoder = artifact.load_encoder()
    vocab = int(encoder.table.shape[0])
    n_features = vocab + (1 << config.bigram_bits)
    tokens = encoder.tokenize(train_ds.texts)
    feature_ids, feature_offsets = lexical_features(tokens.token_ids.numpy(), tokens.offsets.numpy(), vocab,
                                                    config.bigram_bits)
    oof_quality = np.asarray(result["oof_quality"], dtype=np.float64)
    offset = _logit(oof_quality)                                            # (n, n_models)
    quality = train_ds.quality
    training = artifact.manifest.training
    fold = fold_assignment(len(train_ds), int(training.get("folds", 4)), int(training.get("config", {}).get("seed", 0)))
    candidates = {"head only": _frontier_row(oof_quality, train_ds)}
    for l2 in config.l2_grid:
        oof_logits = np.zeros_like(offset)
        for k in range(int(fold.max()) + 1):
            fit_rows, held = np.flatnonzero(fold != k), np.flatnonzero(fold == k)
            ids, offs = _prompt_slices(feature_ids, feature_offsets, fit_rows)
            weights = fit_lexical(ids, offs, offset[fit_rows], quality[fit_rows], n_features, l2, config)
            ids, offs = _prompt_slices(feature_ids, feature_offsets, held)
            oof_logits[held] = offset[held] + lexical_logits_reference(
                torch.from_numpy(ids), torch.from_numpy(offs), weights).numpy()
        candidates[f"l2={l2:g}"] = _frontier_row(1 / (1 + np.exp(-oof_logits.astype(np.float64))), train_ds)
        log.info("lexical l2=%g: out-of-fold frontier AUC %.4f", l2, candidates[f"l2={l2:g}"]["oof_frontier_auc"])
    head_auc = candidates["head only"]["oof_frontier_auc"]
    best = max((name for name in candidates if name != "head only"),
               key=lambda name: candidates[name]["oof_frontier_auc"])
    keep = mode == "on" or candidates[best]["oof_frontier_auc"] >= head_auc + config.margin
    record = {"mode": mode, "by": "out-of-fold train frontier AUC (tradeoff policy, mean train costs), the "
              "head's folds, stacked on its out-of-fold logits", "margin": config.margin,
              "candidates": candidates, "best": best, "kept": bool(keep), "config": asdict(config)}
    part = None
    if keep:
        l2 = float(best.removeprefix("l2="))
        weights = fit_lexical(feature_ids, feature_offsets, offset, quality, n_features, l2, config)
        part = LexicalPart(weights, vocab, config.bigram_bits, config.storage).rounded()
        record.update(l2=l2, fitted_rows=int((part.weights != 0).any(dim=1).sum()))
    record["seconds"] = round(time.perf_counter() - started, 1)
    return part, record


def attach_lexical(artifact: Artifact, result: dict, train_ds: RoutingDataset, dev_ds: RoutingDataset | None,
                   *, mode: str = "auto", config: LexicalConfig | None = None) -> dict:
    """choose_lexical, then the artifact keeps the part (artifact.lexical) and records the decision in
    manifest.training["lexical_choice"]; with dev_ds, result["head"] and the manifest's dev metrics become the
    served predictor's (head + lexical part), the head's alone kept beside them."""
    part, record = choose_lexical(artifact, result, train_ds, mode=mode, config=config)
    artifact.lexical = part
    artifact.manifest.lexical = {}
    artifact.manifest.training["lexical_choice"] = record
    result["lexical_choice"] = record
    if part is not None and dev_ds is not None and result.get("x_dev") is not None:
        from predictor_service.evaluation import artifact_predictions

        dev_ds = dev_ds.select_models(train_ds.model_names)
        quality_dev, _, _ = artifact_predictions(artifact, dev_ds.texts)
        metrics = quality_metrics(dev_ds.quality, quality_dev)
        dev_metrics = artifact.manifest.dev_metrics
        dev_metrics["head_without_lexical"] = dev_metrics.get("head")
        dev_metrics["head"] = {k: round(v, 5) for k, v in metrics.items() if isinstance(v, float)}
        result["head_without_lexical"], result["head"] = result["head"], metrics
    return record


def describe(record: dict) -> list[str]:
    """The decision as stdout lines for `routoo train`."""
    if record["mode"] == "off":
        return ["lexical part: off (--lexical off)"]
    lines = [f"lexical part: {'kept' if record['kept'] else 'not kept'} ({record['mode']}; best {record['best']}, "
             f"margin {record['margin']}), chosen by {record['by']}; {record['seconds']} s"]
    for name, row in record["candidates"].items():
        lines.append(f"  {name:>10}: out-of-fold frontier AUC {row['oof_frontier_auc']:.4f}, gap recovered "
                     f"{row['oof_gap_recovered']:.3f}, AUROC {row['oof_auroc']:.4f}, log loss {row['oof_log_loss']:.4f}")
    return lines


__all__ = ["LexicalConfig", "attach_lexical", "choose_lexical", "describe", "fit_lexical"]
