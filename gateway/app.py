"""The gateway's HTTP API (Starlette), shaped like OpenAI's: chat completions routed by the selector and
forwarded to the chosen model's upstream, the model list, health, Prometheus metrics, and the decision-only
endpoints /v1/routoo/route and /v1/routoo/score (JSON mirrors of the selector's Route and Score).

Prompt text and keys are never logged: the log has model names, statuses and failure kinds only.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import math
import os
import time
import urllib.parse

from google.protobuf import json_format
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gateway.config import GatewayConfig
from gateway.errors import ContainFailures, GatewayError, bad_request
from gateway.jsonwire import to_bytes
from gateway.metrics import GatewayMetrics
from gateway.openapi import openapi_schema
from gateway.prompt import BadMessages, scored_text
from gateway.request_body import read_json, unless_client_leaves
from gateway.routing import (ROUTED_MODEL, Decision, Router, constraints_from_body, is_routed, parse_policy,
                             raise_unless_selector_down, unrouted)
from gateway.stream import EventRewriter, RelayResponse
from gateway.upstream import (MAX_ANSWER_BYTES, MAX_ERROR_BODY_BYTES, UPSTREAM_ERRORS, Answer, Forwarder,
                              UpstreamConfigError, header_key, load_upstreams, read_limited)
from selector.log_limits import AggregatedLog
from selector.pool import DEFAULT_POOL_PATH, is_env_name, load_pool
from selector.proto import selector_pb2 as pb
from selector.server import SERVICE_NAME

log = logging.getLogger("routoo.gateway")

# Headers of the upstream's answer that describe its body and are passed on (hop-by-hop ones are not), where
# their values are printable ASCII (HTTP/1.1 sends latin-1 at most; anything else is dropped, not a 500).
_PASSED_HEADERS = ("content-type", "x-request-id", "openai-processing-ms")


# Header values go out as Latin-1, and a pool name may be any text but control characters: such a name
# made every answer of its model a 500 after the upstream had been paid. Printable ASCII but "%" is sent as
# it is; the rest as percent-encoded UTF-8 (RFC 3986), which urllib.parse.unquote reads back.
_HEADER_SAFE = "".join(chr(c) for c in range(0x20, 0x7F) if chr(c) != "%")


def header_text(text: str) -> str:
    return urllib.parse.quote(text, safe=_HEADER_SAFE)


class Gateway:
    """The state behind the routes: pool, upstreams, the selector client and the upstream client."""

    def __init__(self, config: GatewayConfig, environ=os.environ):
        self.config = config
        self.pool = load_pool(config.pool_path)
        try:
            self.upstreams = load_upstreams(self.pool, environ)
        except UpstreamConfigError as e:
            raise UpstreamConfigError(f"{config.pool_path or DEFAULT_POOL_PATH}: {e}") from None
        self.metrics = GatewayMetrics()
        self.log = AggregatedLog(log)      # a line per kind of failure per 10 s, whatever the request rate
        self.client_key: bytes | None = None
        if config.api_key_env is not None:
            key = environ.get(config.api_key_env)
            if not key:
                # Named only if it looks like a name: a key pasted in its place must not be printed back.
                named = repr(config.api_key_env) if is_env_name(config.api_key_env) else \
                    f"(a {len(config.api_key_env)}-character value that is not a variable name)"
                raise ValueError(f"--api-key-env {named}: that environment variable is not set")
            key = header_key(key)
            if key is None:
                raise ValueError(f"--api-key-env {config.api_key_env!r}: its value holds a character an HTTP "
                                 f"header cannot carry (a control character, or one that is not ASCII) besides "
                                 f"the whitespace at its ends, so no client could send it")
            self.client_key = key.encode("utf-8")
        enabled = {m.name for m in self.pool.models if m.enabled}
        self.callable_models = [n for n in self.pool.names if n in self.upstreams and n in enabled]
        if config.fallback_model is not None and config.fallback_model not in self.callable_models:
            raise ValueError(f"fallback model {config.fallback_model!r} has no upstream in the pool file, or is "
                             f"disabled there; models with one, enabled: {self.callable_models}")
        self._best_among = set(self.callable_models)
        self._in_flight = 0
        self.metrics.in_flight.set_function(lambda: self._in_flight)
        self.router: Router | None = None
        self.forwarder: Forwarder | None = None
        if not self.callable_models:        # a valid start (the default pool has no upstreams), said once
            log.warning("%s: no pool model has both a base_url and enabled = true: /v1/chat/completions will "
                        "answer 503; the decision-only endpoints work", config.pool_path or DEFAULT_POOL_PATH)

    @contextlib.asynccontextmanager
    async def lifespan(self, app):
        # Both clients belong to the server's event loop, so they are made here rather than in __init__.
        self.router = Router(self.config.selector_address, self.config.route_timeout_s)
        self.forwarder = Forwarder(self.config, self.upstreams, self.metrics)
        flusher = asyncio.ensure_future(self._flush_log())
        try:
            yield
        finally:
            flusher.cancel()
            await self.forwarder.close()
            await self.router.close()

    async def _flush_log(self) -> None:
        """Writes the counts of suppressed failure lines once their interval is over (a burst that ends would
        otherwise keep its count until the next failure of its kind)."""
        while True:
            await asyncio.sleep(1.0)
            self.log.flush()

    def app(self) -> Starlette:
        routes = [Route("/v1/chat/completions", self.chat_completions, methods=["POST"]),
                  Route("/v1/models", self.models, methods=["GET"]),
                  Route("/v1/routoo/route", self.route, methods=["POST"]),
                  Route("/v1/routoo/score", self.score, methods=["POST"]),
                  Route("/health", self.health, methods=["GET"]),
                  Route("/livez", self.live, methods=["GET"]),
                  Route("/metrics", self.prometheus, methods=["GET"]),
                  Route("/openapi.json", self.openapi, methods=["GET"])]
        return Starlette(routes=routes, lifespan=self.lifespan, middleware=[Middleware(ContainFailures, log=self.log)],
                         exception_handlers={GatewayError: _gateway_error,
                                             404: _not_found, 405: _not_allowed})

    # --- chat completions ---------------------------------------------------------------------------

    async def chat_completions(self, request: Request) -> Response:
        if self._in_flight >= self.config.max_concurrent_requests:
            self.metrics.requests.labels("none", "429").inc()
            return GatewayError(429, f"the gateway is handling its limit of {self.config.max_concurrent_requests} "
                                     f"concurrent requests; retry with backoff", type="rate_limit_error",
                                code="gateway_overloaded").response()
        self._in_flight += 1
        handed_over = False               # a stream releases its slot when it ends
        try:
            self._authorize(request)
            try:
                body = await read_json(request, self.config)
            except ClientDisconnect:
                return self._client_left()
            decision, stream = await self._decide(body)
            forward = {k: v for k, v in body.items() if k != "routoo"}
            if stream:                    # headers come after the prefill only; then RelayResponse watches
                response = await self._forward(decision, forward, stream)
            else:
                response = await unless_client_leaves(request, self._forward(decision, forward, stream))
            if response is None:          # gone before its answer: the upstream call was cancelled, and closed
                return self._client_left()
            handed_over = isinstance(response, RelayResponse)
            return response
        except GatewayError as e:
            self.metrics.requests.labels("none", str(e.status)).inc()
            if e.status >= 500:
                self.log.warning(("chat", e.status, e.code), "chat completion -> %d %s", e.status, e.code)
            return e.response()
        finally:
            if not handed_over:
                self._in_flight -= 1

    def _client_left(self) -> Response:
        self.metrics.requests.labels("none", "499").inc()
        return Response(status_code=499)  # nginx's "client closed request": nobody reads it

    async def _decide(self, body: dict) -> tuple[Decision, bool]:
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise bad_request("'model' must be 'routoo', 'routoo:<policy>=<value>' or a pool model name",
                              param="model")
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise bad_request("'messages' must be a non-empty list of {role, content} objects", param="messages")
        stream = body.get("stream")
        stream = False if stream is None else stream        # null is OpenAI's "not set"
        if not isinstance(stream, bool):
            raise bad_request(f"'stream' must be true or false, got {stream!r}", param="stream")
        if not is_routed(model):
            if model not in self.pool.names:
                raise GatewayError(400, f"unknown model {model!r}; use 'routoo', 'routoo:<policy>=<value>' or one "
                                        f"of the pool's models {self.callable_models}", param="model",
                                   code="model_not_found")
            if model not in self.upstreams:
                raise GatewayError(400, f"pool model {model!r} has no upstream (base_url in the pool file)",
                                   param="model", code="model_not_found")
            if model not in self.callable_models:   # as /v1/models and routing leave it out
                raise GatewayError(400, f"pool model {model!r} is disabled in the pool file (enabled = false)",
                                   param="model", code="model_not_found")
            return unrouted(model), stream
        policy = parse_policy(model)
        if not self.callable_models:
            raise GatewayError(503, "no pool model has an upstream and enabled = true: give models a base_url "
                                    "in the pool file (see selector/pool.toml)", type="service_unavailable",
                               code="upstream_not_configured")
        constraints = constraints_from_body(body.get("routoo"), self.pool.names, self.callable_models)
        try:
            prompt = scored_text(messages, self.config.prompt_rule)
        except BadMessages as e:
            raise bad_request(str(e), param="messages") from e
        try:
            decision = await self.router.route(prompt, policy, constraints, self._best_among)
        except GatewayError as e:
            raise_unless_selector_down(e)
            fallback = self.config.fallback_model
            if fallback is None or fallback in constraints.deny or (constraints.allow and fallback not in
                                                                   constraints.allow):
                raise                     # no fallback, or one the request's own allow/deny rules out
            self.log.warning(("fallback", e.code), "selector unavailable (%s): forwarding to the fallback model %s",
                             e.code, self.config.fallback_model)
            return unrouted(self.config.fallback_model, fallback=True), stream
        self.metrics.routing_seconds.observe(decision.route_seconds)
        return decision, stream

    async def _forward(self, decision: Decision, body: dict, stream: bool) -> Response:
        answer = await self.forwarder.open(decision.candidates, body, stream=stream)
        try:
            return await self._respond(answer, decision, stream)
        except BaseException:
            answer.response.close()       # whatever failed, the upstream's connection is not left open
            raise

    async def _respond(self, answer: Answer, decision: Decision, stream: bool) -> Response:
        upstream, upstream_response = answer.upstream, answer.response
        status = upstream_response.status
        headers = self._decision_headers(decision, upstream.model, answer.attempts)
        headers.update({k.lower(): v for k, v in upstream_response.headers.items()
                        if k.lower() in _PASSED_HEADERS and v.isascii() and v.isprintable()})
        content_type = upstream_response.headers.get("content-type", "")
        if stream and status < 300 and content_type.startswith("text/event-stream"):
            rewriter = EventRewriter(upstream.model)

            async def done(outcome: str) -> None:
                self._in_flight -= 1
                self.metrics.upstream_seconds.labels(upstream.model).observe(time.perf_counter() - answer.started)
                if outcome in ("broken", "truncated"):
                    reason = "broken_mid_stream" if outcome == "broken" else "stream_ended_early"
                    self.metrics.upstream_failures.labels(upstream.model, reason).inc()
                elif outcome == "relay_failed":
                    self.log.warning(("relay", relay.failure), "relaying a stream failed on an unexpected %s",
                                     relay.failure)
                if rewriter.usage is not None:
                    self._account(upstream, rewriter.usage, decision)

            self.metrics.requests.labels(upstream.model, str(status)).inc()
            relay = RelayResponse(upstream_response, rewriter, status, headers, done)
            return relay
        try:
            data = await read_limited(upstream_response, MAX_ANSWER_BYTES if status < 300 else MAX_ERROR_BODY_BYTES)
        except UPSTREAM_ERRORS as e:     # the answer broke off after its headers
            raise GatewayError(502, f"upstream {upstream.model!r} broke off its answer ({type(e).__name__})",
                               type="upstream_error", code="upstream_broken") from e
        finally:
            upstream_response.release()
        self.metrics.upstream_seconds.labels(upstream.model).observe(time.perf_counter() - answer.started)
        if status < 300:
            data = self._rewrite_answer(data, upstream, decision)
        self.metrics.requests.labels(upstream.model, str(status)).inc()
        return Response(data, status_code=status, headers=headers)

    def _rewrite_answer(self, data: bytes, upstream, decision: Decision) -> bytes:
        try:
            answer = json.loads(data)
        except (ValueError, RecursionError):
            return data                  # not JSON (or nested past Python's limit): passed on untouched
        if not isinstance(answer, dict):
            return data
        if isinstance(answer.get("usage"), dict):
            self._account(upstream, answer["usage"], decision)
        if "model" in answer:
            answer["model"] = upstream.model
        return to_bytes(answer)

    def _account(self, upstream, usage: dict, decision: Decision) -> None:
        cost = upstream.cost_usd(usage)
        if cost is None:
            return
        self.metrics.spend_usd.labels(upstream.model, "true" if decision.routed else "false").inc(cost)
        self.metrics.tokens.labels(upstream.model, "prompt").inc(usage["prompt_tokens"])
        self.metrics.tokens.labels(upstream.model, "completion").inc(usage["completion_tokens"])
        if decision.routed and decision.best_model is not None:
            self.metrics.best_model_spend_usd.inc(self.upstreams[decision.best_model].cost_usd(usage))

    @staticmethod
    def _decision_headers(decision: Decision, model: str, attempts: int) -> dict[str, str]:
        headers = {"x-routoo-model": header_text(model), "x-routoo-attempts": str(attempts)}
        if decision.routed:
            quality, cost = decision.quality.get(model, math.nan), decision.expected_cost_usd.get(model, math.nan)
            headers.update({"x-routoo-quality": f"{quality:.4f}", "x-routoo-expected-cost-usd": f"{cost:.6g}",
                            "x-routoo-policy": decision.policy})
        if decision.fallback:
            headers["x-routoo-fallback"] = "true"
        return headers

    # --- decision-only endpoints -------------------------------------------------------------------

    async def route(self, request: Request) -> Response:
        self._authorize(request)
        body = await read_json(request, self.config)
        if "messages" in body:            # a convenience: the chat's text under the gateway's prompt rule
            if "prompt" in body:
                raise bad_request("give 'prompt' or 'messages', not both", param="messages")
            messages = body.pop("messages")
            try:
                body = {**body, "prompt": scored_text(messages, self.config.prompt_rule)}
            except BadMessages as e:
                raise bad_request(str(e), param="messages") from e
        decision = await self.router.call("Route", _parse(body, pb.RouteRequest()))
        return JSONResponse(_to_json(decision))

    async def score(self, request: Request) -> Response:
        self._authorize(request)
        body = await read_json(request, self.config)
        return JSONResponse(_to_json(await self.router.call("Score", _parse(body, pb.ScoreRequest()))))

    # --- the rest -----------------------------------------------------------------------------------

    async def models(self, request: Request) -> Response:
        self._authorize(request)
        entries = [{"id": ROUTED_MODEL, "object": "model", "created": 0, "owned_by": "routoo"}]
        for m in self.pool.models:
            if m.name in self.callable_models:
                entries.append({"id": m.name, "object": "model", "created": 0, "owned_by": "routoo-pool",
                                "input_usd_per_mtok": m.input_usd_per_mtok,
                                "output_usd_per_mtok": m.output_usd_per_mtok})
        return JSONResponse({"object": "list", "data": entries})

    async def live(self, request: Request) -> Response:
        """200 while the gateway's event loop answers: Kubernetes' liveness. /health asks the selector too,
        and a liveness probe on it restarted every gateway (cutting its streams) while the selector was down."""
        return JSONResponse({"status": "live"})

    async def health(self, request: Request) -> Response:
        """200 while the selector serves (or a fallback model is configured), else 503."""
        try:
            reply = await health_pb2_grpc.HealthStub(self.router.channel).Check(
                health_pb2.HealthCheckRequest(service=SERVICE_NAME), timeout=2.0)
            serving = reply.status == health_pb2.HealthCheckResponse.SERVING
        except Exception:                 # unreachable or not serving: the answer is the same
            serving = False
        ok = serving or self.config.fallback_model is not None
        return JSONResponse({"status": "ok" if serving else "degraded" if ok else "unavailable",
                             "selector": self.config.selector_address, "selector_serving": serving,
                             "upstreams": len(self.upstreams)}, status_code=200 if ok else 503)

    async def prometheus(self, request: Request) -> Response:
        return Response(generate_latest(self.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    async def openapi(self, request: Request) -> Response:
        return JSONResponse(openapi_schema())

    def _authorize(self, request: Request) -> None:
        if self.client_key is None:
            return
        given = request.headers.get("authorization", "")
        token = given[7:].encode("utf-8") if given[:7].lower() == "bearer " else b""
        if not hmac.compare_digest(token, self.client_key):      # constant time: no key guessing by timing
            raise GatewayError(401, "invalid or missing API key: send 'Authorization: Bearer <key>' with the key "
                                    "of the gateway's --api-key-env", code="invalid_api_key",
                               headers={"www-authenticate": "Bearer"})


def _parse(body: dict, message):
    try:
        return json_format.ParseDict(body, message)
    except json_format.ParseError as e:
        raise bad_request(f"{message.DESCRIPTOR.name}: {e}", code="invalid_routoo_request") from e


def _to_json(message) -> dict:
    return json_format.MessageToDict(message, preserving_proto_field_name=True,
                                     always_print_fields_with_no_presence=True)


async def _gateway_error(request: Request, e: GatewayError) -> Response:
    return e.response()


async def _not_found(request: Request, exc) -> Response:
    return GatewayError(404, f"no route {request.url.path}", code="not_found").response()


async def _not_allowed(request: Request, exc) -> Response:
    return GatewayError(405, f"{request.method} is not allowed on {request.url.path}",
                        code="method_not_allowed").response()
