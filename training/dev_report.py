"""The dev report of `routoo train`: the trained head's quality metrics beside the per-model-mean and
TF-IDF + LR baselines fitted on the same train split. Dev is only scored here, never trained on."""

from __future__ import annotations

from training import baselines
from training.data import RoutingDataset
from training.metrics import quality_metrics, rounded_metrics


def dev_rows(train_ds: RoutingDataset, dev_ds: RoutingDataset, head_metrics: dict, head_label: str, *,
             tfidf: bool = True) -> dict[str, dict]:
    """{router: quality_metrics on dev}: the head's (as training measured it), then the baselines'."""
    dev_ds = dev_ds.select_models(train_ds.model_names)
    rows = {head_label: head_metrics,
            "per-model mean (no prompt)": quality_metrics(
                dev_ds.quality, baselines.per_model_mean(train_ds.quality, len(dev_ds)))}
    if tfidf:
        rows["tf-idf + logistic reg."] = quality_metrics(
            dev_ds.quality, baselines.tfidf_logistic(train_ds.texts, train_ds.quality, dev_ds.texts))
    return rows


def baseline_record(rows: dict[str, dict], head_label: str) -> dict[str, dict]:
    """The baselines' rows as the manifest's dev_metrics["baselines"] stores them (floats, 5 decimals)."""
    return {k: rounded_metrics(v) for k, v in rows.items() if k != head_label}
