"""From a chat request to a decision: the `model` field's routing syntax, the `routoo` object's
constraints, and the selector's Route call (grpc.aio on the gateway's event loop).

    "routoo"                      the selector's default policy
    "routoo:tradeoff=2000"        maximise quality - 2000 x expected cost (quality points per USD)
    "routoo:quality_target=0.8"   the cheapest model predicted to reach quality 0.8
    "routoo:cost_cap=0.001"       the best model expected to cost at most $0.001
    "<pool model name>"           that model, unrouted
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import grpc

from gateway.errors import GatewayError, bad_request, from_selector_error
from selector.policies import POLICIES
from selector.proto import selector_pb2 as pb
from selector.proto import selector_pb2_grpc as pb_grpc

ROUTED_MODEL = "routoo"
_CONSTRAINT_KEYS = {"allow", "deny", "max_latency_ms", "max_cost_usd"}


@dataclass(frozen=True)
class Decision:
    candidates: list[str]             # models to try, in order: the choice, then runners-up
    routed: bool                      # False: a concrete model was asked for, or the fallback
    fallback: bool = False
    policy: str = ""
    # Predicted quality and expected cost of every scored model (empty when unrouted).
    quality: dict[str, float] = field(default_factory=dict)
    expected_cost_usd: dict[str, float] = field(default_factory=dict)
    best_model: str | None = None     # highest predicted quality among the scored models
    route_seconds: float = 0.0


def parse_policy(model: str) -> tuple[str, float] | None:
    """`routoo:<policy>=<value>` -> (policy, value); `routoo` -> None (the default policy)."""
    if model == ROUTED_MODEL:
        return None
    spec = model[len(ROUTED_MODEL) + 1:]
    name, sep, value = spec.partition("=")
    if name not in POLICIES or not sep:
        raise bad_request(f"model {model!r}: expected 'routoo' or 'routoo:<policy>=<value>' with a policy of "
                          f"{sorted(POLICIES)}, e.g. 'routoo:tradeoff=2000'", param="model", code="model_not_found")
    try:
        number = float(value)
    except ValueError as e:
        raise bad_request(f"model {model!r}: the value of {name} must be a number, got {value!r}",
                          param="model") from e
    if not math.isfinite(number):
        raise bad_request(f"model {model!r}: the value of {name} must be finite", param="model")
    return name, number


def is_routed(model: str) -> bool:
    return model == ROUTED_MODEL or model.startswith(ROUTED_MODEL + ":")


def constraints_from_body(routoo, pool_names: list[str], callable_models: list[str]) -> pb.Constraints:
    """The request's `routoo` object (constraints) as the selector's Constraints, limited to the models the
    gateway can call (those with an upstream), so that the selector never picks one it cannot reach."""
    if routoo is None:
        routoo = {}
    if not isinstance(routoo, dict):
        raise bad_request("'routoo' must be an object with any of "
                          f"{sorted(_CONSTRAINT_KEYS)}", param="routoo")
    unknown = sorted(set(routoo) - _CONSTRAINT_KEYS)
    if unknown:
        raise bad_request(f"routoo: unknown keys {unknown}; valid keys are {sorted(_CONSTRAINT_KEYS)}",
                          param=f"routoo.{unknown[0]}")
    lists = {}
    for key in ("allow", "deny"):
        names = routoo.get(key, [])
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise bad_request(f"routoo.{key} must be a list of model names", param=f"routoo.{key}")
        unknown_models = [n for n in names if n not in pool_names]
        if unknown_models:
            raise bad_request(f"routoo.{key}: unknown model(s) {unknown_models}; valid models are {pool_names}",
                              param=f"routoo.{key}", code="model_not_found")
        lists[key] = names
    allow = lists["allow"] or pool_names
    reachable = [n for n in allow if n in set(callable_models)]
    if not reachable:
        raise bad_request(f"none of the models in routoo.allow {lists['allow']} has an upstream (base_url in the "
                          f"pool file); models with one: {callable_models}", param="routoo.allow",
                          code="no_eligible_model")
    # An allow list only where it narrows the choice: the common request carries none.
    constraints = pb.Constraints(allow=reachable if len(reachable) < len(pool_names) else [], deny=lists["deny"])
    for key in ("max_latency_ms", "max_cost_usd"):
        if key in routoo and routoo[key] is not None:
            value = routoo[key]
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise bad_request(f"routoo.{key} must be a number, got {value!r}", param=f"routoo.{key}")
            try:
                number = float(value)
            except OverflowError:         # an integer of hundreds of digits
                number = math.inf
            if not math.isfinite(number):
                raise bad_request(f"routoo.{key} must be a finite number", param=f"routoo.{key}")
            setattr(constraints, key, number)
    return constraints


class Router:
    """Asks the selector; owns the grpc.aio channel (created on the gateway's event loop)."""

    def __init__(self, address: str, timeout_s: float):
        self.address = address
        self.timeout_s = timeout_s
        # Reconnect within ~1 s of a restarted selector (gRPC's default backoff grows to 120 s). round_robin:
        # where the address resolves to several selectors (a headless Kubernetes Service, `dns:///name:port`),
        # calls are spread over all of them rather than pinned to the first; one address behaves as before.
        self.channel = grpc.aio.insecure_channel(address, options=[
            ("grpc.initial_reconnect_backoff_ms", 100), ("grpc.min_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", 1000), ("grpc.lb_policy_name", "round_robin"),
            ("grpc.max_receive_message_length", 64 * 1024 * 1024),
            ("grpc.max_send_message_length", 64 * 1024 * 1024)])
        self.stub = pb_grpc.SelectorStub(self.channel)

    async def call(self, method: str, request):
        """One selector RPC; gRPC errors become GatewayErrors with the API's HTTP status."""
        try:
            return await getattr(self.stub, method)(request, timeout=self.timeout_s)
        except grpc.RpcError as e:
            raise from_selector_error(e, self.address) from e

    async def route(self, prompt: str, policy: tuple[str, float] | None, constraints: pb.Constraints,
                    best_among: set[str]) -> Decision:
        """`best_among`: the models the always-best-model comparison may pick (enabled, with an upstream)."""
        request = pb.RouteRequest(prompt=prompt, constraints=constraints)
        if policy is not None:
            name, value = policy
            setattr(getattr(request, name), POLICIES[name].parameter, value)
        start = time.perf_counter()
        decision = await self.call("Route", request)
        seconds = time.perf_counter() - start
        quality = {s.model: s.quality for s in decision.scores}
        cost = {s.model: s.expected_cost_usd for s in decision.scores}
        best = max((m for m in quality if m in best_among), key=quality.get, default=None)
        return Decision([decision.model, *(r.model for r in decision.runners_up)], routed=True,
                        fallback=decision.fallback, policy=decision.policy, quality=quality,
                        expected_cost_usd=cost, best_model=best, route_seconds=seconds)

    async def close(self) -> None:
        await self.channel.close()


def unrouted(model: str, *, fallback: bool = False) -> Decision:
    return Decision([model], routed=False, fallback=fallback)


def raise_unless_selector_down(error: GatewayError) -> None:
    if error.code not in ("selector_unavailable", "selector_timeout"):
        raise error
