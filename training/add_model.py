"""`routoo add-model`: a new pool model fitted from its own labelled prompts alone, beside a trained
artifact whose encoder, hidden layer and other models' rows stay exactly as they were."""

from __future__ import annotations

from dataclasses import asdict, replace

import numpy as np
import torch

from predictor_service.artifact import Artifact, Manifest
from predictor_service.contract import model_name_problem
from predictor_service.head import HeadWeights, log_lengths, reference_score
from training.fit import TrainConfig, _torch_threads, embed_cached, fit_cost_rows
from training.folds import fold_assignment
from training.price_costs import barely_costed, fill_unknown_costs, typical_output_tokens


# Prior precisions (on the combination of existing models, on the free direction in h) tried by add-model's
# cross-validation; the MAP objective is sum(BCE) + a * |combination|^2 + r * |direction|^2.
ADD_MODEL_PRIORS: tuple[tuple[float, float], ...] = tuple((a, r) for a in (0.3, 3.0, 30.0) for r in (10.0, 100.0, 1000.0))
ADD_MODEL_CV_FOLDS = 5
# The priors are per-model beliefs, not per-sample, so choosing them on a subsample is sound; 2,000 labels
# keep the 45 cross-validation fits under a minute on 2 cores.
ADD_MODEL_CV_MAX_PROMPTS = 2000


def _fit_new_row(z: torch.Tensor, h: torch.Tensor, y: torch.Tensor, prior: tuple[float, float],
                 steps: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """MAP fit of logit = z @ combo + h @ direction + bias (z: the pool's own logits, frozen)."""
    combo = torch.zeros(z.shape[1], requires_grad=True)
    direction = torch.zeros(h.shape[1], requires_grad=True)
    mean = float(y.mean().clamp(0.02, 0.98))
    bias = torch.tensor(np.log(mean / (1 - mean)), dtype=torch.float32, requires_grad=True)
    optimizer = torch.optim.LBFGS([combo, direction, bias], max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        logits = z @ combo + h @ direction + bias
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, y, reduction="sum")
        # A Beta(1, 1) prior on the base rate: one right and one wrong pseudo-answer on the bias alone
        # (Laplace's rule). Without it, labels all 1 (or all 0) sent the bias to +-17 and the model's
        # quality to exactly 1.0 (0.0) on every prompt; with hundreds of labels it changes nothing.
        loss = loss + torch.nn.functional.softplus(-bias) + torch.nn.functional.softplus(bias)
        loss = (loss + prior[0] * (combo ** 2).sum() + prior[1] * (direction ** 2).sum()) / len(y)
        loss.backward()
        return loss

    optimizer.step(closure)
    return combo.detach(), direction.detach(), bias.detach()


def _choose_prior(z: torch.Tensor, h: torch.Tensor, y: torch.Tensor, steps: int, seed: int = 0) -> tuple[float, float]:
    """The prior of ADD_MODEL_PRIORS with the lowest cross-validated log loss on the labelled prompts."""
    if len(y) > ADD_MODEL_CV_MAX_PROMPTS:
        keep = torch.from_numpy(np.sort(np.random.default_rng(seed).permutation(len(y))[:ADD_MODEL_CV_MAX_PROMPTS]))
        z, h, y = z[keep], h[keep], y[keep]
    folds = fold_assignment(len(y), min(ADD_MODEL_CV_FOLDS, len(y)), seed)
    best, best_loss = ADD_MODEL_PRIORS[len(ADD_MODEL_PRIORS) // 2], np.inf
    for prior in ADD_MODEL_PRIORS:
        total, scored = 0.0, 0
        for k in range(int(folds.max()) + 1):
            fit, held = torch.from_numpy(folds != k), torch.from_numpy(folds == k)
            if y[fit].min() == y[fit].max():       # one class only: nothing to learn from this split
                continue
            combo, direction, bias = _fit_new_row(z[fit], h[fit], y[fit], prior, steps)
            logits = z[held] @ combo + h[held] @ direction + bias
            total += float(torch.nn.functional.binary_cross_entropy_with_logits(logits, y[held], reduction="sum"))
            scored += 1
        # No fold scored (2 labels, one of each): every total is 0, and the middle prior stays.
        if scored and total < best_loss:
            best, best_loss = prior, total
    return best


def add_model(artifact: Artifact, name: str, prices: list[float | None], texts: list[str],
              quality: np.ndarray, cost: np.ndarray, *, prior: tuple[float, float] | None = None,
              steps: int = 100) -> Artifact:
    """A new pool model fitted from its own labelled prompts alone; the encoder, the hidden layer and every
    other model's row stay exactly as they were.

    The new row is a combination of the existing rows plus a free direction in h: its logit is
    z @ combo + h @ direction + bias, z the pool's own (calibrated) logits. With 50 labels the combination
    (n_models numbers: "behaves like these models") carries it; with thousands the free direction takes
    over. The two prior precisions are chosen by 5-fold cross-validation on the given labels
    (ADD_MODEL_PRIORS) unless `prior` is given. The fitted row folds back into the kernel's form exactly.
    """
    problem = model_name_problem(name)
    if problem:
        raise ValueError(f"model name {name!r} {problem}")
    if name in artifact.manifest.model_names:
        raise ValueError(f"model {name!r} is already in the pool {artifact.manifest.model_names}")
    known = ~np.isnan(np.asarray(quality, dtype=np.float64))
    if known.sum() < 2:
        raise ValueError(f"model {name!r} needs at least 2 labelled prompts, got {int(known.sum())}")
    encoder = artifact.load_encoder()
    w = artifact.weights
    inv_t = artifact.manifest.inv_temperature
    x = torch.from_numpy(embed_cached(encoder, texts, show_progress=False))
    with _torch_threads(TrainConfig.threads), torch.no_grad():
        h = torch.relu(x @ w.w1 + w.b1)                                   # (n, hidden), frozen
        z = (h @ w.quality_emb.T + w.quality_bias) * inv_t                # (n, n_models), frozen
    rows = torch.from_numpy(known)
    y = torch.from_numpy(np.asarray(quality, dtype=np.float32)[known])
    with _torch_threads(TrainConfig.threads):
        if prior is None:
            prior = _choose_prior(z[rows], h[rows], y, steps) if y.min() < y.max() else ADD_MODEL_PRIORS[-1]
        combo, direction, bias = _fit_new_row(z[rows], h[rows], y, prior, steps)
        log_len = log_lengths(texts)
        cost, from_prices = np.asarray(cost, dtype=np.float64)[:, None], []
        if barely_costed(cost):
            # Priced with the output tokens that the pool's predicted costs on these prompts imply.
            _, pool_cost = reference_score(w, x.numpy(), log_len.numpy(), inv_t)
            cost, from_prices = fill_unknown_costs(
                texts, cost, [list(prices)], [name],
                output_tokens=typical_output_tokens(texts, pool_cost, artifact.manifest.model_prices))
        cost_emb, cost_bias, cost_len = (t[0] for t in fit_cost_rows(
            h, log_len, cost, folds=fold_assignment(len(texts), min(ADD_MODEL_CV_FOLDS, len(texts)), 0)))
    # (h @ e + b) * inv_t must equal z @ combo + h @ direction + bias, with z = (h @ E.T + B) * inv_t.
    new_emb = combo @ w.quality_emb + direction / inv_t
    new_bias = combo @ w.quality_bias + bias / inv_t
    new = HeadWeights(w.w1, w.b1,
                      torch.cat([w.quality_emb, new_emb[None]]), torch.cat([w.quality_bias, new_bias[None]]),
                      torch.cat([w.cost_emb, cost_emb[None]]), torch.cat([w.cost_bias, cost_bias[None]]),
                      torch.cat([w.cost_len_coef, cost_len[None]]))
    manifest = Manifest(**{**asdict(artifact.manifest),
                           "model_names": artifact.manifest.model_names + [name],
                           "model_prices": artifact.manifest.model_prices + [list(prices)]})
    manifest.training = {**manifest.training,
                         "added_models": manifest.training.get("added_models", []) + [
                             {"name": name, "n_labelled": int(known.sum()), "prior": list(prior),
                              "costs_from_prices": bool(from_prices)}]}
    lexical = artifact.lexical
    if lexical is not None:   # the new model has no lexical weights (a zero column): its head's logit alone
        lexical = replace(lexical, weights=torch.cat([lexical.weights, torch.zeros(lexical.n_features, 1)], dim=1))
    return Artifact(manifest, new, static_encoder=artifact.static_encoder, source=artifact.source, lexical=lexical)
