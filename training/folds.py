"""How train prompts are dealt to the ensemble's folds (training/fit.py step 3): by prompt, twins kept
together, or by category; add-model, the lexical part and the recipe checks reuse the same folds."""

from __future__ import annotations

import numpy as np

from training.data import RoutingDataset


# How prompts are dealt to the ensemble's folds. "prompt" (the recipe's): a seeded permutation, so every fold
# holds every topic. "category": whole categories per fold, so every out-of-fold figure is on topics the
# member never saw, a train-only view of traffic that brings new subjects (mmlu-pro/train out-of-fold
# frontier AUC 0.767 -> 0.744; the head and TF-IDF + LR level, as on the suite's held-out categories).
# A diagnostic, not a recipe: members that never fit whole categories serve a weaker head (suite, default
# recipe by prompt -> by category: mmlu-pro/dev 0.8014 -> 0.7929, heldout-cats 0.8325 -> 0.8306;
# `scripts/run_suite.py --fold-by category`, docs/evaluation.md "Held-out categories").
FOLD_BY = ("prompt", "category")


def fold_assignment(n: int, folds: int, seed: int, groups: list[str] | None = None,
                    texts: list[str] | None = None) -> np.ndarray:
    """(n,) fold index of each prompt: a seeded permutation dealt round-robin; with `groups` (one label
    per prompt), whole groups, in a seeded order, each to the fold with the fewest prompts so far.
    With `texts`, prompts of the same text are dealt as one (same_text_units); without twins the folds
    are the same as without `texts`."""
    folds = max(2, min(folds, n))
    if groups is None:
        unit = np.arange(n) if texts is None else same_text_units(texts)
        n_units = int(unit.max()) + 1 if n else 0
        fold_of = np.empty(n_units, dtype=np.int64)
        fold_of[np.random.default_rng(seed).permutation(n_units)] = np.arange(n_units) % folds
        return fold_of[unit]
    labels, index = np.unique(np.asarray(groups, dtype=str), return_inverse=True)
    if len(labels) < folds:
        raise ValueError(f"folds by category need at least {folds} categories (one per fold), the train "
                         f"prompts have {len(labels)}: {sorted(labels)[:8]}")
    sizes, load = np.bincount(index), np.zeros(folds, np.int64)
    fold_of = np.empty(len(labels), np.int64)
    for g in np.random.default_rng(seed).permutation(len(labels)):
        fold_of[g] = int(np.argmin(load))
        load[fold_of[g]] += sizes[g]
    return fold_of[index]


def same_text_units(texts: list[str]) -> np.ndarray:
    """(n,) index of each prompt's text among the distinct texts, numbered by first appearance. Twins (the
    same text under two ids: 59 pairs in mmlu-pro/train, agreeing on 97.6% of labels) then share a fold;
    dealt apart, one twin's labels scored the other out of fold (their out-of-fold log loss 0.6027 against
    0.6173 kept together)."""
    first: dict[str, int] = {}
    return np.fromiter((first.setdefault(t, len(first)) for t in texts), dtype=np.int64, count=len(texts))


def dataset_folds(train_ds: RoutingDataset, folds: int, seed: int, fold_by: str = "prompt") -> np.ndarray:
    """(n,) fold of each train prompt, dealt as `fold_by` (FOLD_BY) says, twins kept together: the one place
    that turns the choice into folds, for train() and for the stages after it (train_folds)."""
    if fold_by not in FOLD_BY:
        raise ValueError(f"fold_by must be one of {FOLD_BY}, got {fold_by!r}")
    if fold_by == "category":
        return fold_assignment(len(train_ds), folds, seed, [p.category for p in train_ds.prompts])
    return fold_assignment(len(train_ds), folds, seed, texts=train_ds.texts)


def train_folds(train_ds: RoutingDataset, training: dict) -> np.ndarray:
    """The folds an artifact's head was trained on, from its manifest.training record, so later stages
    (lexical part, TF-IDF check) score out of fold on the same prompts."""
    return dataset_folds(train_ds, int(training.get("folds", 4)), int(training.get("config", {}).get("seed", 0)),
                         training.get("fold_by", "prompt"))
