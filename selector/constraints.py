"""A request's constraints: which models of the pool it may be routed to, and why the others may not. Pure
numpy, no gRPC.

Scores arrive as `expected_cost_usd`, (batch, n_models) arrays in pool order (or (n_models,) for one
prompt). `exclusions` gives every model a code: ELIGIBLE, or the first constraint that excludes it.
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
            unknown = list(dict.fromkeys(n for n in names if n not in known))      # each once, in order
            if unknown:
                shown = unknown if len(unknown) <= 8 else [*unknown[:8], f"... {len(unknown) - 8} more"]
                raise InvalidRequest(field, f"unknown model(s) {shown}; valid models are {pool.names}")
        for field, value in (("constraints.max_latency_ms", self.max_latency_ms),
                             ("constraints.max_cost_usd", self.max_cost_usd)):
            if value is not None and not value >= 0:
                raise InvalidRequest(field, f"must be a number >= 0 (or unset for no limit), got {value}")

    def exclusions(self, pool: Pool, expected_cost_usd: np.ndarray) -> np.ndarray:
        """Codes of the shape of `expected_cost_usd` ((batch, n_models) or (n_models,)), int8: ELIGIBLE, or
        the first constraint that excludes the model."""
        static = np.array(self._static_codes(pool), dtype=np.int8)               # (n_models,)
        if self.max_cost_usd is None:
            return np.broadcast_to(static, np.shape(expected_cost_usd)).copy()
        return np.where((static == ELIGIBLE) & self._too_expensive(expected_cost_usd),
                        np.int8(TOO_EXPENSIVE), static)

    def exclusions_one(self, pool: Pool, expected_cost_usd: np.ndarray) -> list[int]:
        """exclusions() of one prompt ((n_models,) costs) as a list, from the same two rules (_static_codes,
        _too_expensive) without the arrays: on one row of tens of models numpy's per-call overhead dominates
        (Route's whole one-prompt decision: 9-11 us against 20-25 us as a batch of one on 32 models,
        bench/test_micro.py::test_route_one_prompt_decision_x64)."""
        codes = self._static_codes(pool)
        if self.max_cost_usd is None:
            return codes
        too_expensive = self._too_expensive(expected_cost_usd).tolist()
        return [TOO_EXPENSIVE if code == ELIGIBLE and over else code for code, over in zip(codes, too_expensive)]

    def _static_codes(self, pool: Pool) -> list[int]:
        """(n_models,) codes of the constraints that need no scores, in the order of the codes."""
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
        return codes

    def _too_expensive(self, expected_cost_usd: np.ndarray) -> np.ndarray:
        # In float64, for one prompt as for a batch: against float32 costs (Triton's) numpy would round the
        # cap to float32 too, and a cost just above the cap could pass it.
        return np.asarray(expected_cost_usd, dtype=np.float64) > self.max_cost_usd

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
