"""Out-of-fold logits at an epoch fold k's labels did not choose (training.fit, recipe step 3)."""

import numpy as np

from training.fit import TrainConfig, fit_member, out_of_fold_epochs, train


def test_each_fold_takes_the_median_of_the_other_members_best_epochs_capped_by_its_run():
    # Member 0 stopped at epoch 20 (ran 21): the others' median, 30, is past its run, so its last epoch.
    assert out_of_fold_epochs([10, 20, 30, 40], [21, 31, 41, 51]) == [20, 30, 20, 20]
    assert out_of_fold_epochs([7, 3], [18, 14]) == [3, 7]


def test_member_weights_of_every_epoch_are_kept_and_the_best_is_served(synthetic):
    ds = synthetic[0]
    x = np.random.default_rng(0).normal(size=(len(ds), 8)).astype(np.float32)
    half = len(ds) // 2
    config = TrainConfig(hidden=8, folds=2, max_epochs=15, patience=3)
    model, ran, best, states = fit_member(x[:half], ds.quality[:half], x[half:], ds.quality[half:], config,
                                          seed=0, show_progress=False)
    assert len(states) == ran and 0 <= best < ran
    assert ran == config.max_epochs or ran == best + config.patience + 1
    for key, value in model.state_dict().items():
        assert np.array_equal(value.numpy(), states[best][key].numpy()), key


def test_manifest_records_the_epochs_that_scored_each_fold(synthetic):
    ds = synthetic[0]
    artifact, result = train(ds, None, config=TrainConfig(hidden=12, folds=3, max_epochs=20),
                             show_progress=False)
    training = artifact.manifest.training
    assert len(training["out_of_fold_epochs"]) == 3
    assert all(1 <= e <= ran for e, ran in zip(training["out_of_fold_epochs"], training["epochs"]))
    assert np.isfinite(result["oof_quality"]).all()
