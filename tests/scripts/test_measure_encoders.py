"""scripts/measure_encoders.py hands a candidate encoder to training.fit.train: the head it trains must be the
one the served path trains on the same embeddings, and train() must get its own encoder back afterwards."""

import numpy as np
import torch

import training.fit as fit
from scripts.measure_encoders import _Candidate, training_on
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
