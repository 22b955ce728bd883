"""Quality-prediction metrics over (n_prompts, n_models) matrices whose unknown labels are NaN."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import roc_auc_score

_EPS = 1e-7
ECE_BINS = 15


def logit(p: np.ndarray, clip: float = 1e-6) -> np.ndarray:
    """float64 log(p / (1 - p)), p clipped to [clip, 1 - clip] so 0 and 1 stay finite."""
    p = np.clip(np.asarray(p, dtype=np.float64), clip, 1 - clip)
    return np.log(p / (1 - p))


def log_loss(quality: np.ndarray, predicted: np.ndarray) -> float:
    known = ~np.isnan(quality)
    y, p = quality[known], np.clip(predicted[known], _EPS, 1 - _EPS)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def expected_calibration_error(quality: np.ndarray, predicted: np.ndarray, bins: int = ECE_BINS) -> float:
    """Equal-width-bin ECE over every known (prompt, model) pair."""
    known = ~np.isnan(quality)
    y, p = quality[known], predicted[known]
    which = np.minimum((p * bins).astype(np.int64), bins - 1)
    total = 0.0
    for b in range(bins):
        in_bin = which == b
        if in_bin.any():
            total += in_bin.sum() * abs(y[in_bin].mean() - p[in_bin].mean())
    return float(total / max(len(y), 1))


def auroc_per_model(quality: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """(n_models,) AUROC of the predicted quality; NaN for a model whose labels are all one class."""
    out = np.full(quality.shape[1], np.nan)
    for m in range(quality.shape[1]):
        known = ~np.isnan(quality[:, m])
        y = quality[known, m] >= 0.5
        if 0 < y.sum() < len(y):
            out[m] = roc_auc_score(y, predicted[known, m])
    return out


def rounded_metrics(metrics: dict, digits: int = 5) -> dict:
    """The float figures of a metrics dict at `digits` decimals (what artifacts and reports store); the
    per-model lists are left out."""
    return {k: round(v, digits) for k, v in metrics.items() if isinstance(v, float)}


def json_floats(values) -> list[float]:
    """JSON-ready floats at 6 significant digits (4x the resolution any figure here is quoted at)."""
    return [float(f"{v:.6g}") for v in np.asarray(values, dtype=float)]


def quality_metrics(quality: np.ndarray, predicted: np.ndarray) -> dict:
    auroc = auroc_per_model(quality, predicted)
    return {"log_loss": log_loss(quality, predicted),
            "ece": expected_calibration_error(quality, predicted),
            "auroc_mean": float(np.nanmean(auroc)) if np.isfinite(auroc).any() else float("nan"),
            "auroc_per_model": [None if np.isnan(a) else round(float(a), 4) for a in auroc]}
