"""Growing a trained pool by one model (training/add_model.py): the others unchanged, the new one learnt."""

import numpy as np
import pytest

from predictor_service.artifact import Artifact
from tests.support.predicting import predict_on_cpu
from training.add_model import add_model
from training.metrics import auroc_per_model
from training.price_costs import input_tokens, typical_output_tokens


def test_add_model_keeps_the_others_and_learns_the_new_one(trained, synthetic):
    artifact, _ = trained
    train_ds, dev_ds = synthetic
    base = Artifact(artifact.manifest, artifact.weights, static_encoder=artifact.static_encoder)
    # Fit `lawyer` again under a new name from its labels alone.
    j = train_ds.model_names.index("lawyer")
    grown = add_model(base, "lawyer2", [1.0, 2.0], train_ds.texts, train_ds.quality[:, j], train_ds.cost_usd[:, j])
    assert grown.manifest.model_names[-1] == "lawyer2"
    for name in ("w1", "b1", "quality_emb", "cost_emb"):
        old, new = getattr(artifact.weights, name), getattr(grown.weights, name)
        np.testing.assert_array_equal(new[: old.shape[0]] if name.endswith("emb") else new, old)
    quality, _ = predict_on_cpu(grown, dev_ds.texts)
    assert auroc_per_model(dev_ds.quality[:, [j]], quality[:, [-1]])[0] > 0.95
    with pytest.raises(ValueError, match="already in the pool"):
        add_model(grown, "lawyer2", [1.0, 2.0], train_ds.texts, train_ds.quality[:, j], train_ds.cost_usd[:, j])
    with pytest.raises(ValueError, match=r"model name 'new\\r' holds the character U\+000D"):
        add_model(grown, "new\r", [1.0, 2.0], train_ds.texts, train_ds.quality[:, j], train_ds.cost_usd[:, j])


def test_add_model_without_costs_prices_it_instead_of_calling_it_free(trained, synthetic):
    artifact, _ = trained
    train_ds, dev_ds = synthetic
    j = train_ds.model_names.index("lawyer")
    unknown = np.full(len(train_ds), np.nan)
    grown = add_model(artifact, "priced", [1.0, 2.0], train_ds.texts, train_ds.quality[:, j], unknown)
    assert grown.manifest.training["added_models"][-1]["costs_from_prices"] is True
    _, cost = predict_on_cpu(grown, dev_ds.texts)
    pool = cost[:, :-1]
    # The pool's predicted costs imply so many output tokens a prompt; priced like that, the new model at
    # (1, 2) USD per Mtok costs about what a pool model at the same prices would, and never ~0.
    tokens_out = typical_output_tokens(dev_ds.texts, pool, artifact.manifest.model_prices)
    expected = (input_tokens(dev_ds.texts) * 1.0 + tokens_out * 2.0) / 1e6
    assert 0.7 < cost[:, -1].mean() / expected.mean() < 1.4
    with pytest.raises(ValueError, match="no known cost and no prices"):
        add_model(artifact, "unpriced", [None, None], train_ds.texts, train_ds.quality[:, j], unknown)


def test_labels_all_alike_or_too_few_to_cross_validate_give_no_certainty(trained, synthetic):
    artifact, _ = trained
    train_ds, dev_ds = synthetic
    j = train_ds.model_names.index("lawyer")
    cost = train_ds.cost_usd[:200, j]
    for labels, low, high in ((np.ones(200), 0.9, 0.999), (np.zeros(50), 0.001, 0.1),
                              (np.array([1.0, 1.0]), 0.5, 0.95)):
        grown = add_model(artifact, "alike", [1.0, 2.0], train_ds.texts[:len(labels)], labels, cost[:len(labels)])
        quality, _ = predict_on_cpu(grown, dev_ds.texts)
        # Laplace's rule: near (k + 1) / (n + 2), never exactly 1 or 0.
        assert low < quality[:, -1].min() <= quality[:, -1].max() < high, (len(labels), quality[:, -1].max())
    # One label of each: no fold can be scored, so the middle prior is kept, not the first of the grid.
    grown = add_model(artifact, "two", [1.0, 2.0], train_ds.texts[:2], np.array([1.0, 0.0]), cost[:2])
    assert grown.manifest.training["added_models"][-1]["prior"] == [3.0, 100.0]
