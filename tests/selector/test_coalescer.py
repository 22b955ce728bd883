"""Coalesced predictor calls (selector/coalescer.py) against the real tritonserver and the real selector.

The selector's predictor is the real TritonScores behind a gate that can hold Triton calls: with the first
call held, the requests sent next are known to queue, and the call made on release carries them all. So
every test below sees a coalesced batch for certain, and asserts what each request of it got.
"""

import asyncio
import threading

import grpc
import numpy as np
import pytest

from predictor_service.contract import MAX_PROMPT_BYTES
from selector.client import make_route_request
from selector.coalescer import CoalescingScores
from selector.config import SelectorConfig
from selector.proto import selector_pb2 as pb
from selector.triton_scores import TritonScores
from tests.support.selector_harness import PROMPTS, SelectorThread, rpc_error, wait_for

pytestmark = pytest.mark.timeout(120)


class GatedScores:
    """The real TritonScores, with a gate: while closed, calls wait before they go to Triton. Records
    the rows of every call."""

    def __init__(self, triton_url: str):
        self.triton_url = triton_url
        self.inner: TritonScores | None = None     # made on the selector's loop: a grpc.aio channel binds to it
        self.calls: list[int] = []
        self.held = threading.Event()      # set while a call waits at the closed gate
        self._open: asyncio.Event | None = None
        self.closed = False

    def close_gate(self) -> None:
        self.held.clear()
        self._open = None              # no call waits now: the next one makes a fresh event
        self.closed = True

    def open_gate(self, loop) -> None:
        self.closed = False
        loop.call_soon_threadsafe(lambda: self._open and self._open.set())

    async def served_pool(self):
        self.inner = self.inner or TritonScores.from_config(SelectorConfig(triton_url=self.triton_url))
        return await self.inner.served_pool()

    async def score(self, prompts, *, timeout_s):
        if self.closed:
            self._open = self._open or asyncio.Event()
            self.held.set()
            await self._open.wait()
        self.calls.append(len(prompts))
        return await self.inner.score(prompts, timeout_s=timeout_s)

    async def ready(self):
        return await self.inner.ready()

    async def close(self):
        await self.inner.close()


@pytest.fixture()
def gated(triton_server):
    """A selector (coalescing on, the default) whose Triton calls pass a gate; yields (selector, gate)."""
    gates = []

    def start(**settings):
        gate = GatedScores(triton_server.grpc_url)
        running = SelectorThread(SelectorConfig(port=0, triton_url=triton_server.grpc_url, **settings), scores=gate)
        gates.append((running, gate))
        return running, gate

    yield start
    for running, gate in gates:
        gate.open_gate(running.loop)
        running.close()


def coalescer(running: SelectorThread) -> CoalescingScores:
    scores = running.server.service._scores
    assert isinstance(scores, CoalescingScores)
    return scores


def hold_first_call(running, gate, request):
    """Sends `request` and waits until its Triton call is held at the gate; returns its future."""
    gate.close_gate()
    first = running.stub.Route.future(request, timeout=60)
    assert gate.held.wait(30)
    return first


def queued(running, n: int) -> bool:
    return wait_for(lambda: coalescer(running).waiting() == n, attempts=100, pause_s=0.05)


def test_coalesced_answers_equal_single_call_answers(gated, triton_server):
    running, gate = gated()
    single = SelectorThread(SelectorConfig(port=0, triton_url=triton_server.grpc_url, coalesce=False))
    try:
        requests = [pb.ScoreRequest(prompts=PROMPTS[i:i + 1 + i % 3]) for i in range(12)]
        first = hold_first_call(running, gate, make_route_request(PROMPTS[19]))
        futures = [running.stub.Score.future(r, timeout=60) for r in requests]
        assert queued(running, len(requests))
        gate.open_gate(running.loop)
        answers = [f.result(timeout=60) for f in futures]
        assert first.result(timeout=60).model
        assert gate.calls == [1, sum(len(r.prompts) for r in requests)]     # one call carried all twelve
        for request, answer in zip(requests, answers):
            alone = single.stub.Score(request, timeout=30)
            assert list(answer.models) == list(alone.models)
            np.testing.assert_allclose(answer.quality, alone.quality, rtol=0, atol=1e-6)
            np.testing.assert_allclose(answer.expected_cost_usd, alone.expected_cost_usd, rtol=1e-6)
        # Routes in one batch decide as they do alone.
        first = hold_first_call(running, gate, make_route_request(PROMPTS[19]))
        routes = [make_route_request(p, quality_per_usd=300.0 * (i % 3), deny=["Yi-34B"] if i % 2 else ())
                  for i, p in enumerate(PROMPTS[:10])]
        futures = [running.stub.Route.future(r, timeout=60) for r in routes]
        assert queued(running, len(routes))
        gate.open_gate(running.loop)
        for request, future in zip(routes, futures):
            decision, alone = future.result(timeout=60), single.stub.Route(request, timeout=30)
            assert decision.model == alone.model
            assert [r.model for r in decision.runners_up] == [r.model for r in alone.runners_up]
            assert [e.model for e in decision.excluded] == [e.model for e in alone.excluded]
        assert gate.calls[-1] == len(routes)
    finally:
        single.close()


def test_a_prompt_triton_rejects_fails_only_its_own_request_in_the_batch(gated):
    # The selector's own limit raised past the model's, so an oversized prompt reaches Triton, which
    # rejects the whole ModelInfer it is in; the coalescer retries that batch's requests one by one.
    running, gate = gated(max_prompt_bytes=2 * MAX_PROMPT_BYTES)
    too_long = "word " * (MAX_PROMPT_BYTES // 5 + 100)
    first = hold_first_call(running, gate, make_route_request(PROMPTS[0]))
    futures = [running.stub.Route.future(make_route_request(p), timeout=60)
               for p in (PROMPTS[1], too_long, PROMPTS[2], PROMPTS[3])]
    assert queued(running, 4)
    gate.open_gate(running.loop)
    assert first.result(timeout=60).model
    for i in (0, 2, 3):
        assert futures[i].result(timeout=60).model
    with pytest.raises(grpc.RpcError) as error:
        futures[1].result(timeout=60)
    # The caller's prompt, refused by the predictor's limit: INVALID_ARGUMENT, as the selector's own check says.
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "over the limit" in error.value.details()
    assert gate.calls[:2] == [1, 4] and sorted(gate.calls[2:]) == [1, 1, 1, 1]   # the batch, then each alone
    assert coalescer(running).stats().retried == 4


def test_cancelled_and_expired_requests_leave_the_batch_and_the_others_are_answered(gated):
    running, gate = gated()
    first = hold_first_call(running, gate, make_route_request(PROMPTS[0]))
    cancelled = running.stub.Route.future(make_route_request(PROMPTS[1]), timeout=60)
    hurried = running.stub.Route.future(make_route_request(PROMPTS[2]), timeout=0.5)
    patient = running.stub.Route.future(make_route_request(PROMPTS[3]), timeout=60)
    assert queued(running, 3)
    cancelled.cancel()
    with pytest.raises(grpc.RpcError) as error:
        hurried.result(timeout=30)             # its own deadline, while the first call is still held
    assert error.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert queued(running, 1)                  # both left the queue; the patient one waits on
    gate.open_gate(running.loop)
    assert first.result(timeout=60).model and patient.result(timeout=60).model
    assert cancelled.cancelled()
    assert gate.calls == [1, 1]                # the second call carried only the patient request


def test_past_the_queue_bound_requests_get_resource_exhausted_and_the_rest_complete(gated):
    running, gate = gated(coalesce_max_rows=2, coalesce_max_queued_rows=2)
    first = hold_first_call(running, gate, make_route_request(PROMPTS[0]))
    waiting = [running.stub.Route.future(make_route_request(p), timeout=60) for p in PROMPTS[1:3]]
    assert queued(running, 2)
    error = rpc_error(running.stub.Route, make_route_request(PROMPTS[3]))
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "limit of 2 prompts" in error.details()
    gate.open_gate(running.loop)
    assert first.result(timeout=60).model and all(f.result(timeout=60).model for f in waiting)
    assert running.stub.Route(make_route_request(PROMPTS[3]), timeout=30).model     # room again
    assert coalescer(running).stats().rejected == 1


def test_while_triton_restarts_a_coalesced_batch_fails_unavailable_then_recovers(triton_server):
    running = SelectorThread(SelectorConfig(port=0, triton_url=triton_server.grpc_url))
    try:
        requests = [make_route_request(p) for p in PROMPTS[:8]]
        assert all(f.result(timeout=30).model for f in [running.stub.Route.future(r, timeout=30) for r in requests])
        triton_server.stop()
        try:
            futures = [running.stub.Route.future(r, timeout=30) for r in requests]
            for future in futures:             # every request answered, none left hanging in the queue
                with pytest.raises(grpc.RpcError) as error:
                    future.result(timeout=30)
                assert error.value.code() == grpc.StatusCode.UNAVAILABLE
        finally:
            triton_server.start()

        def all_route() -> bool:
            try:
                return all(f.result(timeout=10).model for f in [running.stub.Route.future(r, timeout=10)
                                                                 for r in requests])
            except grpc.RpcError as e:
                assert e.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED), e
                return False

        assert wait_for(all_route), "the coalescing selector did not recover after Triton restarted"
        assert coalescer(running).waiting() == 0
    finally:
        running.close()


def test_a_route_that_asks_for_no_scores_gets_the_same_decision_without_them(triton_server):
    running = SelectorThread(SelectorConfig(port=0, triton_url=triton_server.grpc_url))
    try:
        full = running.stub.Route(make_route_request(PROMPTS[5], deny=["Yi-34B"]), timeout=30)
        lean = running.stub.Route(make_route_request(PROMPTS[5], deny=["Yi-34B"], include_scores=False), timeout=30)
        assert len(full.scores) > 0 and len(lean.scores) == 0
        assert (lean.model, list(lean.runners_up), list(lean.excluded)) == (full.model, list(full.runners_up),
                                                                           list(full.excluded))
        explicit = running.stub.Route(make_route_request(PROMPTS[5], deny=["Yi-34B"], include_scores=True), timeout=30)
        assert explicit == full
    finally:
        running.close()


def test_requests_that_gave_up_free_their_place_in_the_bounded_queue(gated):
    running, gate = gated(coalesce_max_rows=2, coalesce_max_queued_rows=2)
    first = hold_first_call(running, gate, make_route_request(PROMPTS[0]))
    gone = [running.stub.Route.future(make_route_request(p), timeout=60) for p in PROMPTS[1:3]]
    assert queued(running, 2)
    for future in gone:
        future.cancel()
    assert queued(running, 0)
    later = running.stub.Route.future(make_route_request(PROMPTS[3]), timeout=60)   # room, not RESOURCE_EXHAUSTED
    assert queued(running, 1)
    gate.open_gate(running.loop)
    assert first.result(timeout=60).model and later.result(timeout=60).model
    assert coalescer(running).stats().rejected == 0 and gate.calls == [1, 1]
