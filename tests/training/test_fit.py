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
