"""A small blocking client of the selector, for applications and other routers.

    with SelectorClient("127.0.0.1:50051") as selector:
        decision = selector.route("Which planet ...", quality_per_usd=200, max_latency_ms=3000)
        print(decision.model, decision.quality, decision.expected_cost_usd)

Errors surface as grpc.RpcError: `e.code()` is the status of the API (INVALID_ARGUMENT, FAILED_PRECONDITION,
UNAVAILABLE, ...), `e.details()` names the field or the constraint. asyncio callers can use
`selector.proto.selector_pb2_grpc.SelectorStub` on a grpc.aio channel directly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Iterator

import grpc
import numpy as np

from predictor_service.contract import SELECTOR_ADDRESS
from selector.proto import selector_pb2 as pb
from selector.proto import selector_pb2_grpc as pb_grpc


@dataclass(frozen=True)
class BatchAssignment:
    models: list[str]               # (n_prompts,) chosen model per prompt
    quality: np.ndarray             # (n_prompts,) float32 predicted quality of the choice
    expected_cost_usd: np.ndarray   # (n_prompts,) float64
    total_expected_cost_usd: float
    total_quality: float
    quality_per_usd: float


@dataclass(frozen=True)
class Scores:
    models: list[str]               # pool order
    quality: np.ndarray             # (n_prompts, n_models) float32
    expected_cost_usd: np.ndarray   # (n_prompts, n_models) float64


def make_constraints(*, allow: Iterable[str] = (), deny: Iterable[str] = (), max_latency_ms: float | None = None,
                     max_cost_usd: float | None = None) -> pb.Constraints:
    constraints = pb.Constraints(allow=list(allow), deny=list(deny))
    if max_latency_ms is not None:
        constraints.max_latency_ms = max_latency_ms
    if max_cost_usd is not None:
        constraints.max_cost_usd = max_cost_usd
    return constraints


def make_route_request(prompt: str, *, quality_per_usd: float | None = None, quality_target: float | None = None,
                       cost_cap_usd: float | None = None, include_scores: bool | None = None,
                       **constraints) -> pb.RouteRequest:
    """At most one policy; none = the server's default (tradeoff with its default lambda). include_scores:
    None = the server's default (every model's scores in the decision), False = the decision only."""
    chosen = [name for name, value in (("quality_per_usd", quality_per_usd), ("quality_target", quality_target),
                                       ("cost_cap_usd", cost_cap_usd)) if value is not None]
    if len(chosen) > 1:
        raise ValueError(f"give at most one policy, got {chosen}")
    request = pb.RouteRequest(prompt=prompt, constraints=make_constraints(**constraints))
    if include_scores is not None:
        request.include_scores = include_scores
    if quality_per_usd is not None:
        request.tradeoff.quality_per_usd = quality_per_usd
    elif quality_target is not None:
        request.quality_target.tau = quality_target
    elif cost_cap_usd is not None:
        request.cost_cap.cap_usd = cost_cap_usd
    return request


class SelectorClient:
    def __init__(self, address: str = SELECTOR_ADDRESS, *, timeout_s: float = 10.0,
                 max_message_bytes: int = 64 * 1024 * 1024):
        self.address = address
        self.timeout_s = timeout_s
        self._channel = grpc.insecure_channel(address, options=[
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes)])
        self._stub = pb_grpc.SelectorStub(self._channel)

    def route(self, prompt: str, *, quality_per_usd: float | None = None, quality_target: float | None = None,
              cost_cap_usd: float | None = None, allow: Iterable[str] = (), deny: Iterable[str] = (),
              max_latency_ms: float | None = None, max_cost_usd: float | None = None) -> pb.RouteDecision:
        request = make_route_request(prompt, quality_per_usd=quality_per_usd, quality_target=quality_target,
                                     cost_cap_usd=cost_cap_usd, allow=allow, deny=deny,
                                     max_latency_ms=max_latency_ms, max_cost_usd=max_cost_usd)
        return self._stub.Route(request, timeout=self.timeout_s)

    def route_stream(self, requests: Iterable[pb.RouteRequest]) -> Iterator[pb.RouteStreamResponse]:
        """RouteStream: each request goes with its index as id, over one stream; the responses come as they
        are decided (match them by `int(response.id)`), each with `decision` or `error` set. For callers
        that route at a high rate: a message costs the selector less than a Route call. No deadline: the
        stream lasts as long as `requests` does."""
        return self._stub.RouteStream(pb.RouteStreamRequest(id=str(i), route=request)
                                      for i, request in enumerate(requests))

    def route_batch(self, prompts: list[str], total_budget_usd: float, *, allow: Iterable[str] = (),
                    deny: Iterable[str] = (), max_latency_ms: float | None = None,
                    max_cost_usd: float | None = None) -> BatchAssignment:
        request = pb.RouteBatchRequest(prompts=prompts, total_budget_usd=total_budget_usd,
                                       constraints=make_constraints(allow=allow, deny=deny,
                                                                    max_latency_ms=max_latency_ms,
                                                                    max_cost_usd=max_cost_usd))
        response = self._stub.RouteBatch(request, timeout=self.timeout_s)
        return BatchAssignment(list(response.model), np.array(response.quality, dtype=np.float32),
                               np.array(response.expected_cost_usd, dtype=np.float64),
                               response.total_expected_cost_usd, response.total_quality, response.quality_per_usd)

    def score(self, prompts: list[str]) -> Scores:
        response = self._stub.Score(pb.ScoreRequest(prompts=prompts), timeout=self.timeout_s)
        n_models = len(response.models)
        return Scores(list(response.models),
                      np.array(response.quality, dtype=np.float32).reshape(-1, n_models),
                      np.array(response.expected_cost_usd, dtype=np.float64).reshape(-1, n_models))

    def list_models(self) -> list[pb.PoolModel]:
        return list(self._stub.ListModels(pb.ListModelsRequest(), timeout=self.timeout_s).models)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> "SelectorClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
