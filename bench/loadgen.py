"""Load generation on one asyncio event loop: closed loop (N clients) and open loop (Poisson arrivals).

- Closed loop: N clients, each sends its next request when the last one returns. Measures capacity at a
  given concurrency; it cannot show queueing beyond N, because a slow server slows the clients down too.
- Open loop: requests arrive at a fixed offered rate with exponential gaps (Poisson), whether or not the
  earlier ones have returned, so queueing shows in the tail. Latency runs from each request's *scheduled*
  arrival, not from when the generator got round to sending it: a generator that falls behind must not
  hide the wait (coordinated omission). (A request the timer sent up to TIMER_SLACK_S early is timed from
  its send.) Requests the generator could not send because `max_in_flight`
  were outstanding are `dropped`; sent more than `late_after_s` after their schedule, `late`; still
  unanswered `drain_timeout_s` after the last arrival, `timed_out`. None of them is silently lost: the SLO
  percentile counts every request that did not complete as infinitely slow.

Both modes are bounded in time and in count. Percentiles use the nearest-rank definition (the smallest
sample with at least q% of the samples at or below it), which never interpolates below an observed tail.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Awaitable, Callable, Sequence

import numpy as np

AsyncTarget = Callable[[str], Awaitable[object]]

PERCENTILES = (50, 95, 99)
# asyncio's timers wake up to ~1 ms late (epoll waits in whole milliseconds, rounded up): the open loop
# wakes this much early rather than add the oversleep to every latency it measures.
TIMER_SLACK_S = 0.001


def percentile(samples: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile: sorted(samples)[ceil(q/100 * n) - 1]; None for no samples.

    q = 0 gives the minimum, q = 100 the maximum. Infinite samples sort last, as failures should.
    """
    if not 0 <= q <= 100:
        raise ValueError(f"percentile q must be in [0, 100], got {q}")
    n = len(samples)
    if n == 0:
        return None
    ordered = sorted(samples)
    rank = max(1, math.ceil(q / 100 * n))
    return float(ordered[rank - 1])


@dataclass
class RunResult:
    """What one measured run saw. Latencies in seconds; summary() gives milliseconds."""

    mode: str                         # "closed" | "open"
    concurrency: int | None = None    # closed loop: clients
    offered_rate: float | None = None  # open loop: requests/s scheduled
    scheduled: int = 0                # open loop: arrivals in the schedule
    latencies_s: list[float] = field(default_factory=list)   # completed requests only
    errors: int = 0
    error_kinds: Counter = field(default_factory=Counter)    # "ExceptionType: first line" -> count
    dropped: int = 0                  # open loop: not sent, max_in_flight outstanding
    late: int = 0                     # open loop: sent more than late_after_s behind schedule
    timed_out: int = 0                # cancelled at the end of the run, still unanswered
    elapsed_s: float = 0.0

    @property
    def completed(self) -> int:
        return len(self.latencies_s)

    @property
    def failed(self) -> int:
        """Requests that did not complete: errors, drops and time-outs."""
        return self.errors + self.dropped + self.timed_out

    @property
    def throughput(self) -> float:
        return self.completed / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def slo_percentile_ms(self, q: float = 99) -> float:
        """Percentile over every request offered, a failed one counting as infinitely slow."""
        samples = list(self.latencies_s) + [math.inf] * self.failed
        value = percentile(samples, q)
        return math.inf if value is None else value * 1e3

    def summary(self) -> dict:
        ms = [x * 1e3 for x in self.latencies_s]
        out = {"mode": self.mode}
        if self.concurrency is not None:
            out["clients"] = self.concurrency
        if self.offered_rate is not None:
            out["offered_rate"] = round(self.offered_rate, 3)
            out["scheduled"] = self.scheduled
        out.update({
            "completed": self.completed,
            "errors": self.errors,
            "dropped": self.dropped,
            "late": self.late,
            "timed_out": self.timed_out,
            "elapsed_s": round(self.elapsed_s, 4),
            "throughput_rps": round(self.throughput, 2),
        })
        for q in PERCENTILES:
            value = percentile(ms, q)
            out[f"p{q}_ms"] = None if value is None else round(value, 4)
        out["max_ms"] = round(max(ms), 4) if ms else None
        out["mean_ms"] = round(float(np.mean(ms)), 4) if ms else None
        slo_p99 = self.slo_percentile_ms(99)
        out["slo_p99_ms"] = None if math.isinf(slo_p99) else round(slo_p99, 4)
        if self.error_kinds:
            out["error_kinds"] = dict(self.error_kinds.most_common(5))
        return out


async def _timed_call(target, prompt: str, since: float, result) -> None:
    """One request: its latency from `since` on success, a counted error of its kind on failure."""
    try:
        await target(prompt)
    except Exception as e:   # noqa: BLE001 - every failure of the target is a counted error
        result.errors += 1
        result.error_kinds[_error_kind(e)] += 1
    else:
        result.latencies_s.append(time.perf_counter() - since)


def _error_kind(exc: BaseException) -> str:
    """A short key to count errors by: the gRPC status and details where the error carries them."""
    code, details = getattr(exc, "code", None), getattr(exc, "details", None)
    if callable(code) and callable(details):                       # grpc.aio.AioRpcError
        status = getattr(code(), "name", code())
        text = f"{status}: {details() or ''}"
    elif callable(getattr(exc, "status", None)) and callable(getattr(exc, "message", None)):
        text = f"{exc.status()}: {exc.message()}"                  # tritonclient InferenceServerException
    else:
        text = str(exc).strip()
    first_line = text.strip().splitlines()[0][:160] if text.strip() else ""
    return f"{type(exc).__name__}: {first_line}" if first_line else type(exc).__name__


async def _drain(tasks: set[asyncio.Task], timeout_s: float) -> int:
    """Waits up to timeout_s for tasks; cancels the rest and returns how many were cancelled."""
    if not tasks:
        return 0
    done, pending = await asyncio.wait(tasks, timeout=timeout_s)
    for task in pending:
        task.cancel()
    if pending:
        await asyncio.gather(*pending, return_exceptions=True)
    return len(pending)


async def closed_loop(target: AsyncTarget, prompts: Sequence[str], concurrency: int, *, duration_s: float,
                      max_requests: int | None = None, drain_timeout_s: float = 10.0) -> RunResult:
    """`concurrency` clients send back to back for `duration_s` (or until `max_requests` have been sent).

    Throughput = completed / time from the start until the last request returned.
    """
    if concurrency < 1:
        raise ValueError(f"concurrency must be >= 1, got {concurrency}")
    if not duration_s > 0:
        raise ValueError(f"duration_s must be > 0, got {duration_s}")
    if not prompts:
        raise ValueError("prompts is empty")
    result = RunResult("closed", concurrency=concurrency)
    limit = max_requests if max_requests is not None else math.inf
    issued = 0
    start = time.perf_counter()
    stop_at = start + duration_s
    last_done = start

    async def client() -> None:
        nonlocal issued, last_done
        while issued < limit and time.perf_counter() < stop_at:
            prompt = prompts[issued % len(prompts)]
            issued += 1
            await _timed_call(target, prompt, time.perf_counter(), result)
            last_done = time.perf_counter()

    clients = {asyncio.ensure_future(client()) for _ in range(concurrency)}
    # The clients stop issuing at stop_at; the ones still waiting on a reply get drain_timeout_s more.
    result.timed_out = await _drain(clients, duration_s + drain_timeout_s)
    result.elapsed_s = max(last_done - start, 1e-9)
    return result


def poisson_schedule(rate_per_s: float, duration_s: float, max_requests: int, seed: int = 0) -> np.ndarray:
    """Arrival times (s from the start) of a Poisson process at `rate_per_s`, within duration_s, at most
    max_requests of them."""
    if not rate_per_s > 0:
        raise ValueError(f"rate_per_s must be > 0, got {rate_per_s}")
    rng = np.random.default_rng(seed)
    expected = rate_per_s * duration_s
    n = int(min(max_requests, expected + 6 * math.sqrt(expected) + 10))
    arrivals = np.cumsum(rng.exponential(1.0 / rate_per_s, size=n))
    return arrivals[arrivals < duration_s][:max_requests]


async def open_loop(target: AsyncTarget, prompts: Sequence[str], rate_per_s: float, *, duration_s: float,
                    max_requests: int = 100_000, max_in_flight: int = 512, late_after_s: float = 0.005,
                    drain_timeout_s: float = 5.0, seed: int = 0) -> RunResult:
    """Poisson arrivals at `rate_per_s` for `duration_s`; see the module docstring for the accounting.

    Every scheduled arrival ends as exactly one of: completed, error, dropped, timed_out
    (`late` is counted on top: a late request still completes, errs or times out).
    """
    if not prompts:
        raise ValueError("prompts is empty")
    if max_in_flight < 1:
        raise ValueError(f"max_in_flight must be >= 1, got {max_in_flight}")
    schedule = poisson_schedule(rate_per_s, duration_s, max_requests, seed)
    result = RunResult("open", offered_rate=rate_per_s, scheduled=len(schedule))
    in_flight: set[asyncio.Task] = set()
    start = time.perf_counter()
    last_done = start

    async def one(prompt: str, intended: float) -> None:
        nonlocal last_done
        # From the schedule when sent late (the wait counts), from the send when sent up to TIMER_SLACK_S early.
        await _timed_call(target, prompt, min(intended, time.perf_counter()), result)
        last_done = time.perf_counter()

    for i, offset in enumerate(schedule):
        intended = start + float(offset)
        wait = intended - time.perf_counter() - TIMER_SLACK_S
        if wait > 0:
            await asyncio.sleep(wait)
        elif i % 16 == 0:
            await asyncio.sleep(0)   # behind schedule: still let replies in now and then
        if time.perf_counter() - intended > late_after_s:
            result.late += 1
        if len(in_flight) >= max_in_flight:
            result.dropped += 1
            continue
        task = asyncio.ensure_future(one(prompts[i % len(prompts)], intended))
        in_flight.add(task)
        task.add_done_callback(in_flight.discard)

    result.timed_out = await _drain(set(in_flight), drain_timeout_s)
    result.elapsed_s = max(last_done - start, float(schedule[-1]) if len(schedule) else 0.0, 1e-9)
    return result
