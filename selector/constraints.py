"""A request's constraints: which models of the pool it may be routed to, and why the others may not. Pure
numpy, no gRPC.

Scores arrive as `expected_cost_usd`, (batch, n_models) arrays in pool order. `exclusions` gives every
model a code: ELIGIBLE, or the first constraint that excludes it.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np

from selector.pool import Pool


class InvalidRequest(ValueError):
    """A request field with a bad value; `field` is its API name (e.g. "tradeoff.quality_per_usd")."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field


class NoEligibleModel(ValueError):
    """The constraints exclude every model; the message says which constraints did it."""


# Why a model is excluded, checked in this order; a model excluded for several reasons shows the first.
ELIGIBLE, DISABLED, NOT_ALLOWED, DENIED, TOO_SLOW, TOO_EXPENSIVE = range(6)
_EXCLUDED_BY = {DISABLED: "the pool file (enabled = false)", NOT_ALLOWED: "constraints.allow",
                DENIED: "constraints.deny", TOO_SLOW: "constraints.max_latency_ms",
                TOO_EXPENSIVE: "constraints.max_cost_usd"}


@dataclass(frozen=True)
class Constraints:
    allow: tuple[str, ...] = ()            # only these models; empty = every enabled model
    deny: tuple[str, ...] = ()
    max_latency_ms: float | None = None    # against the pool file's p95 latency
    max_cost_usd: float | None = None      # against each prompt's expected cost

    def validate(self, pool: Pool) -> None:
        known = set(pool.names)
        for field, names in (("constraints.allow", self.allow), ("constraints.deny", self.deny)):
            unknown = [n for n in names if n not in known]
            if unknown:
                raise InvalidRequest(field, f"unknown model(s) {unknown}; valid models are {pool.names}")
        for field, value in (("constraints.max_latency_ms", self.max_latency_ms),
                             ("constraints.max_cost_usd", self.max_cost_usd)):
            if value is not None and not value >= 0:
                raise InvalidRequest(field, f"must be a number >= 0 (or unset for no limit), got {value}")

    def exclusions(self, pool: Pool, expected_cost_usd: np.ndarray) -> np.ndarray:
        """(batch, n_models) codes: ELIGIBLE, or the first constraint that excludes the model."""
        static = np.where(pool.enabled, ELIGIBLE, DISABLED).astype(np.int8)   # (n_models,)
        names = pool.names
        if self.allow:
            allow = set(self.allow)
            static[(static == ELIGIBLE) & ~np.array([n in allow for n in names])] = NOT_ALLOWED
        if self.deny:
            deny = set(self.deny)
            static[(static == ELIGIBLE) & np.array([n in deny for n in names])] = DENIED
        if self.max_latency_ms is not None:
            static[(static == ELIGIBLE) & (pool.p95_latency_ms > self.max_latency_ms)] = TOO_SLOW
        codes = np.broadcast_to(static, expected_cost_usd.shape).copy()       # (batch, n_models)
        if self.max_cost_usd is not None:
            codes[(codes == ELIGIBLE) & (expected_cost_usd > self.max_cost_usd)] = TOO_EXPENSIVE
        return codes

    def exclusions_one(self, pool: Pool, expected_cost_usd: np.ndarray) -> list[int]:
        """exclusions() of one prompt ((n_models,) costs) as a list: plain Python over a pool of tens of
        models is several times faster than the array version, which Route paid on every call."""
        allow, deny, max_latency_ms = set(self.allow), set(self.deny), self.max_latency_ms
        codes = []
        for model in pool.models:
            if not model.enabled:
                codes.append(DISABLED)
            elif allow and model.name not in allow:
                codes.append(NOT_ALLOWED)
            elif model.name in deny:
                codes.append(DENIED)
            elif max_latency_ms is not None and model.p95_latency_ms > max_latency_ms:
                codes.append(TOO_SLOW)
            else:
                codes.append(ELIGIBLE)
        if self.max_cost_usd is not None:
            # The same comparison as exclusions(), in the costs' own dtype (float32 from Triton).
            over = (expected_cost_usd > self.max_cost_usd).tolist()
            codes = [TOO_EXPENSIVE if code == ELIGIBLE and o else code for code, o in zip(codes, over)]
        return codes

    def reason(self, code: int, pool: Pool, model: int, expected_cost_usd: float) -> str:
        """Why model `model` is excluded, naming the constraint and the numbers."""
        if code == TOO_SLOW:
            return (f"constraints.max_latency_ms: p95 latency {pool.models[model].p95_latency_ms:g} ms > "
                    f"{self.max_latency_ms:g} ms")
        if code == TOO_EXPENSIVE:
            return f"constraints.max_cost_usd: expected cost ${expected_cost_usd:.3g} > ${self.max_cost_usd:.3g}"
        return {DISABLED: "disabled in the pool file", NOT_ALLOWED: "constraints.allow: not in the allow list",
                DENIED: "constraints.deny: in the deny list"}[code]


def require_eligible(codes: np.ndarray, constraints: Constraints) -> np.ndarray:
    """The (batch, n_models) eligible mask; raises NoEligibleModel if a row has none, naming the constraints."""
    eligible = codes == ELIGIBLE
    empty = np.flatnonzero(~eligible.any(axis=1))
    if empty.size:
        row = codes[empty[0]]
        settings = {TOO_SLOW: f"={constraints.max_latency_ms:g}" if constraints.max_latency_ms is not None else "",
                    TOO_EXPENSIVE: f"={constraints.max_cost_usd:g}" if constraints.max_cost_usd is not None else ""}
        culprits = ", ".join(f"{_EXCLUDED_BY[code]}{settings.get(code, '')} excludes {count}"
                             for code, count in sorted(Counter(int(c) for c in row).items()))
        where = f" for {empty.size} of {len(codes)} prompts (first: prompt {empty[0]})" if len(codes) > 1 else ""
        raise NoEligibleModel(f"no model of the {row.size} in the pool satisfies the constraints{where}: {culprits}")
    return eligible
