"""The head settings `routoo train --head auto` chooses between, by out-of-fold train frontier AUC.

The default head (TrainConfig: 4 x 64, dropout 0.1, weight decay 1e-4, category smoothing 0.5) was tuned
on mmlu-pro/train; the candidates are the settings that data of another size or pool may want. First seed
(4 folds, seed 0) of out-of-fold frontier AUC from the suite (docs/evaluation.md, "Recipe chosen by CV"):

| candidate           | train-500 | pool-2 | mmlu-pro/train |
| default             | 0.7783    | 0.5995 | 0.7667         |
| half-width          | 0.7850    | 0.5993 | 0.7637         |
| narrow-regularised  | 0.7768    | 0.6013 | 0.7633         |
| smoothed            | 0.7745    | 0.6007 | 0.7681         |

Differences of that size are within what a second seed moves (0.010 for the default on train-500), so a candidate is kept only if
its mean over HEAD_SEEDS seeds (each with its own folds) beats the default's by HEAD_MARGIN *and* it is
ahead on HEAD_CONFIDENCE of the paired bootstrap resamples of the train prompts: the default stays where it
was tuned unless the data clearly says otherwise. A candidate behind the default on the first seed is not
trained again (recipe.train_choosing_recipe) and cannot be kept. Candidates are relative to the given config
(widths scale with --hidden), and never wider than it: batch-1 latency grows with the width (issue 2's
0.3 ms).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from evals.oof import paired_difference
from training.fit import TrainConfig


@dataclass(frozen=True)
class HeadCandidate:
    name: str
    width_factor: float = 1.0                            # x the given hidden width, rounded to the folds
    changes: dict = field(default_factory=dict)          # TrainConfig fields set to these values

    def config(self, base: TrainConfig) -> TrainConfig:
        hidden = max(base.folds, int(round(base.hidden * self.width_factor / base.folds)) * base.folds)
        return replace(base, hidden=hidden, **self.changes)

    def describe(self, base: TrainConfig) -> str:
        cfg = self.config(base)
        parts = [f"hidden {cfg.hidden}"] + [f"{k} {getattr(cfg, k):g}" for k in self.changes]
        return ", ".join(parts)


DEFAULT_HEAD = HeadCandidate("default")
HEAD_CANDIDATES: tuple[HeadCandidate, ...] = (
    DEFAULT_HEAD,
    HeadCandidate("half-width", width_factor=0.5),
    # 500 prompts give each 64-unit member ~375 rows: fewer units and more shrinkage.
    HeadCandidate("narrow-regularised", width_factor=0.25, changes={"dropout": 0.3, "weight_decay": 1e-2,
                                                                     "category_smoothing": 0.8}),
    # Stronger pull to the category rates (mmlu-pro 5-fold CV: 0.7684 against 0.7673 at 0.5).
    HeadCandidate("smoothed", changes={"category_smoothing": 0.8}),
)
HEAD_SEEDS = 2              # seeds (and fold draws) each candidate is trained with for the choice
HEAD_MARGIN = 0.002         # mmlu-pro's seed-to-seed spread of out-of-fold frontier AUC
HEAD_CONFIDENCE = 0.9       # share of paired bootstrap resamples the candidate must lead
BOOTSTRAP = 200             # resamples of the train prompts (~1 s for 8 frontiers on 7,173 prompts)


def head_candidate(name: str) -> HeadCandidate:
    for c in HEAD_CANDIDATES:
        if c.name == name:
            return c
    raise ValueError(f"unknown head candidate {name!r}; choose auto or one of "
                     f"{[c.name for c in HEAD_CANDIDATES]}")


def choose_head(aucs: dict[tuple[str, int], float], boot: np.ndarray, order: list[tuple[str, int]]) -> dict:
    """The kept candidate and each one's figures against the default, from out-of-fold frontier AUCs per
    (candidate, seed) and their paired bootstrap (n_boot, len(order)), columns in `order`."""
    names = list(dict.fromkeys(name for name, _ in order))
    mean_auc = {n: float(np.mean([aucs[k] for k in order if k[0] == n])) for n in names}
    boot_mean = {n: boot[:, [i for i, k in enumerate(order) if k[0] == n]].mean(axis=1) for n in names}
    rows = {}
    for n in names:
        ci95, ahead = paired_difference(boot_mean[n], boot_mean[DEFAULT_HEAD.name])
        rows[n] = {"oof_frontier_auc": round(mean_auc[n], 5),
                   "oof_frontier_auc_per_seed": [round(aucs[k], 5) for k in order if k[0] == n],
                   "minus_default": round(mean_auc[n] - mean_auc[DEFAULT_HEAD.name], 5),
                   "minus_default_ci95": ci95, "ahead_of_default_share": ahead}
    for n in names:
        rows[n]["seeds"] = len(rows[n]["oof_frontier_auc_per_seed"])
    # Only a challenger trained with every seed may be kept (one behind on the first seed is not retrained).
    full = max(row["seeds"] for row in rows.values())
    challengers = [n for n in names if n != DEFAULT_HEAD.name and rows[n]["seeds"] == full]
    best = max(challengers, key=lambda n: mean_auc[n]) if challengers else DEFAULT_HEAD.name
    kept = DEFAULT_HEAD.name
    if best != kept and rows[best]["minus_default"] >= HEAD_MARGIN \
            and rows[best]["ahead_of_default_share"] >= HEAD_CONFIDENCE:
        kept = best
    return {"kept": kept, "best_challenger": best, "candidates": rows}
