"""The routers an evaluation compares: what each believes about the test prompts (a quality and a cost per
(prompt, model)), from an artifact, from the nearest train prompts, from train means alone, or the truth."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from predictor_service.artifact import Artifact
from predictor_service.head import log_lengths, reference_score
from training import baselines
from training.fit import embed_cached
from training.metrics import quality_metrics, rounded_metrics


@dataclass
class RouterPredictions:
    """What one router believes about the test prompts; decisions are made from these alone."""

    name: str
    quality: np.ndarray             # (n_prompts, n_models) predicted quality
    expected_cost_usd: np.ndarray   # (n_prompts, n_models) predicted cost used for deciding
    note: str = ""

    def columns(self, cols: np.ndarray) -> "RouterPredictions":
        return RouterPredictions(self.name, self.quality[:, cols], self.expected_cost_usd[:, cols], self.note)


def artifact_predictions(artifact: Artifact, texts: list[str], *,
                         show_progress: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(quality, expected_cost_usd, prompt_embedding) of an artifact on texts, through the head's reference
    math (the same as the fused kernel), with embeddings cached like training's; a lexical part's logits added."""
    manifest = artifact.manifest
    encoder = artifact.load_encoder()
    x = embed_cached(encoder, texts, show_progress=show_progress)
    offset = None
    if artifact.lexical is not None:
        tokens = encoder.tokenize(texts)
        offset = artifact.lexical.logits(tokens.token_ids, tokens.offsets, impl="reference").numpy()
    quality, cost = reference_score(artifact.weights, x, log_lengths(texts).numpy(), manifest.inv_temperature,
                                    offset)
    return quality, cost, x


def rescore_dev(artifact: Artifact, result: dict, dev_ds, *, before: str) -> None:
    """After a training stage changed what `artifact` serves: its dev metrics become the served predictor's,
    in the manifest (`dev_metrics["head"]`) and in result["head"]; the previous ones are kept under `before`
    in both. dev_ds: the dev split with the artifact's models."""
    quality_dev, _, _ = artifact_predictions(artifact, dev_ds.texts)
    metrics = quality_metrics(dev_ds.quality, quality_dev)
    dev_metrics = artifact.manifest.dev_metrics
    dev_metrics[before] = dev_metrics.get("head")
    dev_metrics["head"] = rounded_metrics(metrics)
    result[before], result["head"] = result.get("head"), metrics


def knn_quality(train_x: np.ndarray, train_quality: np.ndarray, test_x: np.ndarray, k: int,
                *, chunk: int = 1024) -> np.ndarray:
    """(n_test, n_models): mean label of the k nearest train prompts by cosine similarity (embeddings are
    L2-normalised); unknown labels are skipped, a model with none among the k gets its train mean."""
    known = ~np.isnan(train_quality)
    labels = np.nan_to_num(train_quality, nan=0.0)
    prior = baselines.per_model_rate(train_quality)
    out = np.empty((len(test_x), train_quality.shape[1]), dtype=np.float32)
    k = min(k, len(train_x))
    for start in range(0, len(test_x), chunk):
        sim = test_x[start:start + chunk] @ train_x.T                      # (chunk, n_train)
        nearest = np.argpartition(-sim, k - 1, axis=1)[:, :k]              # (chunk, k)
        total = labels[nearest].sum(axis=1)                                # (chunk, n_models)
        count = known[nearest].sum(axis=1)
        out[start:start + chunk] = np.where(count > 0, total / np.maximum(count, 1), prior)
    return out


def no_prompt_router(train_quality: np.ndarray, train_cost: np.ndarray, n_prompts: int) -> RouterPredictions:
    """Every prompt alike: each model's train accuracy and mean train cost (the best any fixed mix can do)."""
    return RouterPredictions("no-prompt (per-model mean)",
                             baselines.per_model_mean(train_quality, n_prompts).astype(np.float64),
                             mean_cost(train_cost, n_prompts), "train mean quality and mean cost per model")


def oracle_router(quality: np.ndarray, cost_usd: np.ndarray) -> RouterPredictions:
    """The test labels and realised costs themselves; unlabelled cells are ineligible for every router, and
    the zeros only keep the arrays finite."""
    return RouterPredictions("oracle", np.nan_to_num(quality, nan=0.0), np.nan_to_num(cost_usd, nan=0.0),
                             "true labels and realised costs")


def mean_cost(train_cost: np.ndarray, n_prompts: int) -> np.ndarray:
    """(n_prompts, n_models): each model's mean train cost per prompt (no prompt information)."""
    means = np.nan_to_num(np.nanmean(train_cost, axis=0), nan=0.0)
    return np.broadcast_to(means, (n_prompts, len(means))).astype(np.float64)

