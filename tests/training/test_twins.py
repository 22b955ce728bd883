"""Prompts of the same text share a fold (training.folds.same_text_units, dataset_folds)."""

import dataclasses

import numpy as np

from training.folds import dataset_folds, fold_assignment, same_text_units


def test_twins_are_dealt_as_one_and_distinct_texts_as_before():
    texts = [f"q{i}" for i in range(40)]
    plain = fold_assignment(40, 4, seed=3)
    assert np.array_equal(fold_assignment(40, 4, seed=3, texts=texts), plain)   # no twins: the same folds
    texts[7] = texts[30] = texts[2]                                             # three copies of one text
    units = same_text_units(texts)
    assert units[7] == units[30] == units[2] == 2 and units[3] == 3 and units.max() == 37
    for seed in range(20):
        fold = fold_assignment(40, 4, seed=seed, texts=texts)
        assert fold[7] == fold[30] == fold[2], seed
        assert set(fold.tolist()) == {0, 1, 2, 3}


def test_training_keeps_twins_in_one_fold(synthetic):
    ds = synthetic[0]
    prompts = list(ds.prompts)
    prompts[10:20] = [dataclasses.replace(p, text=twin.text) for p, twin in zip(prompts[10:20], prompts[:10])]
    fold = dataset_folds(dataclasses.replace(ds, prompts=prompts), 4, seed=0)
    assert all(fold[i] == fold[i + 10] for i in range(10))
