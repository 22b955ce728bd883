"""What the benchmark measures: each target is an async callable `await target(prompt)`.

Six targets per encoder, measured in one run on one machine so that their ratios mean something:

    echo_floor          Triton, a Python-backend model with the predictor's I/O that does no work: the floor
    predictor_batching  routoo_predictor in Triton, dynamic batching on
    predictor_no_batch  the same model with dynamic batching off (how NVIDIA's LLM Router blueprint ships
                        its Triton models)
    selector_route      the selector's Route end to end (gRPC in, Triton call, policy, gRPC out)
    selector_route_2w   the same with --selector-workers 2, over 8 client connections
    in_process          Predictor.predict([prompt]) in the benchmark's own process, no RPC

Servers run in processes of their own (tritonserver, the selector in a `python -m` child), never inside the
load generator's event loop: sharing one interpreter would charge the server's work to the client's clock.
A target raises on a failed request; the load generator counts it as an error.

Inputs (artifacts, prompts) are in bench/inputs.py, the server processes in bench/processes.py, CPU time by
role in bench/cpu_time.py, server-side statistics in bench/server_stats.py.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from predictor_service.contract import (ECHO_FLOOR_MODEL, EXPECTED_COST_USD, PREDICTOR_MODEL, PROMPT, PROMPT_DATATYPE,
                                        QUALITY, TORCH_THREADS)

ENCODERS = ("static", "minilm")
TARGETS = ("echo_floor", "predictor_batching", "predictor_no_batch", "selector_route", "selector_route_stream",
           "selector_route_2w", "in_process")
# Selector targets: SelectorConfig settings of the selector process, client connections, and whether each
# client sends its Routes as messages of one RouteStream instead of unary calls.
SELECTOR_TARGETS = {"selector_route": ({}, 1, False), "selector_route_stream": ({}, 1, True),
                    "selector_route_2w": ({"workers": 2}, 8, False)}
TRITON_TARGETS = {"echo_floor": ECHO_FLOOR_MODEL, "predictor_batching": PREDICTOR_MODEL,
                  "predictor_no_batch": PREDICTOR_MODEL}


class TargetUnavailable(RuntimeError):
    """A target that cannot be measured on this machine; the message says what is missing."""



# --- the targets ----------------------------------------------------------------------------------------

@dataclass
class TritonTarget:
    """One KServe-v2 infer call over gRPC (asyncio tritonclient, one channel reused by every request)."""

    url: str
    model_name: str
    client: object = field(init=False, repr=False)

    def __post_init__(self) -> None:
        from tritonclient.grpc.aio import InferenceServerClient

        self.client = InferenceServerClient(self.url)

    async def __call__(self, prompt: str):
        from tritonclient.grpc.aio import InferInput, InferRequestedOutput

        data = np.array([[prompt.encode("utf-8")]], dtype=np.object_)   # (batch=1, 1) BYTES
        inp = InferInput(PROMPT, [1, 1], PROMPT_DATATYPE)
        inp.set_data_from_numpy(data)
        outputs = [InferRequestedOutput(QUALITY), InferRequestedOutput(EXPECTED_COST_USD)]
        result = await self.client.infer(self.model_name, [inp], outputs=outputs)
        return result.as_numpy(QUALITY)

    async def statistics(self) -> dict:
        """Triton's cumulative statistics for this model (the statistics extension), as a dict."""
        stats = await self.client.get_inference_statistics(self.model_name, as_json=True)
        return stats["model_stats"][0] if stats.get("model_stats") else {}

    async def server_version(self) -> str:
        meta = await self.client.get_server_metadata(as_json=True)
        return str(meta.get("version", ""))

    async def close(self) -> None:
        await self.client.close()


@dataclass
class SelectorRouteTarget:
    """The selector's Route over its gRPC API (grpc.aio stubs), default policy. `channels` connections,
    used in turn: one connection reaches one selector worker (SO_REUSEPORT spreads connections).
    stream: each Route is a message on a RouteStream instead of a call; a client of the load generator
    takes an idle stream (or opens one), writes, reads the answer and puts the stream back, so N closed-loop
    clients hold N streams, one message in flight on each."""

    address: str
    channels: int = 1
    stream: bool = False
    _idle_streams: list = field(init=False, repr=False, default_factory=list)
    _channels: list = field(init=False, repr=False)
    _stubs: list = field(init=False, repr=False)
    _next: int = field(init=False, repr=False, default=0)

    def __post_init__(self) -> None:
        import grpc

        from selector.proto import selector_pb2_grpc

        # A local subchannel pool each, or channels to one address would share one connection.
        options = [("grpc.use_local_subchannel_pool", 1)] if self.channels > 1 else []
        self._channels = [grpc.aio.insecure_channel(self.address, options=options) for _ in range(self.channels)]
        self._stubs = [selector_pb2_grpc.SelectorStub(channel) for channel in self._channels]

    async def __call__(self, prompt: str):
        from selector.proto import selector_pb2

        self._next = (self._next + 1) % len(self._stubs)
        if self.stream:
            return await self._route_on_stream(
                selector_pb2.RouteStreamRequest(route=selector_pb2.RouteRequest(prompt=prompt)))
        decision = await self._stubs[self._next].Route(selector_pb2.RouteRequest(prompt=prompt), timeout=10.0)
        return decision.model

    async def _route_on_stream(self, message):
        call = self._idle_streams.pop() if self._idle_streams else self._stubs[self._next].RouteStream()
        try:
            await call.write(message)
            response = await asyncio.wait_for(call.read(), 10.0)
        except BaseException:
            call.cancel()              # a stream in an unknown state is not reused
            raise
        self._idle_streams.append(call)
        if response.HasField("error"):
            raise RuntimeError(f"RouteStream: {response.error.code}: {response.error.message}")
        return response.decision.model

    async def close(self) -> None:
        for call in self._idle_streams:
            call.cancel()
        self._idle_streams.clear()
        for channel in self._channels:
            await channel.close()


@dataclass
class InProcessTarget:
    """Predictor.predict([prompt]) called directly: the predictor's own cost with no RPC around it.

    It runs on the event loop's thread, so concurrent clients serialise on it, as they would on the GIL.
    Each call first yields to the loop: without that, the first closed-loop client never gave the loop
    back and held it for the whole run, so "32 clients" measured one (and its latency had no queueing).
    """

    predictor: object

    @classmethod
    def load(cls, artifact: Path, device: str = "cpu") -> "InProcessTarget":
        import torch

        from predictor_service.predictor import Predictor

        # The same intra-op threads as a routoo_predictor instance in Triton, so RPC is the only difference.
        torch.set_num_threads(served_torch_threads())
        return cls(Predictor.load(artifact, device=device))

    async def __call__(self, prompt: str):
        await asyncio.sleep(0)
        quality, _ = self.predictor.predict([prompt])
        return quality

    async def close(self) -> None:
        return None


def served_torch_threads(repository: Path | None = None) -> int:
    """routoo_predictor's `torch_threads` parameter from the committed model config (1 if unset)."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    from predictor_service.triton_server import MODEL_REPOSITORY

    path = (repository or MODEL_REPOSITORY) / PREDICTOR_MODEL / "config.pbtxt"
    config = text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())
    value = config.parameters[TORCH_THREADS].string_value if TORCH_THREADS in config.parameters else ""
    return int(value) if value.strip() else 1
