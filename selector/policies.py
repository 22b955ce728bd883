"""Routing policies: one rule with one parameter each, in a name registry. Pure numpy, no gRPC.

Scores arrive as `quality` and `expected_cost_usd`, (batch, n_models) arrays in pool order; `eligible` is
the (batch, n_models) mask the constraints leave (selector/constraints.py). A policy orders the models of
each row; the first eligible one is the decision. The budgeted assignment of a whole batch is
selector/budget.py.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import ClassVar, Iterator

import numpy as np

from selector.constraints import ELIGIBLE, Constraints, InvalidRequest
from selector.pool import Pool


class Policy(ABC):
    """One routing rule with one parameter. Subclasses give the order of preference; `select` is shared."""

    name: ClassVar[str]
    parameter: ClassVar[str]     # the API field of the parameter, used in error messages

    def __init__(self, value: float):
        value = float(value) + 0.0     # -0.0 -> 0.0, which describe() would show as "-0"
        problem = self._check(value)
        if problem:
            raise InvalidRequest(f"{self.name}.{self.parameter}", f"{problem}, got {value}")
        self.value = value

    @staticmethod
    @abstractmethod
    def _check(value: float) -> str | None:
        """What is wrong with the parameter value, or None."""

    @abstractmethod
    def _sort_keys(self, quality: np.ndarray, expected_cost_usd: np.ndarray) -> Iterator[np.ndarray]:
        """(batch, n_models) keys, most significant first; smaller sorts first. A generator, so that
        choose() computes the later keys only when ties need them."""

    def order(self, quality: np.ndarray, expected_cost_usd: np.ndarray, eligible: np.ndarray) -> np.ndarray:
        """(batch, n_models) model indices, most preferred first; ineligible models sort last."""
        quality = np.asarray(quality, dtype=np.float64)
        expected_cost_usd = np.asarray(expected_cost_usd, dtype=np.float64)
        keys = (~np.asarray(eligible, dtype=bool), *self._sort_keys(quality, expected_cost_usd))
        return np.lexsort(keys[::-1], axis=-1)   # lexsort treats its last key as the primary one

    def choose(self, quality: np.ndarray, expected_cost_usd: np.ndarray, eligible: np.ndarray) -> np.ndarray:
        """(batch,) index of the chosen model per row: order(...)[:, 0] without sorting whole rows.

        Keeps each row's best candidates key by key and stops once every row has one left (usually after
        the first key): ~10x faster than the lexsort on 10,000 x 32. Every row needs an eligible model.
        """
        quality = np.asarray(quality, dtype=np.float64)
        expected_cost_usd = np.asarray(expected_cost_usd, dtype=np.float64)
        candidates = np.array(eligible, dtype=bool)
        for key in self._sort_keys(quality, expected_cost_usd):
            if not candidates.all():
                key = np.where(candidates, key, np.inf)
            candidates &= key == key.min(axis=1, keepdims=True)
            if not (np.count_nonzero(candidates, axis=1) > 1).any():
                break
        return candidates.argmax(axis=1)      # the first index among exact ties, as lexsort's stable order

    def select(self, quality: np.ndarray, expected_cost_usd: np.ndarray, eligible: np.ndarray) -> np.ndarray:
        """One prompt, (n_models,) arrays: the eligible models in order of preference; [0] is the decision."""
        ranking = self.order(quality[None, :], expected_cost_usd[None, :], eligible[None, :])[0]
        return ranking[: int(eligible.sum())]

    def rank(self, quality: list[float], expected_cost_usd: list[float], eligible: list[int]) -> list[int]:
        """select() for one prompt on Python floats: the `eligible` indices (ascending) in order of preference.

        The keys of _key are those of _sort_keys, compared as tuples in float64 as order() does, and both sorts
        are stable, so the order is the same; plain Python beats numpy's per-call overhead at tens of models.
        """
        key = self._key
        return sorted(eligible, key=lambda j: key(quality[j], expected_cost_usd[j]))

    @abstractmethod
    def _key(self, quality: float, expected_cost_usd: float) -> tuple:
        """One model's sort keys, as _sort_keys gives them for arrays."""

    def describe(self) -> str:
        return f"{self.name}({self.parameter}={self.value:g})"


class TradeoffPolicy(Policy):
    """Maximise quality - lambda x expected cost; lambda = quality points one dollar is worth."""

    name = "tradeoff"
    parameter = "quality_per_usd"

    @staticmethod
    def _check(value: float) -> str | None:
        return None if math.isfinite(value) and value >= 0 else "lambda must be a finite number >= 0"

    def _sort_keys(self, quality, expected_cost_usd):
        # Ties in utility go to the cheaper model, which keeps cost non-increasing as lambda grows.
        yield -(quality - self.value * expected_cost_usd)
        yield expected_cost_usd
        yield -quality

    def _key(self, quality, expected_cost_usd):
        return -(quality - self.value * expected_cost_usd), expected_cost_usd, -quality


class QualityTargetPolicy(Policy):
    """The cheapest model whose predicted quality reaches tau; if none does, the best one."""

    name = "quality_target"
    parameter = "tau"

    @staticmethod
    def _check(value: float) -> str | None:
        return None if 0 <= value <= 1 else "tau must be in [0, 1]"

    def _sort_keys(self, quality, expected_cost_usd):
        meets = quality >= self.value
        yield ~meets
        yield np.where(meets, expected_cost_usd, -quality)
        yield np.where(meets, -quality, expected_cost_usd)

    def _key(self, quality, expected_cost_usd):
        if quality >= self.value:
            return False, expected_cost_usd, -quality
        return True, -quality, expected_cost_usd


class CostCapPolicy(Policy):
    """The best predicted quality among models expected to cost at most the cap; if none fits, the cheapest."""

    name = "cost_cap"
    parameter = "cap_usd"

    @staticmethod
    def _check(value: float) -> str | None:
        return None if value >= 0 else "the cap must be a number >= 0"

    def _sort_keys(self, quality, expected_cost_usd):
        fits = expected_cost_usd <= self.value
        yield ~fits
        yield np.where(fits, -quality, expected_cost_usd)
        yield np.where(fits, expected_cost_usd, -quality)

    def _key(self, quality, expected_cost_usd):
        if expected_cost_usd <= self.value:
            return False, -quality, expected_cost_usd
        return True, expected_cost_usd, -quality


POLICIES: dict[str, type[Policy]] = {cls.name: cls for cls in (TradeoffPolicy, QualityTargetPolicy, CostCapPolicy)}


def make_policy(name: str, value: float) -> Policy:
    try:
        cls = POLICIES[name]
    except KeyError as e:
        raise InvalidRequest("policy", f"unknown policy {name!r}; valid policies are {sorted(POLICIES)}") from e
    return cls(value)


def rank_rows(policy: Policy, constraints: Constraints, pool: Pool, quality: np.ndarray,
              expected_cost_usd: np.ndarray) -> tuple[list[list[int]], list[list[int]]]:
    """Route's decision for many prompts at once: per row, the exclusion codes and the eligible models in
    order of preference, as exclusions_one() and rank() give them one row at a time (the property test in
    tests/test_policies.py holds them equal). (batch, n_models) inputs; a row with no eligible model gets an
    empty ranking. One lexsort over a coalesced batch of 12 rows x 32 models replaces 12 sorts with a
    Python key each; a single row is still cheaper one at a time."""
    codes = constraints.exclusions(pool, expected_cost_usd)          # (batch, n_models)
    eligible = codes == ELIGIBLE
    order = policy.order(quality, expected_cost_usd, eligible)        # ineligible models sort last
    counts = np.count_nonzero(eligible, axis=1).tolist()
    return codes.tolist(), [row[:k] for row, k in zip(order.tolist(), counts)]
