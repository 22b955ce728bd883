"""Training the scoring head on small data (training/fit.py)."""

from tests.support.predicting import predict_on_cpu
from training.metrics import auroc_per_model


def test_training_learns_which_model_knows_which_topic(trained, synthetic):
    artifact, result = trained
    _, dev_ds = synthetic
    auroc = auroc_per_model(dev_ds.quality, predict_on_cpu(artifact, dev_ds.texts)[0])
    assert auroc[0] > 0.95 and auroc[1] > 0.95         # the learnable models
    assert result["head"]["log_loss"] < 0.6
    assert artifact.manifest.model_names == ["math_whiz", "lawyer", "coin"]
    assert artifact.manifest.training["train_digest"] == synthetic[0].digest


def test_expected_cost_follows_length_and_price(trained):
    artifact, _ = trained
    _, cost = predict_on_cpu(artifact, ["short integral?", "long integral? " + "detail " * 38])
    assert (cost[1] > cost[0]).all()                     # longer prompt costs more for every model
    assert cost[0, 1] > cost[0, 0] > cost[0, 2]          # price order of the pool


def test_a_pool_model_without_any_train_label_is_refused_by_name(tmp_path):
    import pytest

    from tests.support.datasets import write_dataset
    from training.data import load_dataset
    from training.fit import TrainConfig, train

    rows = [[f"p{i}", i % 2, None] for i in range(16)]
    prompts = [{"id": f"p{i}", "text": f"question {i}", "category": "c"} for i in range(16)]
    ds = load_dataset(write_dataset(tmp_path / "d", prompts, ["m1", "new-model"], rows))
    with pytest.raises(ValueError, match=r"1 pool model\(s\) have no known score.*\['new-model'\].*add-model"):
        train(ds, None, config=TrainConfig(hidden=8, max_epochs=2), show_progress=False)
