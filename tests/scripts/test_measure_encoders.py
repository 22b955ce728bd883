"""scripts/measure_encoders.py hands a candidate encoder to training.fit.train: the head it trains must be the
one the served path trains on the same embeddings, and train() must get its own encoder back afterwards. Its
paired out-of-fold comparison must read a copy as a tie and the labels themselves as ahead."""

from types import SimpleNamespace

import numpy as np
import torch

import training.fit as fit
from scripts.measure_encoders import _Candidate, compare_out_of_fold, training_on
from training.fit import TrainConfig, train


class _Renamed(_Candidate):
    """The static encoder under another name: the embeddings of the served path, through the candidate's."""

    name = "static-renamed"

    def __init__(self, static):
        self.static, self.dim = static, static.dim

    def encode(self, texts):
        return self.static.encode(texts)


def test_a_candidate_trains_the_head_the_served_path_trains(synthetic):
    train_ds, dev_ds = synthetic
    config = TrainConfig(hidden=12, folds=3, max_epochs=15)
    served, served_result = train(train_ds, dev_ds, config=config, show_progress=False)
    before = fit.training_encoder, fit.encoder_record
    with training_on(_Renamed(fit.training_encoder("static"))):
        measured, measured_result = train(train_ds, dev_ds, config=config, show_progress=False)
    assert (fit.training_encoder, fit.encoder_record) == before
    assert measured.manifest.encoder == "static-renamed"
    assert measured.manifest.encoder_files == {"measured_only": "static-renamed"}
    for name, value in served.weights.as_dict().items():
        assert torch.equal(value, measured.weights.as_dict()[name]), name
    assert np.array_equal(served_result["x_dev"], measured_result["x_dev"])


def test_the_paired_comparison_reads_a_copy_as_a_tie_and_the_labels_as_ahead():
    # Four models, dearer ones more often right: routing by the labels beats any fixed choice.
    rng = np.random.default_rng(0)
    quality = (rng.random((400, 4)) < [0.3, 0.5, 0.7, 0.9]).astype(np.float64)
    cost = np.array([1.0, 2.0, 4.0, 8.0]) * 1e-4 * rng.uniform(0.8, 1.2, (400, 1))
    prompts = SimpleNamespace(quality=quality, cost_usd=cost, model_names=["a", "b", "c", "d"])
    base = np.broadcast_to(quality.mean(axis=0), quality.shape).copy()
    out = compare_out_of_fold({"base": base, "copy": base.copy(), "labels": quality}, prompts, n_boot=50)
    assert out["copy"]["minus_base"] == 0 and out["copy"]["ci95"] == [0, 0] and out["copy"]["ahead_share"] == 0
    assert out["labels"]["minus_base"] > 0 and out["labels"]["ci95"][0] > 0 and out["labels"]["ahead_share"] == 1
