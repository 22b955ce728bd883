"""The predictor's scores over KServe v2 gRPC: an asyncio tritonclient with one channel, reused.

Contract with the Triton model (`predictor_service/contract.py`): input PROMPT, BYTES, shape (batch, 1),
UTF-8; outputs QUALITY and EXPECTED_COST_USD, FP32, shape (batch, n_served); the pool published in the
config's parameters (`contract.ServedPool`). Outputs come back in the predictor's column order and at its
trained prices; `selector.pool.PoolColumns` maps them onto the pool file.

The hot path (`_infer`) calls tritonclient's generated stub (`GRPCInferenceServiceStub.ModelInfer`) on the
client's channel with a `ModelInferRequest` built here, and reads `raw_output_contents` with np.frombuffer:
what `InferenceServerClient.infer` does, without its per-call InferInput / object-array serialisation and
InferResult parsing, which cost more selector CPU than the rest of a Route. Config and readiness calls, rare,
go through the client.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Protocol

import grpc
import numpy as np
import tritonclient.grpc.aio as grpcclient_aio
from tritonclient.grpc import service_pb2
from tritonclient.grpc._utils import get_error_grpc
from tritonclient.grpc.service_pb2_grpc import GRPCInferenceServiceStub
from tritonclient.utils import InferenceServerException

from predictor_service.contract import OUTPUT_DATATYPE, OUTPUTS, PROMPT, PROMPT_DATATYPE, QUALITY, ServedPool
from selector.config import SelectorConfig
from selector.constraints import InvalidRequest
from selector.pool import read_served_pool


# What ready() scores when the model read ready but its last call found its process down.
PROBE_PROMPT = "Is the predictor serving?"


class PredictorUnavailable(RuntimeError):
    """Triton cannot be reached, or the model is not loaded."""


class ModelDown(PredictorUnavailable):
    """The model's Python-backend stub is dead (2.51: "Stub process '...' is not healthy.", status INTERNAL):
    the server and model still read ready, and the model answers nothing until the server is restarted."""


class PredictorTimeout(RuntimeError):
    """The call ran past its deadline."""


class PredictorError(RuntimeError):
    """Triton answered, but with an error or with outputs that break the contract."""


class Overloaded(RuntimeError):
    """A queue in front of the predictor is full (the selector's coalescing queue, or Triton's own,
    max_queue_size); the caller should retry with backoff (RESOURCE_EXHAUSTED). Not a reason to take a
    replica out of rotation: it is busy, not down."""


class ScoreSource(Protocol):
    """What the selector needs from a predictor; TritonScores in production, fakes in tests."""

    async def served_pool(self) -> ServedPool: ...

    async def score(self, prompts: list[str], *, timeout_s: float) -> tuple[np.ndarray, np.ndarray]:
        """(quality, expected_cost_usd), each (len(prompts), n_served) in the predictor's column order."""
        ...

    async def ready(self) -> bool: ...

    async def close(self) -> None: ...


class TritonScores:
    """Settings come from SelectorConfig (`from_config`), where their defaults are explained."""

    def __init__(self, url: str, model: str, *, chunk_concurrency: int, max_message_bytes: int,
                 reconnect_backoff_max_ms: int):
        self.url = url
        self.model = model
        self._chunk_concurrency = chunk_concurrency
        # Replaces tritonclient's default channel options, so the message limits are repeated here.
        self._client = grpcclient_aio.InferenceServerClient(url, channel_args=[
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.initial_reconnect_backoff_ms", min(100, reconnect_backoff_max_ms)),
            ("grpc.min_reconnect_backoff_ms", min(100, reconnect_backoff_max_ms)),
            ("grpc.max_reconnect_backoff_ms", reconnect_backoff_max_ms),
        ])
        self._max_batch_size = 0     # from the model config, read by served_pool()
        self._model_down = False     # a call was answered ModelDown, and none has succeeded since
        # The client's own channel (tritonclient is pinned), so one connection and its reconnect settings
        # serve every call.
        self._model_infer = GRPCInferenceServiceStub(self._client._channel).ModelInfer
        self._single = self._request_template(1)    # the Route case, copied per call

    @classmethod
    def from_config(cls, config: SelectorConfig) -> "TritonScores":
        return cls(config.triton_url, config.predictor_model, chunk_concurrency=config.triton_chunk_concurrency,
                   max_message_bytes=config.max_message_bytes,
                   reconnect_backoff_max_ms=config.triton_reconnect_backoff_max_ms)

    async def served_pool(self, *, timeout_s: float = 5.0) -> ServedPool:
        """Reads the model config: the pool it serves and its max_batch_size (the chunk size of score())."""
        try:
            response = await self._client.get_model_config(self.model, client_timeout=timeout_s)
        except InferenceServerException as e:
            raise _translate(e, f"reading the config of {self.model!r} at {self.url}") from e
        config = response.config
        if config.max_batch_size <= 0:
            raise PredictorError(f"Triton model {self.model!r} has max_batch_size {config.max_batch_size}; the "
                                 f"selector sends (batch, 1) tensors and needs batching enabled")
        self._max_batch_size = config.max_batch_size
        parameters = {key: value.string_value for key, value in config.parameters.items()}
        return read_served_pool(parameters, model=self.model)

    async def ready(self) -> bool:
        try:
            if not await self._client.is_model_ready(self.model, client_timeout=1.0):
                return False
        except InferenceServerException:
            return False
        if self._model_down:     # it reads ready without its stub: only a scored prompt tells them apart
            with contextlib.suppress(Exception):    # any failure leaves it down
                await self.score([PROBE_PROMPT], timeout_s=1.0)
        return not self._model_down

    async def score(self, prompts: list[str], *, timeout_s: float) -> tuple[np.ndarray, np.ndarray]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        if not self._max_batch_size:
            await self.served_pool(timeout_s=timeout_s)
        size = self._max_batch_size
        chunks = [prompts[i:i + size] for i in range(0, len(prompts), size)]
        if len(chunks) == 1:
            return await self._infer(chunks[0], deadline - loop.time())
        # Several chunks in flight fill Triton's dynamic batcher; a bound keeps one huge request from
        # queueing ahead of every single-prompt Route.
        gate = asyncio.Semaphore(self._chunk_concurrency)

        async def one(chunk: list[str]) -> tuple[np.ndarray, np.ndarray]:
            async with gate:
                # One deadline for the whole call: a chunk that waited for the gate gets what is left, not
                # timeout_s again (313 chunks in waves of 4 could otherwise take 79 x timeout_s).
                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise PredictorTimeout(f"the predictor missed the deadline while scoring {len(prompts)} "
                                           f"prompts in {len(chunks)} chunks")
                return await self._infer(chunk, remaining)

        tasks = [asyncio.ensure_future(one(chunk)) for chunk in chunks]
        try:
            results = await asyncio.gather(*tasks)
        finally:
            for task in tasks:      # after a failure, the other chunks' answers are no use
                task.cancel()
        return np.concatenate([q for q, _ in results]), np.concatenate([c for _, c in results])

    def _request_template(self, batch: int) -> service_pb2.ModelInferRequest:
        request = service_pb2.ModelInferRequest(model_name=self.model)
        request.inputs.add(name=PROMPT, datatype=PROMPT_DATATYPE, shape=[batch, 1])
        for name in OUTPUTS:
            request.outputs.add(name=name)
        return request

    async def _infer(self, prompts: list[str], timeout_s: float) -> tuple[np.ndarray, np.ndarray]:
        # KServe v2 BYTES in raw_input_contents: per element, a 4-byte little-endian length, then the bytes.
        if len(prompts) == 1:
            request = service_pb2.ModelInferRequest()
            request.CopyFrom(self._single)
            data = prompts[0].encode("utf-8")
            payload = len(data).to_bytes(4, "little") + data
        else:
            request = self._request_template(len(prompts))
            payload = b"".join(part for data in (p.encode("utf-8") for p in prompts)
                               for part in (len(data).to_bytes(4, "little"), data))
        request.raw_input_contents.append(payload)
        try:
            response = await self._model_infer(request, timeout=timeout_s)
        except grpc.RpcError as e:
            error = _translate(get_error_grpc(e),
                               f"scoring {len(prompts)} prompt(s) with {self.model!r} at {self.url}")
            self._model_down = self._model_down or isinstance(error, ModelDown)    # until a call succeeds
            raise error from e
        self._model_down = False
        quality = cost = None
        contents = response.raw_output_contents
        for i, output in enumerate(response.outputs):
            if output.name not in OUTPUTS or i >= len(contents):
                continue
            if output.datatype != OUTPUT_DATATYPE:
                raise PredictorError(f"{self.model!r} returned {output.name} as {output.datatype}; "
                                     f"expected {OUTPUT_DATATYPE}")
            array = np.frombuffer(contents[i], dtype="<f4").reshape(output.shape)   # read-only view
            if output.name == QUALITY:
                quality = array
            else:
                cost = array
        if (quality is None or cost is None or quality.ndim != 2 or quality.shape != cost.shape
                or quality.shape[0] != len(prompts)):
            raise PredictorError(f"{self.model!r} returned QUALITY {getattr(quality, 'shape', None)} and "
                                 f"EXPECTED_COST_USD {getattr(cost, 'shape', None)} for {len(prompts)} prompts; "
                                 f"expected two (batch, n_models) arrays")
        return quality, cost

    async def close(self) -> None:
        await self._client.close()


def _translate(error: InferenceServerException, doing: str) -> RuntimeError:
    status, message = error.status() or "", error.message() or ""
    # Triton answers UNAVAILABLE for its own queue limits too (2.51: "Exceeds maximum queue size",
    # "Request timeout expired"): a busy predictor, not an unreachable one.
    if "Exceeds maximum queue size" in message:
        return Overloaded(f"the predictor's queue is full while {doing}; retry with backoff")
    if "Request timeout expired" in message:
        return PredictorTimeout(f"the predictor missed the deadline while {doing} (it expired in Triton's queue)")
    if status.endswith("INVALID_ARGUMENT"):
        # The selector checks prompts against its own limit first; this is the predictor's, set apart
        # (ROUTOO_MAX_PROMPT_BYTES differs between the two), or a prompt only the model refuses.
        return InvalidRequest("prompts", f"the predictor refused it while {doing}: {message}")
    if "is not healthy" in message:
        return ModelDown(f"the predictor's model process is down while {doing}: {message}")
    if status.endswith("UNAVAILABLE"):
        return PredictorUnavailable(f"the predictor is unreachable while {doing}: {error.message()}")
    if status.endswith("DEADLINE_EXCEEDED"):
        return PredictorTimeout(f"the predictor missed the deadline while {doing}")
    if status.endswith("NOT_FOUND") or "is not ready" in (error.message() or "") or "unknown model" in (
            error.message() or ""):
        return PredictorUnavailable(f"the predictor model is not loaded while {doing}: {error.message()}")
    return PredictorError(f"Triton failed while {doing}: [{status}] {error.message()}")
