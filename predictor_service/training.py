"""Training of the scoring head (Routoo's performance predictor) and `add-model` for new pool models.

Recipe (the default artifact is made by exactly this, `make train-default`):
1. Embed train and dev prompts with the chosen encoder (cached on disk by encoder and data digest).
2. Train the head with masked binary cross-entropy on every known (prompt, model) label, Adam, dropout,
   early stopping on dev log loss. The cost branch learns log USD by MSE on the same hidden features,
   detached, so cost regression never bends the quality representation.
3. Lognormal mean correction: cost_bias += var(log residual) / 2, so exp() predicts the mean USD.
4. Temperature scaling on dev, kept only where it lowers dev log loss.
Without a dev set, a fixed 10% of train (by a seeded permutation) plays its part.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from predictor_service.artifact import Artifact, Manifest
from predictor_service.data import RoutingDataset
from predictor_service.encoders import cache_dir, load_encoder
from predictor_service.head import HeadWeights, ScoringHead, log_lengths, reference_score
from predictor_service.metrics import log_loss, quality_metrics

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    hidden: int = 256           # 128..512 moved dev log loss by < 0.002 in a first sweep; 256 is the middle
    dropout: float = 0.1
    lr: float = 1e-3
    weight_decay: float = 1e-4
    batch_size: int = 256
    max_epochs: int = 200
    patience: int = 10          # epochs without a dev log-loss gain before stopping
    cost_loss_weight: float = 1.0
    seed: int = 0


def embed_cached(encoder, texts: list[str], *, show_progress: bool = True) -> np.ndarray:
    """Prompt embeddings, cached on disk by encoder identity and the texts' digest."""
    h = hashlib.sha256()
    for t in texts:
        h.update(t.encode("utf-8"))
        h.update(b"\0")
    key = f"{encoder.name}-{encoder.max_tokens}-{(encoder.table_digest or 'minilm')[:12]}-{h.hexdigest()[:16]}"
    path = cache_dir() / "embeddings" / f"{key}.npy"
    if path.is_file():
        return np.load(path)
    chunks, step = [], 512
    for start in tqdm(range(0, len(texts), step), desc=f"embedding ({encoder.name})", unit="chunk",
                      disable=not show_progress):
        chunks.append(encoder.encode(texts[start:start + step]))
    out = np.concatenate(chunks) if chunks else np.zeros((0, encoder.dim), np.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, out)
    return out


def _masked_bce(logits: torch.Tensor, quality: torch.Tensor, known: torch.Tensor) -> torch.Tensor:
    loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, quality, reduction="none")
    return (loss * known).sum() / known.sum().clamp(min=1)


def _log_cost_target(cost: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    known = np.isfinite(cost) & (cost > 0)
    return np.where(known, np.log(np.where(known, cost, 1.0)), 0.0).astype(np.float32), known


def fit_head(x_train: np.ndarray, log_len_train: np.ndarray, quality: np.ndarray, cost: np.ndarray,
             x_dev: np.ndarray, log_len_dev: np.ndarray, quality_dev: np.ndarray,
             config: TrainConfig, *, show_progress: bool = True) -> tuple[ScoringHead, int]:
    """Trains a ScoringHead; returns it (best dev epoch restored) and the number of epochs run."""
    torch.manual_seed(config.seed)
    n_models = quality.shape[1]
    model = ScoringHead(x_train.shape[1], config.hidden, n_models, dropout=config.dropout)
    xt, llt = torch.from_numpy(x_train), torch.from_numpy(log_len_train)
    known_q = torch.from_numpy(~np.isnan(quality)).float()
    yq = torch.from_numpy(np.nan_to_num(quality, nan=0.0))
    log_cost, known_c = _log_cost_target(cost)
    yc, known_c = torch.from_numpy(log_cost), torch.from_numpy(known_c).float()
    with torch.no_grad():
        # Start the cost branch at each model's mean of log(cost) - log_len, so early steps only refine.
        resid = (yc - llt[:, None]) * known_c
        model.cost_bias.copy_(resid.sum(0) / known_c.sum(0).clamp(min=1))
        means = np.nanmean(quality, axis=0).clip(0.02, 0.98)
        model.quality_bias.copy_(torch.from_numpy(np.log(means / (1 - means))).float())
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    xd, lld = torch.from_numpy(x_dev), torch.from_numpy(log_len_dev)
    best_loss, best_state, best_epoch, epoch = np.inf, None, 0, 0
    generator = torch.Generator().manual_seed(config.seed)
    bar = tqdm(range(config.max_epochs), desc="training head", unit="epoch", disable=not show_progress)
    for epoch in bar:
        model.train()
        for idx in torch.randperm(len(xt), generator=generator).split(config.batch_size):
            h = model.dropout(model.hidden_features(xt[idx]))
            logits = h @ model.quality_emb.T + model.quality_bias
            pred_cost = h.detach() @ model.cost_emb.T + model.cost_bias + llt[idx, None] * model.cost_len_coef
            cost_loss = (((pred_cost - yc[idx]) ** 2) * known_c[idx]).sum() / known_c[idx].sum().clamp(min=1)
            loss = _masked_bce(logits, yq[idx], known_q[idx]) + config.cost_loss_weight * cost_loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        model.eval()
        with torch.no_grad():
            dev_logits, _ = model(xd, lld)
            dev_loss = log_loss(quality_dev, torch.sigmoid(dev_logits).numpy())
        bar.set_postfix(dev_log_loss=f"{dev_loss:.4f}")
        if dev_loss < best_loss - 1e-5:
            best_loss, best_epoch = dev_loss, epoch
            best_state = {k: v.clone() for k, v in model.state_dict().items()}
        elif epoch - best_epoch >= config.patience:
            break
    model.load_state_dict(best_state)
    model.eval()
    _correct_cost_bias(model, xt, llt, yc, known_c)
    return model, epoch + 1


@torch.no_grad()
def _correct_cost_bias(model: ScoringHead, x, log_len, log_cost, known) -> None:
    """exp(E[log cost]) underestimates E[cost]: add half the residual variance (lognormal mean)."""
    _, pred = model(x, log_len)
    resid = (log_cost - pred) * known
    var = (resid ** 2).sum(0) / known.sum(0).clamp(min=1)
    model.cost_bias.add_(var / 2)


def fit_temperature(logits: np.ndarray, quality: np.ndarray) -> float:
    """Inverse temperature minimising dev log loss, searched on a log grid (a 1-D convex problem)."""
    known = ~np.isnan(quality)
    z, y = logits[known], quality[known]
    best, best_loss = 1.0, np.inf
    for inv_t in np.exp(np.linspace(np.log(0.25), np.log(4.0), 121)):
        p = np.clip(1 / (1 + np.exp(-z * inv_t)), 1e-7, 1 - 1e-7)
        loss = -np.mean(y * np.log(p) + (1 - y) * np.log(1 - p))
        if loss < best_loss:
            best, best_loss = float(inv_t), loss
    return best


def _split_for_early_stopping(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    order = np.random.default_rng(seed).permutation(n)
    cut = max(1, n // 10)
    return np.sort(order[cut:]), np.sort(order[:cut])


def train(train_ds: RoutingDataset, dev_ds: RoutingDataset | None, *, encoder_name: str = "static",
          config: TrainConfig | None = None, show_progress: bool = True) -> tuple[Artifact, dict]:
    """Trains an artifact; returns it and the dev metrics (head and the per-model-mean baseline)."""
    config = config or TrainConfig()
    if dev_ds is not None and dev_ds.model_names != train_ds.model_names:
        dev_ds = dev_ds.select_models(train_ds.model_names)
    encoder = load_encoder(encoder_name)
    x_all = embed_cached(encoder, train_ds.texts, show_progress=show_progress)
    ll_all = log_lengths(train_ds.texts).numpy()
    if dev_ds is None:
        fit_rows, stop_rows = _split_for_early_stopping(len(train_ds), config.seed)
        x_dev, ll_dev, q_dev = x_all[stop_rows], ll_all[stop_rows], train_ds.quality[stop_rows]
    else:
        fit_rows = np.arange(len(train_ds))
        x_dev = embed_cached(encoder, dev_ds.texts, show_progress=show_progress)
        ll_dev, q_dev = log_lengths(dev_ds.texts).numpy(), dev_ds.quality
    model, epochs = fit_head(x_all[fit_rows], ll_all[fit_rows], train_ds.quality[fit_rows],
                             train_ds.cost_usd[fit_rows], x_dev, ll_dev, q_dev, config,
                             show_progress=show_progress)
    weights = model.weights()
    with torch.no_grad():
        dev_logits, _ = model(torch.from_numpy(x_dev), torch.from_numpy(ll_dev))
    inv_t = fit_temperature(dev_logits.numpy(), q_dev)
    uncalibrated = quality_metrics(q_dev, torch.sigmoid(dev_logits).numpy())
    quality_dev, _ = reference_score(weights, x_dev, ll_dev, inv_t)
    calibrated = quality_metrics(q_dev, quality_dev)
    if calibrated["log_loss"] >= uncalibrated["log_loss"]:
        inv_t, calibrated = 1.0, uncalibrated
    manifest = Manifest(
        encoder=encoder.name, dim=encoder.dim, hidden=config.hidden, max_tokens=encoder.max_tokens,
        model_names=train_ds.model_names,
        model_prices=[[m.input_usd_per_mtok, m.output_usd_per_mtok] for m in train_ds.pool],
        inv_temperature=inv_t, encoder_table_digest=encoder.table_digest,
        training={"train_digest": train_ds.digest, "dev_digest": dev_ds.digest if dev_ds else None,
                  "n_train": int(len(fit_rows)), "epochs": epochs, "config": asdict(config)},
        dev_metrics={"head": _summary(calibrated), "head_before_temperature": _summary(uncalibrated),
                     "inv_temperature": inv_t})
    return Artifact(manifest, weights), {"head": calibrated, "x_dev": x_dev}


def _summary(metrics: dict) -> dict:
    return {k: round(v, 5) for k, v in metrics.items() if isinstance(v, float)}


def add_model(artifact: Artifact, name: str, prices: list[float | None], texts: list[str],
              quality: np.ndarray, cost: np.ndarray, *, weight_decay: float = 1e-2,
              steps: int = 300) -> Artifact:
    """A new pool model fitted from its own labelled prompts alone; the encoder, the hidden layer and every
    other model's row stay exactly as they were."""
    if name in artifact.manifest.model_names:
        raise ValueError(f"model {name!r} is already in the pool {artifact.manifest.model_names}")
    known = ~np.isnan(quality)
    if known.sum() < 2:
        raise ValueError(f"model {name!r} needs at least 2 labelled prompts, got {int(known.sum())}")
    encoder = load_encoder(artifact.manifest.encoder, max_tokens=artifact.manifest.max_tokens)
    w = artifact.weights
    x = torch.from_numpy(embed_cached(encoder, texts, show_progress=False))
    with torch.no_grad():
        h = torch.relu(x @ w.w1 + w.b1)                                   # (n, hidden), frozen
    y = torch.from_numpy(np.nan_to_num(quality, nan=0.0)).float()
    mask = torch.from_numpy(known).float()
    emb = torch.zeros(w.w1.shape[1], requires_grad=True)
    mean = float(np.clip(np.nanmean(quality), 0.02, 0.98))
    bias = torch.tensor(np.log(mean / (1 - mean)), dtype=torch.float32, requires_grad=True)
    optimizer = torch.optim.LBFGS([emb, bias], max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        logits = h @ emb + bias
        loss = (torch.nn.functional.binary_cross_entropy_with_logits(logits, y, reduction="none") * mask).sum()
        loss = loss / mask.sum() + weight_decay * (emb ** 2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    log_len = log_lengths(texts)
    cost_emb, cost_bias, cost_len = _fit_cost_row(h, log_len, cost)
    # The head applies the temperature to every row; pre-scale so this row's fitted logits are unchanged.
    scale = 1.0 / artifact.manifest.inv_temperature
    new = HeadWeights(w.w1, w.b1,
                      torch.cat([w.quality_emb, (emb.detach() * scale)[None]]),
                      torch.cat([w.quality_bias, (bias.detach() * scale)[None]]),
                      torch.cat([w.cost_emb, cost_emb[None]]), torch.cat([w.cost_bias, cost_bias[None]]),
                      torch.cat([w.cost_len_coef, cost_len[None]]))
    manifest = Manifest(**{**asdict(artifact.manifest),
                           "model_names": artifact.manifest.model_names + [name],
                           "model_prices": artifact.manifest.model_prices + [list(prices)]})
    manifest.training = {**manifest.training,
                         "added_models": manifest.training.get("added_models", []) + [
                             {"name": name, "n_labelled": int(known.sum())}]}
    return Artifact(manifest, new)


def _fit_cost_row(h: torch.Tensor, log_len: torch.Tensor, cost: np.ndarray, ridge: float = 1.0):
    """Ridge regression of log cost on [h, log_len, 1]; a model without known costs predicts 0 USD."""
    log_cost, known = _log_cost_target(cost)
    if known.sum() < 2:
        n_hidden = h.shape[1]
        return torch.zeros(n_hidden), torch.tensor(-30.0), torch.tensor(0.0)
    rows = torch.from_numpy(known)
    feats = torch.cat([h[rows], log_len[rows, None], torch.ones(int(rows.sum()), 1)], dim=1).double()
    target = torch.from_numpy(log_cost[known]).double()
    reg = ridge * torch.eye(feats.shape[1], dtype=torch.float64)
    reg[-1, -1] = 0.0
    coef = torch.linalg.solve(feats.T @ feats + reg, feats.T @ target)
    resid_var = float(((feats @ coef - target) ** 2).mean())
    return coef[:-2].float(), (coef[-1] + resid_var / 2).float(), coef[-2].float()
