"""Single models as references: each pool model's accuracy and total cost alone, and the *best single
model*, the one every cost is normalised by.

The best single model is the pool model with the highest test accuracy among those labelled on at least
`min_reference_coverage` of the prompts (a model labelled only on easy categories would otherwise win on a
different question set) and costing more than $0. Where no model is labelled on that share, 90% of the
best-labelled model's share is asked (GAPPY_COVERAGE_SHARE)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class SingleModel:
    name: str
    accuracy: float           # over the prompts where it is labelled
    cost_usd: float           # mean labelled cost x all prompts
    coverage: float           # share of prompts labelled


def single_models(names: list[str], quality: np.ndarray, cost_usd: np.ndarray) -> list[SingleModel]:
    n = len(quality)
    out = []
    for j, name in enumerate(names):
        known = ~np.isnan(quality[:, j]) & ~np.isnan(cost_usd[:, j])
        if not known.any():
            continue
        out.append(SingleModel(name, float(quality[known, j].mean()), float(cost_usd[known, j].mean() * n),
                               float(known.mean())))
    return out


# Where every model has gaps, a reference must be labelled on this share of the best-labelled model's
# prompts: random gaps (coverage within a few points of each other) all pass, a model missing whole
# categories (DeepSeek-Coder-V2 on mmlu-pro/dev: 86% against 100%) does not.
GAPPY_COVERAGE_SHARE = 0.9


def coverage_floor(models: list[SingleModel], min_coverage: float) -> float:
    """The share of prompts a reference must be labelled on: `min_coverage`, or where no model that costs
    something reaches it, GAPPY_COVERAGE_SHARE of the best-labelled such model's share."""
    top = max((m.coverage for m in models if m.cost_usd > 0), default=0.0)
    return min_coverage if top >= min_coverage else GAPPY_COVERAGE_SHARE * top


def reference_candidates(models: list[SingleModel], min_coverage: float) -> list[SingleModel]:
    """Models that may be a reference: costing something (costs are normalised by the reference's) and
    labelled on the coverage_floor share of the prompts."""
    if not models:
        raise ValueError("no pool model has both a known score and a known cost on any prompt")
    paid = [m for m in models if m.cost_usd > 0]
    if not paid:
        raise ValueError(f"every pool model costs $0 here, so there is no cost to trade against and none to "
                         f"normalise by: {[m.name for m in models]}")
    floor = coverage_floor(paid, min_coverage)
    return [m for m in paid if m.coverage >= floor]


def best_single(models: list[SingleModel], min_coverage: float) -> SingleModel:
    """The most accurate reference candidate (the cheaper of ties)."""
    return max(reference_candidates(models, min_coverage), key=lambda m: (m.accuracy, -m.cost_usd))


def closed_model(name: str, prefixes: tuple[str, ...]) -> bool:
    return name.lower().startswith(tuple(p.lower() for p in prefixes))
