"""SLO search: the highest offered rate at which p99 latency stays under a bound, per target.

Each probe is one open-loop run (bench.loadgen.open_loop) at a fixed Poisson rate. A probe passes when the
p99 over every offered request, with dropped, failed and timed-out requests counted as infinitely slow,
is at most the bound: a server that sheds load does not pass by shedding it.

The search brackets the boundary geometrically (x2 up from a passing rate, /2 down from a failing one)
and then bisects on a log scale until the bracket is narrower than `resolution` or the probes run out.
Latency is not strictly monotone in the rate on a noisy machine; the result is the highest rate that
passed with every probe above it failing, and all probes are kept for the plot.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Awaitable, Callable

from bench.loadgen import RunResult

Measure = Callable[[float], Awaitable[RunResult]]


@dataclass
class RateProbe:
    rate: float
    passed: bool
    summary: dict          # RunResult.summary() of the probe


@dataclass
class SloResult:
    bound_ms: float
    max_rate: float | None                 # highest passing offered rate; None if even min_rate failed
    probes: list[RateProbe] = field(default_factory=list)
    note: str = ""

    def as_dict(self) -> dict:
        return {"bound_ms": self.bound_ms, "max_rate": None if self.max_rate is None else round(self.max_rate, 2),
                "note": self.note,
                "probes": [{"rate": round(p.rate, 2), "passed": p.passed, **p.summary}
                           for p in sorted(self.probes, key=lambda p: p.rate)]}


def passes(result: RunResult, bound_ms: float) -> bool:
    return result.scheduled > 0 and result.slo_percentile_ms(99) <= bound_ms


async def search_max_rate(measure: Measure, *, bound_ms: float, start_rate: float, min_rate: float,
                          max_rate: float, max_probes: int = 8, resolution: float = 1.15) -> SloResult:
    """Highest rate in [min_rate, max_rate] whose probe passes; `measure(rate)` runs one open-loop probe."""
    if not 0 < min_rate <= max_rate:
        raise ValueError(f"need 0 < min_rate <= max_rate, got {min_rate}, {max_rate}")
    if max_probes < 1:
        raise ValueError(f"max_probes must be >= 1, got {max_probes}")
    if resolution <= 1:
        raise ValueError(f"resolution must be > 1, got {resolution}")
    out = SloResult(bound_ms, None)
    lo: float | None = None      # highest passing rate so far
    hi: float | None = None      # lowest failing rate above lo

    async def probe(rate: float) -> bool:
        result = await measure(rate)
        ok = passes(result, bound_ms)
        out.probes.append(RateProbe(rate, ok, result.summary()))
        return ok

    rate = min(max(start_rate, min_rate), max_rate)
    while len(out.probes) < max_probes:
        if await probe(rate):
            lo = rate if lo is None else max(lo, rate)
            if hi is not None and hi <= lo:
                hi = None          # noise: a rate above an earlier failure passed; re-open the top
        else:
            hi = rate if hi is None else min(hi, rate)
            if lo is not None and lo >= hi:
                lo = None          # noise the other way; search below again
        if lo is None:
            if rate <= min_rate:
                out.note = f"even {min_rate:g}/s missed p99 <= {bound_ms:g} ms"
                break
            rate = max(min_rate, hi / 2)
        elif hi is None:
            if rate >= max_rate:
                out.note = f"the highest rate tried ({max_rate:g}/s) still met the bound"
                break
            rate = min(max_rate, lo * 2)
        else:
            if hi / lo <= resolution:
                break
            rate = math.sqrt(lo * hi)
    out.max_rate = lo
    return out
