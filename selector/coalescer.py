"""Coalesced predictor calls: Routes and Scores that arrive while a Triton call is in flight share the next one.

`CoalescingScores` wraps any ScoreSource (TritonScores in production). Without it every Route is its own
ModelInfer: at 32 clients the selector made 1,289 single-row calls a second and Triton's batcher formed
batches of 1.2 rows, so each Route paid a whole client call's CPU. With it, requests queue while up to
`max_in_flight` calls are out, and the next call takes every queued request (up to `max_rows` rows) at once,
as Triton's own dynamic batcher does on its side. There is no waiting window: a request that finds a free
call slot goes at once, so a lone request waits for nothing.

Per request, as if uncoalesced:
- answers: each request gets its own rows of the batch's (rows, n_served) arrays, in its order;
- errors: when Triton rejects a batch (PredictorError: a prompt the model refuses fails the whole
  ModelInfer), each request of it is retried on its own, so one bad prompt fails only its own request.
  Unavailable and timed-out batches are not retried: every request in them would fail the same way;
- deadlines: each request's own timeout_s ends its wait (PredictorTimeout) whatever the batch does; the
  batch's Triton deadline is the latest of its requests', so a hurried request never cuts the others short;
- cancellation: a cancelled request leaves the queue (or drops its share of an answer in flight);
- overload: at most `max_queued_rows` rows wait; past that, score() raises Overloaded at once
  (RESOURCE_EXHAUSTED) instead of queueing without bound.
Requests over `max_rows` prompts (RouteBatch, large Score calls) skip the queue: TritonScores chunks them.
The caller validates prompts before score() (selector/requests.py, check_prompts), so bad input never joins.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from selector.pool import ServedPool
from selector.triton_scores import Overloaded, PredictorTimeout, PredictorUnavailable, ScoreSource


@dataclass(eq=False)
class ScoredBatch:
    """One predictor call's answer, shared by the requests it carried; each request owns rows [start, stop).

    `memo` holds work done once per batch for all of its requests (SelectorService keeps the pool-order
    scores and per-policy rankings there)."""

    quality: np.ndarray              # (rows, n_served), the predictor's column order
    expected_cost_usd: np.ndarray
    memo: dict = field(default_factory=dict)


@dataclass(eq=False)
class _Pending:
    prompts: list[str]
    deadline: float                  # loop.time() by which the caller wants an answer
    enqueued: float                  # time.perf_counter() at arrival, for the queue-wait metric
    future: asyncio.Future
    timer: asyncio.TimerHandle | None = field(default=None, repr=False)


@dataclass(frozen=True)
class CoalescerStats:
    """What the coalescer did, cumulative (the bench diffs two snapshots)."""

    calls: int = 0            # predictor calls made for coalesced batches (retries not counted)
    requests: int = 0         # requests answered through those calls
    rows: int = 0             # prompts sent in them
    queue_wait_s: float = 0.0  # summed time requests waited for a call slot
    retried: int = 0          # requests retried on their own after their batch failed
    rejected: int = 0         # requests refused with Overloaded


class CoalescingScores:
    """A ScoreSource that merges concurrent small score() calls into one call on `inner`.

    `on_batch(requests, rows)` and `on_wait(seconds)` are told about every coalesced call and every
    request's queue wait (the selector's Prometheus histograms).
    """

    def __init__(self, inner: ScoreSource, *, max_rows: int = 64, max_in_flight: int = 1,
                 max_queued_rows: int = 1024, on_batch: Callable[[int, int], None] | None = None,
                 on_wait: Callable[[float], None] | None = None):
        if not (max_rows >= 1 and max_in_flight >= 1 and max_queued_rows >= max_rows):
            raise ValueError(f"need max_rows >= 1, max_in_flight >= 1 and max_queued_rows >= max_rows; got "
                             f"{max_rows}, {max_in_flight}, {max_queued_rows}")
        self.inner = inner
        self._max_rows = max_rows
        self._max_in_flight = max_in_flight
        self._max_queued_rows = max_queued_rows
        self._on_batch = on_batch
        self._on_wait = on_wait
        self._queue: deque[_Pending] = deque()
        self._queued_rows = 0             # rows of the queue's requests, cancelled ones included until popped
        self._in_flight = 0               # one event loop: plain counters are safe
        self._calls: set[asyncio.Task] = set()
        self._stats = {name: 0 for name in ("calls", "requests", "rows", "retried", "rejected")}
        self._wait_s = 0.0

    # --- ScoreSource ---------------------------------------------------------------------------------

    async def served_pool(self) -> ServedPool:
        return await self.inner.served_pool()

    async def ready(self) -> bool:
        return await self.inner.ready()

    async def close(self) -> None:
        for task in list(self._calls):
            task.cancel()
        await asyncio.gather(*self._calls, return_exceptions=True)
        for item in self._queue:
            _settle(item, exception=PredictorUnavailable("the selector is shutting down"))
        self._queue.clear()
        await self.inner.close()

    async def score(self, prompts: list[str], *, timeout_s: float) -> tuple[np.ndarray, np.ndarray]:
        batch, start, stop = await self.score_rows(prompts, timeout_s=timeout_s)
        return batch.quality[start:stop], batch.expected_cost_usd[start:stop]

    async def score_rows(self, prompts: list[str], *, timeout_s: float) -> tuple[ScoredBatch, int, int]:
        """score(), answered as (the batch that carried the prompts, their first row, end row)."""
        n = len(prompts)
        if n > self._max_rows or n == 0:
            return ScoredBatch(*await self.inner.score(prompts, timeout_s=timeout_s)), 0, n
        if self._queued_rows + n > self._max_queued_rows:
            self._drop_answered()
        if self._queued_rows + n > self._max_queued_rows:
            self._stats["rejected"] += 1
            raise Overloaded(f"the selector's predictor queue holds its limit of {self._max_queued_rows} "
                             f"prompts; retry with backoff")
        loop = asyncio.get_running_loop()
        item = _Pending(prompts, loop.time() + timeout_s, time.perf_counter(), loop.create_future())
        # A timer, not asyncio.wait_for: on Python 3.11 wait_for wraps every call in a task of its own.
        item.timer = loop.call_at(item.deadline, _settle, item, None,
                                  PredictorTimeout("the predictor missed the deadline (queued or in flight)"))
        self._queue.append(item)
        self._queued_rows += n
        self._dispatch()
        try:
            return await item.future          # a cancelled caller cancels the future: dispatch skips it
        finally:
            item.timer.cancel()

    # --- introspection -------------------------------------------------------------------------------

    def waiting(self) -> int:
        """Requests queued for a call slot now (cancelled and expired ones excluded)."""
        return sum(not item.future.done() for item in self._queue)

    def stats(self) -> CoalescerStats:
        return CoalescerStats(queue_wait_s=self._wait_s, **self._stats)

    # --- batching ------------------------------------------------------------------------------------

    def _drop_answered(self) -> None:
        """Forgets queued requests already cancelled or timed out (dispatch skips them anyway), so that
        they do not hold the queue's bound while a slow call keeps the queue from draining."""
        live = deque(item for item in self._queue if not item.future.done())
        if len(live) < len(self._queue):
            self._queue = live
            self._queued_rows = sum(len(item.prompts) for item in live)

    def _dispatch(self) -> None:
        """Starts calls while a slot is free and requests wait; each call takes the queue up to max_rows."""
        while self._in_flight < self._max_in_flight and self._queue:
            batch: list[_Pending] = []
            rows = 0
            now = time.perf_counter()
            while self._queue and rows + len(self._queue[0].prompts) <= self._max_rows:
                item = self._queue.popleft()
                self._queued_rows -= len(item.prompts)
                if item.future.done():          # cancelled or timed out while queued
                    continue
                batch.append(item)
                rows += len(item.prompts)
                self._wait_s += now - item.enqueued
                if self._on_wait is not None:
                    self._on_wait(now - item.enqueued)
            if not batch:
                continue
            self._in_flight += 1
            task = asyncio.get_running_loop().create_task(self._call(batch, rows))
            self._calls.add(task)
            task.add_done_callback(self._calls.discard)

    async def _call(self, batch: list[_Pending], rows: int) -> None:
        try:
            self._stats["calls"] += 1
            self._stats["requests"] += len(batch)
            self._stats["rows"] += rows
            if self._on_batch is not None:
                self._on_batch(len(batch), rows)
            loop = asyncio.get_running_loop()
            timeout_s = max(item.deadline for item in batch) - loop.time()
            prompts = batch[0].prompts if len(batch) == 1 else [p for item in batch for p in item.prompts]
            try:
                quality, cost = await self.inner.score(prompts, timeout_s=timeout_s)
            except (PredictorUnavailable, PredictorTimeout, Overloaded) as e:
                # The whole batch's fate, not one row's: retrying each request alone would only add load.
                for item in batch:
                    _settle(item, exception=type(e)(str(e)))
                return
            except Exception as e:            # noqa: BLE001 - a bad row or a bug: each request on its own
                if len(batch) == 1:
                    _settle(batch[0], exception=e)
                    return
                self._stats["retried"] += len(batch)
                await asyncio.gather(*(self._alone(item) for item in batch))
                return
            scored, offset = ScoredBatch(quality, cost), 0
            for item in batch:
                n = len(item.prompts)
                _settle(item, (scored, offset, offset + n))
                offset += n
        except asyncio.CancelledError:
            for item in batch:
                _settle(item, exception=PredictorUnavailable("the selector is shutting down"))
            raise
        finally:
            self._in_flight -= 1
            self._dispatch()

    async def _alone(self, item: _Pending) -> None:
        if item.future.done():
            return
        timeout_s = item.deadline - asyncio.get_running_loop().time()
        try:
            quality, cost = await self.inner.score(item.prompts, timeout_s=timeout_s)
        except Exception as e:                # noqa: BLE001 - handed to the request it belongs to
            _settle(item, exception=e)
        else:
            _settle(item, (ScoredBatch(quality, cost), 0, len(item.prompts)))


def _settle(item: _Pending, result=None, exception: BaseException | None = None) -> None:
    """Answers a request unless it is already answered, timed out or cancelled."""
    if item.future.done():
        return
    if exception is not None:
        item.future.set_exception(exception)
    else:
        item.future.set_result(result)
