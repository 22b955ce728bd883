"""Triton's queue bound and request timeouts on the real server, and what the selector makes of them. The
server here queues at most 1 request (`max_queue_size=1`), so a burst of 64-row requests overflows it:
those are refused at once, the others served, and the selector answers its caller RESOURCE_EXHAUSTED
(retry with backoff) with the predictor still in rotation, not UNAVAILABLE."""

import asyncio

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as grpcaio
from tritonclient.utils import InferenceServerException

from predictor_service.contract import PREDICTOR_MODEL, PROMPT, PROMPT_DATATYPE, QUALITY
from predictor_service.triton_server import TritonServer
from selector.config import SelectorConfig
from selector.proto import selector_pb2 as pb
from selector.triton_scores import Overloaded, _translate
from tests.support.selector_harness import SelectorThread, rpc_error, wait_for

ROWS = [f"question {i} about queues: " + "word " * 2000 for i in range(64)]     # ~7 ms a request here


@pytest.fixture(scope="module")
def small_queue():
    with TritonServer(models=(PREDICTOR_MODEL,), max_queue_size=1) as server:
        yield server


def _input(prompts: list[str]) -> grpcclient.InferInput:
    tensor = grpcclient.InferInput(PROMPT, [len(prompts), 1], PROMPT_DATATYPE)
    tensor.set_data_from_numpy(np.array([p.encode() for p in prompts], dtype=object).reshape(-1, 1))
    return tensor


def _burst(url: str, n: int, **infer_options) -> list:
    """n concurrent 64-row requests: each outcome is its result or its InferenceServerException."""
    rows = _input(ROWS)

    async def run():
        async with grpcaio.InferenceServerClient(url, channel_args=[("grpc.max_send_message_length", 64 << 20)]) \
                as client:
            async def one():
                try:
                    return await client.infer(PREDICTOR_MODEL, [rows], **infer_options)
                except InferenceServerException as e:
                    return e
            return await asyncio.gather(*(one() for _ in range(n)))
    return asyncio.run(run())


def test_a_full_queue_refuses_at_once_and_serves_the_rest(small_queue):
    outcomes = _burst(small_queue.grpc_url, 8)
    refused = [o for o in outcomes if isinstance(o, InferenceServerException)]
    served = [o for o in outcomes if not isinstance(o, InferenceServerException)]
    assert refused and served
    assert all("Exceeds maximum queue size" in e.message() for e in refused)
    assert all(o.as_numpy(QUALITY).shape[0] == len(ROWS) for o in served)
    # Busy, not down: the selector's error for it is Overloaded (RESOURCE_EXHAUSTED), not PredictorUnavailable.
    assert isinstance(_translate(refused[0], "scoring"), Overloaded)


def test_the_selector_answers_resource_exhausted_and_keeps_the_predictor_in_rotation(small_queue):
    # 4 chunks of 64 prompts go out at once (triton_chunk_concurrency 4): past one running and one queued,
    # Triton refuses the rest.
    running = SelectorThread(SelectorConfig(port=0, triton_url=small_queue.grpc_url, triton_chunk_concurrency=4),
                             channel_options=[("grpc.max_send_message_length", 64 << 20)])
    try:
        codes = set()
        for _ in range(10):        # timing on a shared machine: the burst usually overflows at once
            error = rpc_error(running.stub.RouteBatch, pb.RouteBatchRequest(prompts=ROWS * 8, total_budget_usd=100))
            codes.add(error.code())
            if error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                assert "queue is full" in error.details() and "retry with backoff" in error.details()
                break
        assert grpc.StatusCode.RESOURCE_EXHAUSTED in codes, codes
        assert running.health() == 1            # SERVING: a full queue is not an outage
        # The batch's other chunks may still be queued or running: the caller retries, and is answered.
        assert wait_for(lambda: _routes(running))
    finally:
        running.close()


def _routes(running) -> bool:
    try:
        return bool(running.stub.Route(pb.RouteRequest(prompt="What is 2 + 2?"), timeout=30).model)
    except grpc.RpcError as e:
        assert e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, e
        return False
