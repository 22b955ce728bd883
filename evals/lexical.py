"""Training of the lexical part (predictor_service/lexical.py), fitted after a trained head, and the
train-only cross-validation that decides whether an artifact keeps it (`routoo train --lexical auto`).

1. Features: each train prompt's token ids (the artifact's encoder window) and hashed bigrams
   (kernels/lexical_logits.lexical_features). A feature seen in fewer than `min_prompts` fitting prompts
   keeps a zero row (it still counts in the prompt's mean, as at serving): rare n-grams cannot memorise.
2. Offsets: the head's out-of-fold quality logits (training.train's result["oof_quality"], temperature
   included), fixed. Stacking on out-of-fold logits fits the residual the head leaves on prompts it did not
   see, which is what it leaves at serving; in-sample logits would leave almost none.
3. Fit: W (n_features, n_models) minimises the masked BCE of sigmoid(offset + mean_f W[f]) on the head's
   category-smoothed targets, summed over known labels / n_prompts, + l2 * |W|^2. Convex: full-batch
   L-BFGS (scipy) from zero on a sparse prompt x feature matrix, deterministic.
4. Blended candidates (`blend_l2_grid`): W fitted as a lexical model of its own (offset: each model's mean
   target as a logit), then averaged with the head, blend_head_share x head + the rest x lexical: the form
   in which TF-IDF + LR gained (docs/evaluation.md, "Second round"); folded exactly into the kernel's form.
5. Choice: for each candidate, the head's folds again: W fitted on the other folds, the held-out fold
   scored as the head's out-of-fold logits combined with its lexical logits; out-of-fold frontier AUC
   (evals/oof.py) against the head's own. The best candidate is kept only if it beats the head by `margin`
   ("auto"); "on" keeps it regardless and "off" never trains it. The final W is fitted on every train prompt
   with its l2, a temperature refitted on its out-of-fold logits, and rounded to its storage.
   (The held-out fold's labels reached the other folds' offsets through the heads that scored them; the
   figures compare with and without the lexical part on the same offsets, so both see that alike.)
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, replace

import numpy as np
import torch

from kernels.lexical_logits import lexical_features, lexical_logits_reference
from predictor_service.artifact import Artifact
from training.data import RoutingDataset
from predictor_service.head import HeadWeights
from predictor_service.lexical import LexicalPart
from training.metrics import log_loss, logit, quality_metrics
from evals.oof import oof_frontier
from training.fit import category_smoothed_targets, fit_temperature
from training.folds import train_folds

log = logging.getLogger(__name__)

MODES = ("auto", "on", "off")


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
    # Stacked candidates (the head's logits as a fixed offset). None by default: on mmlu-pro train (5-fold
    # head, 4 lexical folds) l2 1e-5 / 1e-4 / 1e-3 gave out-of-fold frontier AUC 0.7664 / 0.7657 / 0.7664
    # against the head's 0.7667 (hard labels 0.7651..0.7661, l2 1e-7 0.7272): it lowers log loss, not the
    # frontier. `LexicalConfig(l2_grid=(1e-5,))` adds one.
    l2_grid: tuple[float, ...] = ()
    # Blended candidates: a lexical model of its own (per-model bias + W, no head offset) averaged with the head,
    # quality logit = blend_head_share x head + (1 - share) x lexical, the form in which TF-IDF + LR logits
    # averaged with five heads gained +0.002..0.004 (docs/evaluation.md, "Second round"). Served exactly:
    # the share folds into the head's quality rows, the bias into its quality bias (scaled_head). mmlu-pro
    # train, out-of-fold frontier AUC for l2 1e-7 / 3e-7 / 1e-6 / 1e-5 / 1e-4: 0.7675 / 0.7704 / 0.7708 /
    # 0.7682 / 0.7677 (head 0.7667).
    blend_l2_grid: tuple[float, ...] = (3e-7, 1e-6, 3e-6)
    blend_head_share: float = 0.5
    # Out-of-fold frontier AUC the lexical part must gain to be kept (auto). Paired (same head, same folds),
    # so below the 0.002 seed-to-seed noise of two heads (docs/evaluation.md).
    margin: float = 0.001
    max_iter: int = 60              # L-BFGS iterations per fit
    # Targets as the head's (training.category_smoothed_targets): (1 - a) * label + a * the model's rate in
    # the prompt's category; 0 fits hard labels.
    category_smoothing: float = 0.5
    category_prior_prompts: float = 20.0
    storage: str = "int8"           # lexical.LEXICAL_STORAGES


def _prompt_slices(feature_ids: np.ndarray, feature_offsets: np.ndarray, rows: np.ndarray):
    """(ids, offsets) of the prompts `rows`, in that order."""
    lengths = np.diff(feature_offsets)[rows]
    starts = feature_offsets[:-1][rows]
    offsets = np.zeros(len(rows) + 1, np.int64)
    np.cumsum(lengths, out=offsets[1:])
    index = np.repeat(starts - offsets[:-1], lengths) + np.arange(int(offsets[-1]))
    return feature_ids[index], offsets


def fit_lexical(feature_ids: np.ndarray, feature_offsets: np.ndarray, offset_logits: np.ndarray,
                target: np.ndarray, n_features: int, l2: float, config: LexicalConfig) -> torch.Tensor:
    """(n_features, n_models) fp32 weights fitted on every prompt given (step 3 of the module docstring);
    target (n, n_models) in [0, 1], NaN where unknown."""
    from scipy.optimize import minimize
    from scipy.sparse import csr_matrix

    n, m = target.shape
    lengths = np.diff(feature_offsets)
    prompt = np.repeat(np.arange(n), lengths)
    # Prompts holding each feature (each prompt counted once).
    counts = np.bincount(np.unique(prompt * n_features + feature_ids) % n_features, minlength=n_features)
    kept = np.flatnonzero(counts >= config.min_prompts)
    compact = np.full(n_features, -1, np.int64)
    compact[kept] = np.arange(len(kept))
    cols = compact[feature_ids]
    fitted = cols >= 0          # unfitted features add nothing, but still count in their prompt's mean
    # x[i, f] = (times f occurs in prompt i) / (features of prompt i): the mean as a sparse product (duplicates
    # summed), ~7x faster than embedding_bag's backward on 2 cores.
    # fp32 products (2.4x faster than fp64 here), fp64 for the loss and L-BFGS's own arithmetic.
    x = csr_matrix(((1.0 / np.maximum(lengths, 1))[prompt][fitted], (prompt[fitted], cols[fitted])),
                   shape=(n, len(kept)), dtype=np.float32)
    xt = x.T.tocsr()
    known = ~np.isnan(target)
    y = np.where(known, target, 0.0)
    base = offset_logits.astype(np.float64)

    def loss_and_grad(flat):
        w = flat.reshape(len(kept), m)
        z = base + x @ w.astype(np.float32)                                 # (n, m) fp64
        # BCE with logits, stable: log(1 + e^z) - y z
        bce = np.logaddexp(0.0, z) - y * z
        g = np.where(known, 1.0 / (1.0 + np.exp(-z)) - y, 0.0) / n
        return (float(bce[known].sum() / n + l2 * (flat @ flat)),
                (xt @ g.astype(np.float32)).ravel() + 2.0 * l2 * flat)

    solution = minimize(loss_and_grad, np.zeros(len(kept) * m), jac=True, method="L-BFGS-B",
                        options={"maxiter": config.max_iter})
    weights = torch.zeros(n_features, m)
    weights[torch.from_numpy(kept)] = torch.from_numpy(solution.x.reshape(len(kept), m)).float()
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
    if artifact.manifest.encoder != "static" and mode == "auto":   # the default must not fail a minilm run
        return None, {"mode": "auto", "kept": False,
                      "not_applicable": f"the part reads the static encoder's token ids; encoder is "
                                        f"{artifact.manifest.encoder!r}"}
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
    offset = logit(oof_quality).astype(np.float32)                          # (n, n_models)
    quality = train_ds.quality
    categories = [p.category for p in train_ds.prompts]
    training = artifact.manifest.training

    def targets(rows):
        return category_smoothed_targets(quality[rows], [categories[i] for i in rows], config.category_smoothing,
                                         config.category_prior_prompts)

    fold = train_folds(train_ds, training)
    kinds = [("stacked", l2) for l2 in config.l2_grid] + [("blend", l2) for l2 in config.blend_l2_grid]
    share = config.blend_head_share

    def fit(kind, l2, rows):
        """(weights, the lexical model's own per-model logit bias: 0 when stacked)."""
        target = targets(rows)
        if kind == "stacked":
            return fit_lexical(*_prompt_slices(feature_ids, feature_offsets, rows), offset[rows], target,
                               n_features, l2, config), np.zeros(target.shape[1], np.float32)
        bias = logit(np.nan_to_num(np.nanmean(target, axis=0), nan=0.5)).astype(np.float32)   # (n_models,)
        return fit_lexical(*_prompt_slices(feature_ids, feature_offsets, rows),
                           np.broadcast_to(bias, target.shape), target, n_features, l2, config), bias

    def combine(kind, head_logits, lexical_logits, bias):
        if kind == "stacked":
            return head_logits + lexical_logits
        return share * head_logits + (1 - share) * (bias + lexical_logits)

    candidates, oof_by_name = {"head only": _frontier_row(oof_quality, train_ds)}, {}
    for kind, l2 in kinds:
        oof_logits = np.zeros_like(offset)
        for k in range(int(fold.max()) + 1):
            fit_rows, held = np.flatnonzero(fold != k), np.flatnonzero(fold == k)
            weights, bias = fit(kind, l2, fit_rows)
            ids, offs = _prompt_slices(feature_ids, feature_offsets, held)
            lex = lexical_logits_reference(torch.from_numpy(ids), torch.from_numpy(offs), weights).numpy()
            oof_logits[held] = combine(kind, offset[held], lex, bias)
        name = f"{kind} l2={l2:g}"
        oof_by_name[name] = oof_logits
        candidates[name] = _frontier_row(1 / (1 + np.exp(-oof_logits.astype(np.float64))), train_ds)
        log.info("lexical %s: out-of-fold frontier AUC %.4f", name, candidates[name]["oof_frontier_auc"])
    head_auc = candidates["head only"]["oof_frontier_auc"]
    best = max((name for name in candidates if name != "head only"),
               key=lambda name: candidates[name]["oof_frontier_auc"])
    keep = mode == "on" or candidates[best]["oof_frontier_auc"] >= head_auc + config.margin
    record = {"mode": mode, "by": "out-of-fold train frontier AUC (tradeoff policy, mean train costs), the "
              "head's folds and out-of-fold logits", "margin": config.margin,
              "candidates": candidates, "best": best, "kept": bool(keep), "config": asdict(config)}
    part = None
    if keep:
        kind, l2 = best.split(" ")[0], float(best.split("l2=")[1])
        weights, bias = fit(kind, l2, np.arange(len(train_ds)))
        # The head's temperature was fitted for the head alone; refitted on the combined out-of-fold logits
        # (as training does: kept only where it lowers their log loss). mmlu-pro/dev ECE with the head's:
        # 0.0184 alone, 0.0268 blended.
        z = oof_by_name[best].astype(np.float64)
        temperature = fit_temperature(z, quality)
        if log_loss(quality, 1 / (1 + np.exp(-z * temperature))) >= log_loss(quality, 1 / (1 + np.exp(-z))):
            temperature = 1.0
        head_share_served = 1.0 if kind == "stacked" else share
        # Served: temperature x (head_share x head + the rest x (bias + lexical)), folded into the kernel's form:
        # the head's quality rows x head_scale, its bias + quality_bias_added, the part's W x lexical_scale.
        lexical_scale = temperature * (1.0 - head_share_served if kind == "blend" else 1.0)
        record.update(kind=kind, l2=l2, temperature=round(temperature, 5),
                      head_scale=round(temperature * head_share_served, 6),
                      quality_bias_added=[round(float(b), 6) for b in lexical_scale * bias],
                      kept_after_temperature=_frontier_row(1 / (1 + np.exp(-z * temperature)), train_ds))
        result["served_oof_quality"] = 1 / (1 + np.exp(-z * temperature))   # for the prior shrink stage
        part = LexicalPart(weights * lexical_scale, vocab, config.bigram_bits, config.storage).rounded()
        record["fitted_rows"] = int((part.weights != 0).any(dim=1).sum())
    record["seconds"] = round(time.perf_counter() - started, 1)
    return part, record


def scaled_head(weights: HeadWeights, inv_temperature: float, head_scale: float,
                quality_bias_added: np.ndarray) -> HeadWeights:
    """The head whose served quality logits are head_scale x the original's + quality_bias_added (per model);
    exact: the head's inv_temperature multiplies its quality rows and bias."""
    added = torch.as_tensor(np.asarray(quality_bias_added), dtype=torch.float32)
    return replace(weights, quality_emb=weights.quality_emb * head_scale,
                   quality_bias=weights.quality_bias * head_scale + added / inv_temperature)


def attach_lexical(artifact: Artifact, result: dict, train_ds: RoutingDataset, dev_ds: RoutingDataset | None,
                   *, mode: str = "auto", config: LexicalConfig | None = None) -> dict:
    """choose_lexical, then the artifact keeps the part (artifact.lexical) and records the decision in
    manifest.training["lexical_choice"]; with dev_ds, result["head"] and the manifest's dev metrics become the
    served predictor's (head + lexical part), the head's alone kept beside them."""
    part, record = choose_lexical(artifact, result, train_ds, mode=mode, config=config)
    if part is not None:
        artifact.weights = scaled_head(artifact.weights, artifact.manifest.inv_temperature, record["head_scale"],
                                       np.array(record["quality_bias_added"], np.float32))
    artifact.lexical = part
    artifact.manifest.lexical = {}
    # Without its wall time: the manifest holds nothing that changes from run to run or machine to machine.
    artifact.manifest.training["lexical_choice"] = {k: v for k, v in record.items() if k != "seconds"}
    result["lexical_choice"] = record
    if part is not None and dev_ds is not None and result.get("x_dev") is not None:
        from evals.routers import rescore_dev

        rescore_dev(artifact, result, dev_ds.select_models(train_ds.model_names), before="head_without_lexical")
    return record


def describe(record: dict) -> list[str]:
    """The decision as stdout lines for `routoo train`."""
    if record["mode"] == "off":
        return ["lexical part: off (--lexical off)"]
    if "not_applicable" in record:
        return [f"lexical part: not applicable ({record['not_applicable']})"]
    lines = [f"lexical part: {'kept' if record['kept'] else 'not kept'} ({record['mode']}; best {record['best']}, "
             f"margin {record['margin']}), chosen by {record['by']}; {record['seconds']} s"]
    rows = dict(record["candidates"])
    if record["kept"]:
        rows[f"kept, temperature {record['temperature']:g}"] = record["kept_after_temperature"]
    for name, row in rows.items():
        lines.append(f"  {name:>10}: out-of-fold frontier AUC {row['oof_frontier_auc']:.4f}, gap recovered "
                     f"{row['oof_gap_recovered']:.3f}, AUROC {row['oof_auroc']:.4f}, "
                     f"log loss {row['oof_log_loss']:.4f}")
    return lines


__all__ = ["LexicalConfig", "attach_lexical", "choose_lexical", "describe", "fit_lexical"]
