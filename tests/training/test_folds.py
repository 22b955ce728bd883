"""Folds by category (training.folds.fold_assignment with groups, `scripts/run_suite.py --fold-by category`): whole
categories per fold, recorded in the manifest, and the same folds reused by the later stages."""

import numpy as np
import pytest

from training.fit import TrainConfig, train
from training.folds import fold_assignment, train_folds


def test_categories_stay_whole_and_every_fold_gets_some():
    rng = np.random.default_rng(0)
    groups = [f"c{int(g)}" for g in rng.integers(0, 10, 500)]
    fold = fold_assignment(len(groups), 4, seed=1, groups=groups)
    for g in set(groups):
        assert len({int(f) for f, h in zip(fold, groups) if h == g}) == 1, g
    sizes = np.bincount(fold, minlength=4)
    assert (sizes > 0).all() and sizes.max() < 0.5 * len(groups)      # dealt to the lightest fold
    assert np.array_equal(fold, fold_assignment(len(groups), 4, seed=1, groups=groups))   # seeded


def test_fewer_categories_than_folds_is_a_clear_error():
    with pytest.raises(ValueError, match="at least 4 categories.*have 3"):
        fold_assignment(6, 4, seed=0, groups=["a", "b", "c", "a", "b", "c"])


def test_train_by_category_records_it_and_later_stages_reuse_its_folds(synthetic):
    ds = synthetic[0]
    config = TrainConfig(hidden=12, folds=3, max_epochs=20)
    artifact, result = train(ds, None, config=config, show_progress=False, fold_by="category")
    training = artifact.manifest.training
    assert training["fold_by"] == "category"
    fold = train_folds(ds, training)
    categories = np.array([p.category for p in ds.prompts])
    assert all(len(set(fold[categories == c])) == 1 for c in set(categories))
    assert len(set(fold)) == 3
    # Random folds are the default and leave the manifest as it was (no fold_by key).
    plain, _ = train(ds, None, config=config, show_progress=False)
    assert "fold_by" not in plain.manifest.training
    assert len(set(train_folds(ds, plain.manifest.training)[categories == "math"])) == 3
    with pytest.raises(ValueError, match="fold_by must be one of"):
        train(ds, None, config=config, show_progress=False, fold_by="topic")
