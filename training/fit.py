"""Training of the scoring head (Routoo's performance predictor); `add-model` for new pool models is
training/add_model.py.

Recipe (the default artifact is made by exactly this, `make train-default`); no step reads the dev set,
which is only scored for the report (docs/evaluation.md has the procedure that chose these settings):
1. Embed the train prompts with the chosen encoder (cached on disk by encoder and data digest).
2. Soft targets: each label is mixed with the model's train accuracy in the prompt's category,
   (1 - a) * y + a * category_mean, a = `category_smoothing`. Which model is strong where is mostly a
   property of the topic; pulling each prompt's target towards its category's rate cut the noise in the
   cross-model differences that routing acts on (5-fold train CV: frontier AUC 0.762 -> 0.767).
3. K-fold ensemble (K = `folds`, each member hidden / K units wide; prompts of the same text share a
   fold): member k trains on the other K-1 folds (masked BCE on the soft targets, AdamW, dropout) and
   early-stops on fold k's hard-label log loss. Fold k's out-of-fold logits are not taken at that epoch,
   which fold k's own labels chose, but at the median of the other members' best epochs, so fold k's
   labels reach the recipe's choices only through members that trained on them, as in any K-fold
   estimate (mmlu-pro/train, 2 seeds: the leak had lowered out-of-fold log loss by 0.0004-0.0007;
   frontier AUC moved by -0.0004 / +0.0002, noise).
4. The K members merge exactly into one head of width `hidden` (logit averaging): w1/b1 concatenated,
   quality_emb blocks scaled by 1/K, quality_bias averaged. The inference form, and so the fused
   Triton kernel, is unchanged.
5. Cost rows: ridge regression of log USD on [h, log_len, 1] per model on the merged hidden layer, plus
   Duan's smearing factor over out-of-fold residuals, so exp() predicts the mean USD.
6. Temperature from the out-of-fold logits (each train prompt scored by the member that never saw it),
   kept only where it lowers their log loss.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from predictor_service.artifact import Artifact, Manifest, encoder_record, training_encoder
from training.data import RoutingDataset
from training.folds import dataset_folds
from predictor_service.encoders import MAX_TOKENS, TAIL_TOKENS, StaticEncoder, cache_dir
from predictor_service.head import HeadWeights, ScoringHead, log_lengths, reference_score
from training.baselines import per_model_rate
from training.metrics import log_loss, quality_metrics, rounded_metrics
from training.price_costs import fill_unknown_costs

log = logging.getLogger(__name__)

MIN_STEPS_PER_EPOCH = 8
PROCEDURE = ("k-fold ensemble, category-smoothed targets, ridge cost rows, out-of-fold temperature, "
             "out-of-fold epochs, twins in one fold (v3)")


@dataclass
class TrainConfig:
    # The artifact's hidden width, shared evenly by the ensemble members (4 x 64). 5-fold train CV, log loss
    # / AUROC / frontier AUC: 1 x 256: 0.5962 / 0.657 / 0.767; 4 x 64: 0.5957 / 0.659 / 0.766; 4 x 256:
    # 0.5949 / 0.660 / 0.767. 1024 wide cost 1.8x the batch-1 latency of 256 (473 vs 264 us p50) for that.
    hidden: int = 256
    folds: int = 4
    dropout: float = 0.1        # 0.3 and input dropout 0.2 changed CV frontier AUC by < 0.001
    lr: float = 1e-3
    weight_decay: float = 1e-4  # 1e-2 changed CV log loss by < 0.0002
    batch_size: int = 256
    max_epochs: int = 200
    patience: int = 10          # epochs without a gain in the held-out fold's log loss before stopping
    # Share of the category rate in each soft target (step 2 of the recipe). 5-fold train CV frontier
    # AUC for a = 0 / 0.5 / 0.8 / 1.0: 0.762 / 0.767 / 0.768 / 0.766; log loss best at 0.5 (0.5962).
    category_smoothing: float = 0.5
    category_prior_prompts: float = 20.0   # a category's rate is shrunk to the overall rate by this many prompts
    cost_ridge: float = 1.0     # L2 of the cost rows' ridge regression
    threads: int = 1            # torch threads while fitting: the matmuls are tiny, and 2 threads on a busy
                                # 2-core machine ran 117 ms a step against 8.6 ms with 1
    seed: int = 0


def embed_cached(encoder, texts: list[str], *, show_progress: bool = True) -> np.ndarray:
    """Prompt embeddings, cached on disk by encoder identity and the texts' digest."""
    h = hashlib.sha256()
    for t in texts:
        h.update(t.encode("utf-8"))
        h.update(b"\0")
    key = f"{encoder.name}-{encoder.window}-{(encoder.table_digest or 'minilm')[:12]}-{h.hexdigest()[:16]}"
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


@contextlib.contextmanager
def _torch_threads(n: int):
    before = torch.get_num_threads()
    torch.set_num_threads(max(1, n))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _masked_bce(logits: torch.Tensor, target: torch.Tensor, known: torch.Tensor) -> torch.Tensor:
    loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, target, reduction="none")
    return (loss * known).sum() / known.sum().clamp(min=1)


def _log_cost_target(cost: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    known = np.isfinite(cost) & (cost > 0)
    return np.where(known, np.log(np.where(known, cost, 1.0)), 0.0).astype(np.float32), known


def category_smoothed_targets(quality: np.ndarray, categories: list[str], share: float,
                              prior_prompts: float) -> np.ndarray:
    """(n, n_models) soft targets (1 - share) * y + share * (the model's rate in the prompt's category),
    the rate shrunk towards the model's overall rate by `prior_prompts` pseudo-prompts. NaN stays NaN.
    Without categories (all empty) this is label smoothing towards each model's base rate."""
    if share <= 0:
        return quality
    known = ~np.isnan(quality)
    y = np.nan_to_num(quality, nan=0.0)
    overall = y.sum(0) / np.maximum(known.sum(0), 1)                       # (n_models,)
    cats = np.asarray(categories)
    rate = np.empty_like(quality)
    for c in np.unique(cats):
        rows = cats == c
        n_c = known[rows].sum(0)
        rate[rows] = (y[rows].sum(0) + prior_prompts * overall) / (n_c + prior_prompts)
    return np.where(known, (1 - share) * y + share * rate, np.nan).astype(np.float32)


def fit_member(x_fit: np.ndarray, target: np.ndarray, x_stop: np.ndarray, quality_stop: np.ndarray,
               config: TrainConfig, *, seed: int, desc: str = "training head",
               show_progress: bool = True) -> tuple[ScoringHead, int, int, list[dict]]:
    """One ensemble member's quality branch: masked BCE on (soft) targets, early stopping on the held-out
    rows' hard-label log loss; returns it with the best epoch restored, the epochs run, the best epoch
    (0-based) and every epoch's weights (a few hundred KiB; the recipe's out-of-fold logits come from
    another epoch, step 3)."""
    torch.manual_seed(seed)
    model = ScoringHead(x_fit.shape[1], config.hidden // config.folds, target.shape[1], dropout=config.dropout)
    xt = torch.from_numpy(np.ascontiguousarray(x_fit, dtype=np.float32))
    known = torch.from_numpy(~np.isnan(target)).float()
    yq = torch.from_numpy(np.nan_to_num(target, nan=0.0)).float()
    with torch.no_grad():
        means = per_model_rate(target).clip(0.02, 0.98)
        model.quality_bias.copy_(torch.from_numpy(np.log(means / (1 - means))).float())
    params = [model.hidden.weight, model.hidden.bias, model.quality_emb, model.quality_bias]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    xs = torch.from_numpy(np.ascontiguousarray(x_stop, dtype=np.float32))
    best_loss, best_epoch, epoch, states = np.inf, 0, 0, []
    generator = torch.Generator().manual_seed(seed)
    # At least MIN_STEPS_PER_EPOCH steps an epoch, so a few hundred prompts still get trained (mmlu-pro's
    # 5,380 prompts a member keep the configured 256).
    batch_size = max(8, min(config.batch_size, len(xt) // MIN_STEPS_PER_EPOCH))
    bar = tqdm(range(config.max_epochs), desc=desc, unit="epoch", disable=not show_progress, leave=False)
    for epoch in bar:
        model.train()
        for idx in torch.randperm(len(xt), generator=generator).split(batch_size):
            loss = _masked_bce(model(xt[idx]), yq[idx], known[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        model.eval()
        with torch.no_grad():
            stop_logits = model(xs)                             # eval mode: no dropout
            stop_loss = log_loss(quality_stop, torch.sigmoid(stop_logits).numpy())
        bar.set_postfix(held_out_log_loss=f"{stop_loss:.4f}")
        states.append({k: v.clone() for k, v in model.state_dict().items()})
        if stop_loss < best_loss - 1e-5:
            best_loss, best_epoch = stop_loss, epoch
        elif epoch - best_epoch >= config.patience:
            break
    model.load_state_dict(states[best_epoch])
    model.eval()
    return model, epoch + 1, best_epoch, states


def out_of_fold_epochs(best_epochs: list[int], epochs_run: list[int]) -> list[int]:
    """The epoch (0-based) whose weights score each member's held-out fold: the median of the other members'
    best epochs, capped by the epochs the member ran (it stopped because its fold's loss had not improved
    for `patience` epochs, so a later epoch would not have been better there)."""
    out = []
    for k, ran in enumerate(epochs_run):
        others = [e for j, e in enumerate(best_epochs) if j != k] or [best_epochs[k]]
        out.append(min(int(round(float(np.median(others)))), ran - 1))
    return out


def _member_logits(state: dict, x: np.ndarray) -> np.ndarray:
    """Quality logits of one member's weights (eval mode: no dropout)."""
    with torch.no_grad():
        h = torch.relu(torch.from_numpy(x) @ state["hidden.weight"].T + state["hidden.bias"])
        return (h @ state["quality_emb"].T + state["quality_bias"]).numpy()


def merge_members(members: list[ScoringHead]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(w1, b1, quality_emb, quality_bias) of the single head whose logits are the members' mean logits:
    hidden units side by side, each member's embedding block scaled by 1/K. Exact, not an approximation."""
    k = len(members)
    w1 = torch.cat([m.hidden.weight.detach().T for m in members], dim=1)          # (dim, K * hidden)
    b1 = torch.cat([m.hidden.bias.detach() for m in members])                      # (K * hidden,)
    quality_emb = torch.cat([m.quality_emb.detach() / k for m in members], dim=1)  # (n_models, K * hidden)
    quality_bias = torch.stack([m.quality_bias.detach() for m in members]).mean(0)
    return w1.contiguous(), b1.contiguous(), quality_emb.contiguous(), quality_bias.contiguous()


def fit_temperature(logits: np.ndarray, quality: np.ndarray) -> float:
    """Inverse temperature minimising log loss, searched on a log grid (a 1-D convex problem)."""
    known = ~np.isnan(quality)
    z, y = logits[known], quality[known]
    best, best_loss = 1.0, np.inf
    for inv_t in np.exp(np.linspace(np.log(0.25), np.log(4.0), 121)):
        loss = log_loss(y, 1 / (1 + np.exp(-z * inv_t)))
        if loss < best_loss:
            best, best_loss = float(inv_t), loss
    return best


def train(train_ds: RoutingDataset, dev_ds: RoutingDataset | None, *, encoder_name: str = "static",
          config: TrainConfig | None = None, show_progress: bool = True,
          static_table: str | Path | None = None, table_storage: str | None = None,
          max_tokens: int = MAX_TOKENS, tail_tokens: int = TAIL_TOKENS,
          fold_by: str = "prompt") -> tuple[Artifact, dict]:
    """Trains an artifact by the recipe above. `dev_ds` is only scored for the report, never fitted on.
    static_table / table_storage: where the static table comes from (default: the committed default
    artifact's, the same bits on every machine) and how the artifact stores it (artifact.static_encoder_from).
    max_tokens / tail_tokens: the encoder's window (encoders.TAIL_TOKENS), recorded in the manifest.
    fold_by: FOLD_BY, recorded in the manifest unless "prompt" (so default artifacts stay byte-identical).
    Returns the artifact and metrics: "head" (dev if given, else out-of-fold train), "oof", "x_dev"."""
    config = config or TrainConfig()
    if dev_ds is not None and dev_ds.model_names != train_ds.model_names:
        dev_ds = dev_ds.select_models(train_ds.model_names)
    if config.folds < 2 or config.hidden % config.folds:
        raise ValueError(f"hidden ({config.hidden}) must be a multiple of folds ({config.folds}, at least 2): "
                         f"each of the {config.folds} ensemble members gets hidden / folds units")
    if len(train_ds) < 2 * config.folds:
        raise ValueError(f"training needs at least 2 prompts per fold ({2 * config.folds}), got {len(train_ds)}")
    unlabelled = [n for n, seen in zip(train_ds.model_names, (~np.isnan(train_ds.quality)).any(axis=0)) if not seen]
    if unlabelled:            # its row would keep its random start: topic-dependent noise, routed on as scores
        raise ValueError(f"{len(unlabelled)} pool model(s) have no known score in the train data: "
                         f"{unlabelled[:8]}; label some of their prompts, or leave them out of models.json and "
                         f"add them later with `routoo add-model`")
    fold = dataset_folds(train_ds, config.folds, config.seed, fold_by)     # before the embedding: fails fast
    n_folds = int(fold.max()) + 1
    prices = [[m.input_usd_per_mtok, m.output_usd_per_mtok] for m in train_ds.pool]
    cost_usd, costs_from_prices = fill_unknown_costs(train_ds.texts, train_ds.cost_usd, prices,
                                                     train_ds.model_names)
    encoder = training_encoder(encoder_name, static_table=static_table, table_storage=table_storage,
                               max_tokens=max_tokens, tail_tokens=tail_tokens)
    x_all = embed_cached(encoder, train_ds.texts, show_progress=show_progress)
    ll_all = log_lengths(train_ds.texts).numpy()
    quality = train_ds.quality
    categories = [p.category for p in train_ds.prompts]
    members, epochs, best_epochs, histories = [], [], [], []
    oof_logits = np.zeros(quality.shape, dtype=np.float32)
    with _torch_threads(config.threads):
        for k in range(n_folds):
            fit_rows, stop_rows = np.flatnonzero(fold != k), np.flatnonzero(fold == k)
            target = category_smoothed_targets(quality[fit_rows], [categories[i] for i in fit_rows],
                                               config.category_smoothing, config.category_prior_prompts)
            member, ran, best, states = fit_member(x_all[fit_rows], target, x_all[stop_rows], quality[stop_rows],
                                                   config, seed=config.seed + k, show_progress=show_progress,
                                                   desc=f"training head {k + 1}/{n_folds}")
            members.append(member)
            epochs.append(ran)
            best_epochs.append(best)
            histories.append(states)
        oof_epochs = out_of_fold_epochs(best_epochs, epochs)
        for k, states in enumerate(histories):
            stop_rows = np.flatnonzero(fold == k)
            oof_logits[stop_rows] = _member_logits(states[oof_epochs[k]], x_all[stop_rows])
        del histories
        w1, b1, quality_emb, quality_bias = merge_members(members)
        with torch.no_grad():
            h_all = torch.relu(torch.from_numpy(x_all) @ w1 + b1)                   # (n, K * hidden)
        cost_emb, cost_bias, cost_len_coef = fit_cost_rows(h_all, torch.from_numpy(ll_all), cost_usd,
                                                           config.cost_ridge, fold)
    weights = HeadWeights(w1, b1, quality_emb, quality_bias, cost_emb, cost_bias, cost_len_coef)
    weights.check()

    inv_t = fit_temperature(oof_logits, quality)
    oof_raw = quality_metrics(quality, 1 / (1 + np.exp(-oof_logits)))
    oof = quality_metrics(quality, 1 / (1 + np.exp(-oof_logits * inv_t)))
    if oof["log_loss"] >= oof_raw["log_loss"]:
        inv_t, oof = 1.0, oof_raw
    dev_metrics: dict = {"inv_temperature": inv_t, "oof_train": rounded_metrics(oof)}
    result: dict = {"oof": oof, "head": oof, "x_dev": None,
                    "oof_quality": 1 / (1 + np.exp(-oof_logits * inv_t))}   # for recipe choice by CV
    if dev_ds is not None:
        x_dev = embed_cached(encoder, dev_ds.texts, show_progress=show_progress)
        ll_dev = log_lengths(dev_ds.texts).numpy()
        quality_dev, _ = reference_score(weights, x_dev, ll_dev, inv_t)
        raw_dev, _ = reference_score(weights, x_dev, ll_dev, 1.0)
        calibrated = quality_metrics(dev_ds.quality, quality_dev)
        dev_metrics.update(head=rounded_metrics(calibrated),
                           head_before_temperature=rounded_metrics(quality_metrics(dev_ds.quality, raw_dev)))
        result.update(head=calibrated, x_dev=x_dev)
    hidden = int(w1.shape[1])
    table_digest, encoder_files = encoder_record(encoder)
    manifest = Manifest(
        encoder=encoder.name, dim=encoder.dim, hidden=hidden, max_tokens=encoder.max_tokens,
        tail_tokens=encoder.tail_tokens,
        model_names=train_ds.model_names,
        model_prices=prices,
        inv_temperature=inv_t, encoder_table_digest=table_digest, encoder_files=encoder_files,
        training={"procedure": PROCEDURE, "train_digest": train_ds.digest,
                  "dev_digest": dev_ds.digest if dev_ds else None, "dev_used_for": "report only",
                  "n_train": len(train_ds), "folds": n_folds, "epochs": epochs,
                  "out_of_fold_epochs": [e + 1 for e in oof_epochs], "config": asdict(config),
                  "costs_from_prices": costs_from_prices,
                  **({"fold_by": fold_by} if fold_by != "prompt" else {})},
        dev_metrics=dev_metrics)
    static_encoder = encoder if isinstance(encoder, StaticEncoder) else None
    return Artifact(manifest, weights, static_encoder=static_encoder), result


def fit_cost_rows(h: torch.Tensor, log_len: torch.Tensor, cost: np.ndarray, ridge: float = 1.0,
                  folds: np.ndarray | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(cost_emb, cost_bias, cost_len_coef) for every model: ridge regressions of log USD on
    [h, log_len, 1] over that model's known costs, the bias raised so exp() predicts the mean USD.

    That mean correction is Duan's smearing factor, log mean(exp(residual)), over out-of-fold residuals when
    `folds` is given: the lognormal formula (half the residual variance) left the cheapest models' costs,
    whose residuals are heavy-tailed, 15-28% under their realised totals. The Gram matrix of all rows is
    built once; each model subtracts its unknown rows and each fold its held-out rows. A model without
    known positive costs predicts ~0 USD: callers fill unknown costs from prices first
    (price_costs.fill_unknown_costs), so this is a model that is free."""
    log_cost, known = _log_cost_target(cost)                                # (n, n_models)
    feats = torch.cat([h, log_len[:, None], torch.ones(len(h), 1)], dim=1).double()   # (n, hidden + 2)
    gram = feats.T @ feats
    reg = ridge * torch.eye(feats.shape[1], dtype=torch.float64)
    reg[-1, -1] = 0.0
    fold_rows = [] if folds is None else [torch.from_numpy(folds == k) for k in range(int(folds.max()) + 1)]
    rows = []
    for j in range(cost.shape[1]):
        ok = torch.from_numpy(known[:, j])
        if int(ok.sum()) < 2:
            rows.append((torch.zeros(h.shape[1]), torch.tensor(-30.0), torch.tensor(0.0)))
            continue
        target = torch.from_numpy(log_cost[:, j]).double() * ok
        gram_j = gram - feats[~ok].T @ feats[~ok]
        coef = torch.linalg.solve(gram_j + reg, feats.T @ target)
        resid = feats @ coef - target                                      # fitted - actual, in-sample
        for held in fold_rows:
            fit = ok & ~held
            if int(fit.sum()) > feats.shape[1] // 4:
                out = held & ok
                coef_k = torch.linalg.solve(gram_j - feats[out].T @ feats[out] + reg, feats[fit].T @ target[fit])
                resid[out] = feats[out] @ coef_k - target[out]
        smearing = float(torch.log(torch.exp(-resid[ok]).mean()))
        rows.append((coef[:-2].float(), (coef[-1] + smearing).float(), coef[-2].float()))
    return tuple(torch.stack([r[i] for r in rows]).contiguous() for i in range(3))
