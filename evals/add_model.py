"""`routoo eval-add-model`: how well `add_model` (training/fit.py) brings a model into a trained head from a
few labelled prompts, against the head trained with all the data."""

from __future__ import annotations

import numpy as np

from evals.routers import artifact_predictions
from predictor_service.artifact import Artifact
from training.data import RoutingDataset
from training.add_model import add_model
from training.fit import TrainConfig, train
from training.metrics import auroc_per_model


def add_model_experiment(train_ds: RoutingDataset, test_ds: RoutingDataset, model: str, *,
                         encoder_name: str, full_artifact: Artifact | None = None,
                         sizes: tuple[int, ...] = (50, 200, 1000), repeats: int = 5,
                         train_config: TrainConfig | None = None, seed: int = 0,
                         show_progress: bool = True) -> dict:
    """Drops `model` from training, adds it back from n of its labelled train prompts (`add_model`, every
    other row frozen), and measures its test AUROC against the head trained with all data."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    if model not in train_ds.model_names or model not in test_ds.model_names:
        raise ValueError(f"model {model!r} must be in both datasets; train has {train_ds.model_names}")
    others = [n for n in train_ds.model_names if n != model]
    j = train_ds.model_names.index(model)
    test_j = test_ds.model_names.index(model)
    y_test = test_ds.quality[:, [test_j]]
    if train_config is None and full_artifact is not None:
        # Train the model-less head exactly like the reference one.
        recorded = full_artifact.manifest.training.get("config", {})
        known = set(TrainConfig.__dataclass_fields__)
        train_config = TrainConfig(**{k: v for k, v in recorded.items() if k in known})
    if full_artifact is None or full_artifact.manifest.encoder != encoder_name:
        full_artifact, _ = train(train_ds, None, encoder_name=encoder_name, config=train_config,
                                 show_progress=show_progress)
    full_q, _, _ = artifact_predictions(full_artifact, test_ds.texts)
    full_auroc = float(auroc_per_model(y_test, full_q[:, [full_artifact.manifest.model_names.index(model)]])[0])
    without, _ = train(train_ds.select_models(others), None, encoder_name=encoder_name, config=train_config,
                       show_progress=show_progress)
    labelled = np.flatnonzero(~np.isnan(train_ds.quality[:, j]))
    pool_model = train_ds.pool[j]
    prices = [pool_model.input_usd_per_mtok, pool_model.output_usd_per_mtok]
    rows = []
    for size in [*sizes, len(labelled)]:
        aurocs = []
        for r in range(repeats if size < len(labelled) else 1):
            pick = np.random.default_rng(seed + r).permutation(labelled)[:size]
            added = add_model(without, model, prices, [train_ds.prompts[i].text for i in pick],
                              train_ds.quality[pick, j], train_ds.cost_usd[pick, j])
            q, _, _ = artifact_predictions(added, test_ds.texts)
            aurocs.append(float(auroc_per_model(y_test, q[:, [-1]])[0]))
        rows.append({"n_labelled": int(min(size, len(labelled))), "auroc_mean": float(np.mean(aurocs)),
                     "auroc_std": float(np.std(aurocs)), "repeats": len(aurocs)})
    return {"model": model, "encoder": encoder_name, "full_training_auroc": full_auroc, "add_model": rows,
            "n_test_labelled": int((~np.isnan(y_test)).sum())}


def format_add_model(result: dict) -> str:
    lines = [f"add-model: {result['model']} dropped from training, added back ({result['encoder']} encoder; "
             f"test AUROC over {result['n_test_labelled']} labelled prompts)",
             f"{'labelled prompts':<22}{'AUROC':>8}{'+/- std':>9}{'repeats':>9}"]
    for row in result["add_model"]:
        lines.append(f"{row['n_labelled']:<22}{row['auroc_mean']:>8.4f}{row['auroc_std']:>9.4f}{row['repeats']:>9}")
    lines.append(f"{'full training':<22}{result['full_training_auroc']:>8.4f}")
    return "\n".join(lines)
