"""The selector's gRPC server (grpc.aio), shaped as grpc's Python examples: create_server(), serve(); its command is cli/selector.py.

Each RPC validates its request, asks the predictor in Triton for the prompt's per-model quality and expected
cost, and lets a policy (or the budgeted assignment) decide. Errors are answered per request with the
status codes of the API (selector.proto); the server keeps serving. Prompt text is never logged.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import signal
import struct
import time
from typing import Callable, Coroutine

import grpc
import numpy as np
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from selector.admission import Admission, add_selector_servicer, materialise, short_message
from selector.coalescer import CoalescingScores, Overloaded, ScoredBatch
from selector.config import SelectorConfig
from selector.log_limits import AggregatedLog
from selector.metrics import SelectorMetrics
from selector.budget import BudgetTooSmall, assign_budget
from selector.constraints import ELIGIBLE, Constraints, InvalidRequest, NoEligibleModel, require_eligible
from selector.policies import POLICIES, Policy, TradeoffPolicy, make_policy, rank_rows
from selector.pool import Pool, PoolColumns, PoolError, load_pool, match_pool
from selector.proto import selector_pb2 as pb
from selector.proto import selector_pb2_grpc as pb_grpc
from selector.replicas import scores_from_config
from selector.triton_scores import PredictorError, PredictorTimeout, PredictorUnavailable, ScoreSource

log = logging.getLogger("routoo.selector")

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Selector"].full_name   # "routoo.selector.v1.Selector"
_METHODS = ("Route", "RouteBatch", "Score")
# A letter or a digit (str.isalnum's sense, any script): a prompt without one has no token the predictor
# knows (only zero-width characters, emoji, marks, punctuation) and is scored by the prior alone.
_CONTENT = re.compile(r"[^\W_]")
_STATUS_OF = {InvalidRequest: grpc.StatusCode.INVALID_ARGUMENT,
              NoEligibleModel: grpc.StatusCode.FAILED_PRECONDITION,
              BudgetTooSmall: grpc.StatusCode.FAILED_PRECONDITION,
              PredictorUnavailable: grpc.StatusCode.UNAVAILABLE,
              PredictorTimeout: grpc.StatusCode.DEADLINE_EXCEEDED,
              PredictorError: grpc.StatusCode.INTERNAL,
              Overloaded: grpc.StatusCode.RESOURCE_EXHAUSTED}


# Keys of ScoredBatch.memo: per-row finiteness, the batch in pool order, and its values as Python lists.
_FINITE_ROWS, _POOL_ORDER, _LISTS = "finite_rows", "pool_order", "lists"


class StartupError(RuntimeError):
    """The selector cannot start: the predictor never became ready, or the pool file does not match it."""


class SelectorService(pb_grpc.SelectorServicer):
    def __init__(self, config: SelectorConfig, pool: Pool, columns: PoolColumns, scores: ScoreSource,
                 metrics: SelectorMetrics):
        self._config = config
        self._pool = pool
        self._columns = columns
        self._scores = scores
        # Coalesced answers come as rows of a shared batch, whose conversion and rankings are done once.
        self._score_rows = getattr(scores, "score_rows", None)
        self._metrics = metrics
        self._in_flight = 0          # one event loop: a plain counter is safe
        # One line per kind of failure per interval: a predictor outage failed ~750 requests/s, one line each.
        self.warnings = AggregatedLog(log, interval_s=config.log_interval_s,
                                      on_suppressed=metrics.log_lines_suppressed.inc)
        # Labelled metric children looked up once (labels() takes a lock and a dict lookup per call).
        self._decisions = [metrics.decisions.labels(name) for name in pool.names]
        self._request_seconds = {m: metrics.request_seconds.labels(m) for m in _METHODS}
        self._triton_seconds = {m: metrics.triton_seconds.labels(m) for m in _METHODS}
        self._scores_wire = _ScoresWire(pool.names)
        # What a request that sets no policy and no constraints gets (the common case), built once.
        self._default_policy = TradeoffPolicy(config.default_quality_per_usd)
        self._no_constraints = Constraints()
        # Read at scrape time: no gauge lock taken twice per RPC.
        metrics.in_flight.set_function(lambda: self._in_flight)

    # --- RPCs ---------------------------------------------------------------------------------------

    async def Route(self, request: pb.RouteRequest, context) -> pb.RouteDecision:
        return await self._answer("Route", self._route, request, context)

    async def RouteBatch(self, request: pb.RouteBatchRequest, context) -> pb.RouteBatchResponse:
        return await self._answer("RouteBatch", self._route_batch, request, context)

    async def Score(self, request: pb.ScoreRequest, context) -> pb.ScoreResponse:
        return await self._answer("Score", self._score_rpc, request, context)

    async def ListModels(self, request: pb.ListModelsRequest, context) -> pb.ListModelsResponse:
        return pb.ListModelsResponse(models=[
            pb.PoolModel(name=m.name, input_usd_per_mtok=m.input_usd_per_mtok,
                         output_usd_per_mtok=m.output_usd_per_mtok, p95_latency_ms=m.p95_latency_ms,
                         enabled=m.enabled, cost_scale=float(scale))
            for m, scale in zip(self._pool.models, self._columns.cost_scale)])

    # --- handlers -----------------------------------------------------------------------------------

    async def _route(self, request: pb.RouteRequest, context) -> pb.RouteDecision:
        policy = self._policy(request)
        constraints = self._constraints(request.constraints)
        self._check_prompts([request.prompt], "prompt")
        try:
            batch, row = await self._predict_rows("Route", [request.prompt], context)
        except (PredictorUnavailable, PredictorTimeout) as e:
            fallback = self._fallback(constraints, policy, e)
            if fallback is None:
                raise
            return fallback
        quality, cost = batch.memo[_POOL_ORDER]                # (batch rows, n_models), pool order
        names = self._pool.names
        if len(quality) >= self._config.batch_decide_min_rows:
            # Decided once for the whole coalesced batch per (policy, constraints), as the one-prompt path.
            key = (type(policy), policy.value, constraints)
            decided = batch.memo.get(key)
            if decided is None:
                decided = batch.memo[key] = rank_rows(policy, constraints, self._pool, quality, cost)
            codes, ranking = decided[0][row], decided[1][row]
            lists = batch.memo.get(_LISTS)
            if lists is None:
                lists = batch.memo[_LISTS] = (quality.tolist(), cost.tolist())
            q, c = lists[0][row], lists[1][row]
        else:
            # One prompt: plain Python over the row (exclusions_one, rank) beats numpy's per-call overhead
            # on tens of models, with the same decisions as the array versions.
            codes = constraints.exclusions_one(self._pool, cost[row])
            q, c = quality[row].tolist(), cost[row].tolist()
            ranking = policy.rank(q, c, [j for j, code in enumerate(codes) if code == ELIGIBLE])
        if not ranking:
            require_eligible(np.array([codes]), constraints)     # raises NoEligibleModel, naming the culprits
        # Messages built in place (.add): a list of messages passed to the constructor is copied again,
        # which was most of a Route's own time.
        chosen = ranking[0]
        self._decisions[chosen].inc()
        decision = pb.RouteDecision(model=names[chosen], quality=q[chosen], expected_cost_usd=c[chosen],
                                    policy=policy.describe())
        for j in ranking[1:1 + self._config.runners_up]:
            decision.runners_up.add(model=names[j], quality=q[j], expected_cost_usd=c[j])
        if not request.HasField("include_scores") or request.include_scores:
            decision.MergeFromString(self._scores_wire.encode(q, c))
        if _CONTENT.search(request.prompt) is None:
            decision.content_free = True
        if len(ranking) < len(codes):
            for j, code in enumerate(codes):
                if code != ELIGIBLE:
                    decision.excluded.add(model=names[j], reason=constraints.reason(code, self._pool, j, c[j]))
        return decision

    async def _route_batch(self, request: pb.RouteBatchRequest, context) -> pb.RouteBatchResponse:
        budget_usd = request.total_budget_usd
        if not budget_usd >= 0:
            raise InvalidRequest("total_budget_usd", f"must be a number >= 0 (USD), got {budget_usd}")
        constraints = self._constraints(request.constraints)
        prompts = await materialise(request.prompts)
        self._check_prompts(prompts, "prompts")
        quality, cost = await self._predict("RouteBatch", prompts, context)        # (batch, n_models) each
        eligible = require_eligible(constraints.exclusions(self._pool, cost), constraints)
        # 10k x 32 takes tens of ms: off the event loop, so single Route calls keep flowing meanwhile.
        result = await asyncio.to_thread(assign_budget, quality, cost, eligible, budget_usd)
        rows = np.arange(len(prompts))
        names = np.array(self._pool.names, dtype=object)
        for j, count in enumerate(np.bincount(result.choice, minlength=len(names)).tolist()):
            if count:
                self._decisions[j].inc(count)
        response = pb.RouteBatchResponse(total_expected_cost_usd=result.total_cost_usd,
                                         total_quality=result.total_quality,
                                         quality_per_usd=result.quality_per_usd)
        response.model.extend(names[result.choice].tolist())
        response.quality.extend(quality[rows, result.choice].tolist())
        response.expected_cost_usd.extend(cost[rows, result.choice].tolist())
        return response

    async def _score_rpc(self, request: pb.ScoreRequest, context) -> pb.ScoreResponse:
        prompts = await materialise(request.prompts)
        self._check_prompts(prompts, "prompts")
        quality, cost = await self._predict("Score", prompts, context)
        response = pb.ScoreResponse(models=self._pool.names)
        response.quality.extend(quality.ravel().tolist())
        response.expected_cost_usd.extend(cost.ravel().tolist())
        return response

    # --- shared steps -------------------------------------------------------------------------------

    async def _answer(self, method: str, handler, request, context):
        """Bounded concurrency, latency metrics, and the mapping of domain errors onto status codes."""
        if self._in_flight >= self._config.max_concurrent_requests:
            self._metrics.errors.labels(method, "RESOURCE_EXHAUSTED").inc()
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                f"the selector is handling its limit of {self._config.max_concurrent_requests} "
                                f"concurrent requests; retry with backoff")
        self._in_flight += 1
        start = time.perf_counter()
        try:
            return await handler(request, context)
        except tuple(_STATUS_OF) as e:
            code, message = next(status for kind, status in _STATUS_OF.items() if isinstance(e, kind)), str(e)
        except asyncio.CancelledError:     # the caller went away: theirs, not ours to warn about
            self._metrics.cancelled.labels(method).inc()
            log.debug("%s cancelled by the caller", method)
            raise
        except Exception:            # a bug: the log has the traceback, the caller a plain message
            self.warnings.log(logging.ERROR, (method, "bug"), "%s failed", method, exc_info=True)
            code, message = grpc.StatusCode.INTERNAL, "internal error in the selector; see its log"
        finally:
            self._in_flight -= 1
            self._request_seconds[method].observe(time.perf_counter() - start)
        self._metrics.errors.labels(method, code.name).inc()
        message = short_message(message)
        remaining = context.time_remaining()
        if code == grpc.StatusCode.DEADLINE_EXCEEDED and remaining is not None and remaining < 0.05:
            log.debug("%s -> %s (the caller's deadline): %s", method, code.name, message)
        elif code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.INTERNAL):
            self.warnings.warning((method, code.name), "%s -> %s: %s", method, code.name, message)
        await context.abort(code, message)

    def _policy(self, request: pb.RouteRequest) -> Policy:
        # The oneof's field names are the registry's names, and each message's one field is the parameter.
        which = request.WhichOneof("policy")
        if which is None:
            return self._default_policy
        return make_policy(which, getattr(getattr(request, which), POLICIES[which].parameter))

    def _constraints(self, message: pb.Constraints) -> Constraints:
        if message.ByteSize() == 0:        # unset or empty: no constraints
            return self._no_constraints
        constraints = Constraints(
            allow=tuple(message.allow), deny=tuple(message.deny),
            max_latency_ms=message.max_latency_ms if message.HasField("max_latency_ms") else None,
            max_cost_usd=message.max_cost_usd if message.HasField("max_cost_usd") else None)
        constraints.validate(self._pool)
        return constraints

    def _check_prompts(self, prompts: list[str], field: str) -> None:
        limit = self._config.max_prompt_bytes
        if field == "prompts":
            if not prompts:
                raise InvalidRequest("prompts", "must hold at least one prompt")
            if len(prompts) > self._config.max_batch_prompts:
                raise InvalidRequest("prompts", f"{len(prompts)} prompts is over the limit of "
                                                f"{self._config.max_batch_prompts} per call")
        for i, prompt in enumerate(prompts):
            name = field if field == "prompt" else f"prompts[{i}]"
            if not prompt.strip():
                raise InvalidRequest(name, f"must be 1 to {limit} bytes of UTF-8 text, got an empty prompt")
            # A character is at most 4 UTF-8 bytes: most prompts skip the encode.
            if len(prompt) * 4 > limit and len(prompt.encode("utf-8")) > limit:
                raise InvalidRequest(name, f"must be 1 to {limit} bytes of UTF-8 text, got "
                                           f"{len(prompt.encode('utf-8'))} bytes")

    async def _predict(self, method: str, prompts: list[str], context) -> tuple[np.ndarray, np.ndarray]:
        """(quality, expected_cost_usd), (batch, n_models) in pool order at pool prices."""
        batch, start = await self._predict_rows(method, prompts, context)
        quality, cost = batch.memo[_POOL_ORDER]
        return quality[start:start + len(prompts)], cost[start:start + len(prompts)]

    async def _predict_rows(self, method: str, prompts: list[str], context) -> tuple[ScoredBatch, int]:
        """The batch that scored `prompts` (coalesced with other requests' or not) and their first row;
        batch.memo[_POOL_ORDER] holds the whole batch's scores in pool order, converted once per batch."""
        timeout_s = self._config.triton_timeout_s
        remaining = context.time_remaining()
        if remaining is not None:         # the caller's own deadline wins when it is shorter
            timeout_s = min(timeout_s, remaining)
            if timeout_s <= 0:
                raise PredictorTimeout("the caller's deadline passed before the predictor was asked")
        start = time.perf_counter()
        try:
            if self._score_rows is not None:
                batch, first, stop = await self._score_rows(prompts, timeout_s=timeout_s)
            else:
                quality, cost = await self._scores.score(prompts, timeout_s=timeout_s)
                batch, first, stop = ScoredBatch(quality, cost), 0, len(prompts)
        finally:
            self._triton_seconds[method].observe(time.perf_counter() - start)
        finite = batch.memo.get(_FINITE_ROWS)
        if finite is None:
            quality, cost = batch.quality, batch.expected_cost_usd
            if quality.shape[1] != len(self._columns.columns):
                raise PredictorError(f"the predictor returned scores of shape {quality.shape}; expected "
                                     f"{len(self._columns.columns)} columns")
            finite = batch.memo[_FINITE_ROWS] = np.isfinite(quality).all(axis=1) & np.isfinite(cost).all(axis=1)
            batch.memo[_POOL_ORDER] = self._columns.apply(quality, cost)
        if not finite[first:stop].all():      # only the requests whose own rows are broken fail
            rows = batch.quality[first:stop], batch.expected_cost_usd[first:stop]
            raise PredictorError(f"the predictor returned {int(sum((~np.isfinite(r)).sum() for r in rows))} "
                                 f"non-finite values for {stop - first} prompt(s)")
        return batch, first

    def _fallback(self, constraints: Constraints, policy: Policy, error: Exception) -> pb.RouteDecision | None:
        """The configured fallback model, unscored, if the constraints that need no scores allow it."""
        name = self._config.fallback_model
        if name is None or constraints.max_cost_usd is not None:    # its cost is unknown without the predictor
            return None
        j = self._pool.index(name)
        no_cost = np.zeros((1, len(self._pool)))
        if constraints.exclusions(self._pool, no_cost)[0, j]:
            return None
        self.warnings.warning(("Route", "fallback"), "Route -> fallback %s: %s", name, error)
        self._decisions[j].inc()
        return pb.RouteDecision(model=name, quality=math.nan, expected_cost_usd=math.nan,
                                policy=policy.describe(), fallback=True)


class _ScoresWire:
    """RouteDecision.scores (one ModelScore per pool model, in pool order) in protobuf wire format.

    Merged into the decision with MergeFromString, which parses it like any other message: ~4x cheaper than
    32 `scores.add(...)` calls, the largest piece of Route's own work. Per model, the field-6 tag and length
    and the model name are fixed; only quality (field 2, float) and expected_cost_usd (field 3, double) vary.
    """

    _VALUES = struct.Struct("<BfBd")                 # tag of field 2 (fixed32), float, tag of field 3, double

    def __init__(self, names: list[str]):
        self._prefixes = []
        for name in names:
            data = name.encode("utf-8")
            name_field = b"\x0a" + _varint(len(data)) + data                     # field 1, length-delimited
            entry_length = len(name_field) + self._VALUES.size
            self._prefixes.append(b"\x32" + _varint(entry_length) + name_field)   # field 6, length-delimited

    def encode(self, quality: list[float], expected_cost_usd: list[float]) -> bytes:
        pack = self._VALUES.pack
        return b"".join([prefix + pack(0x15, q, 0x19, c)
                         for prefix, q, c in zip(self._prefixes, quality, expected_cost_usd)])


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


class SelectorServer:
    """The grpc.aio server plus what it owns: the predictor client, the health watcher, /metrics."""

    def __init__(self, server: grpc.aio.Server, service: SelectorService, health_servicer, scores: ScoreSource,
                 metrics: SelectorMetrics, config: SelectorConfig):
        self.grpc_server = server
        self.service = service
        self.metrics = metrics
        self.metrics_port: int | None = None
        self._health = health_servicer
        self._scores = scores
        self._config = config
        self._watcher: asyncio.Task | None = None
        self._metrics_http = None

    async def start(self) -> None:
        await self.grpc_server.start()
        # create_server has just read the predictor's config, so both start SERVING; the watcher follows.
        for service in ("", SERVICE_NAME):
            await self._health.set(service, health_pb2.HealthCheckResponse.SERVING)
        self._watcher = asyncio.create_task(self._watch_predictor())
        if self._config.metrics_port is not None:
            self._metrics_http, _ = self.metrics.serve_http(self._config.host, self._config.metrics_port)
            self.metrics_port = self._metrics_http.server_port

    async def _watch_predictor(self) -> None:
        """The Selector service reports SERVING while the predictor is ready (or a fallback is configured)."""
        serving = health_pb2.HealthCheckResponse.SERVING
        not_serving = health_pb2.HealthCheckResponse.NOT_SERVING
        while True:
            try:
                ready = await self._scores.ready()
            except Exception:        # the watcher must outlive any one failed check
                log.exception("predictor readiness check failed")
                ready = False
            self.metrics.predictor_ready.set(1 if ready else 0)
            self.service.warnings.flush()
            ok = ready or self._config.fallback_model is not None
            await self._health.set(SERVICE_NAME, serving if ok else not_serving)
            await asyncio.sleep(self._config.health_poll_s)

    async def stop(self, grace: float | None = None) -> None:
        """Stops taking calls, lets in-flight ones finish for `grace` seconds, then releases everything."""
        if self._watcher is not None:      # first, or it would report SERVING again
            self._watcher.cancel()
            await asyncio.gather(self._watcher, return_exceptions=True)
        await self._health.enter_graceful_shutdown()
        await self.grpc_server.stop(self._config.grace_s if grace is None else grace)
        if self._metrics_http is not None:
            self._metrics_http.shutdown()
            self._metrics_http.server_close()
        await self._scores.close()

    async def wait_for_termination(self) -> None:
        await self.grpc_server.wait_for_termination()


async def create_server(address: str | None = None, *, config: SelectorConfig | None = None,
                        scores: ScoreSource | None = None) -> tuple[SelectorServer, int]:
    """Builds the selector, not yet started; returns (server, bound port). Port 0 picks a free port.

    Waits up to config.startup_timeout_s for the predictor, then checks the pool file against the models it
    serves: a mismatch raises PoolMismatchError naming every difference, and nothing starts. `scores` (by
    default a TritonScores on config.triton_url, or a ReplicaSet where that names several replicas) then
    belongs to the server, which closes it.
    """
    config = config or SelectorConfig()
    address = address or config.address
    pool = load_pool(config.pool_path)
    if config.fallback_model is not None and config.fallback_model not in pool.names:
        raise PoolError(f"fallback_model {config.fallback_model!r} is not in the pool; valid models are {pool.names}")
    if scores is None:
        scores = scores_from_config(config)          # one TritonScores, or a ReplicaSet over several
    metrics = SelectorMetrics()
    if hasattr(scores, "register_metrics"):            # per-replica metrics of a ReplicaSet
        scores.register_metrics(metrics.registry)
    if config.coalesce:
        scores = coalescing(scores, config, metrics)
    try:
        columns = match_pool(pool, await _wait_for_predictor(scores, config))
        service = SelectorService(config, pool, columns, scores, metrics)
        health_servicer = health.aio.HealthServicer()
        # SO_REUSEPORT only where workers share the port (gRPC sets it by default, which would let a second
        # selector bind a port in use without an error).
        server = grpc.aio.server(options=[("grpc.max_receive_message_length", config.max_message_bytes),
                                          ("grpc.max_send_message_length", config.max_message_bytes),
                                          ("grpc.so_reuseport", 1 if config.workers > 1 else 0)])
        add_selector_servicer(service, server, Admission(config, metrics))
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        reflection.enable_server_reflection((SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
        try:
            port = server.add_insecure_port(address)
        except RuntimeError as e:      # grpc raises on a port in use
            raise StartupError(f"cannot bind {address}: {e}") from e
        if port == 0:
            raise StartupError(f"cannot bind {address}")
    except BaseException:
        await scores.close()
        raise
    return SelectorServer(server, service, health_servicer, scores, metrics, config), port


def coalescing(scores: ScoreSource, config: SelectorConfig, metrics: SelectorMetrics) -> CoalescingScores:
    """`scores` behind a CoalescingScores that reports its batches and queue waits to `metrics`."""
    return CoalescingScores(scores, max_rows=config.coalesce_max_rows, max_in_flight=config.coalesce_max_in_flight,
                            max_queued_rows=config.coalesce_max_queued_rows, on_batch=metrics.observe_batch,
                            on_wait=metrics.queue_wait_seconds.observe)


async def _wait_for_predictor(scores: ScoreSource, config: SelectorConfig):
    deadline = time.monotonic() + config.startup_timeout_s
    while True:
        try:
            return await scores.served_pool()
        except (PredictorUnavailable, PredictorTimeout) as e:
            if time.monotonic() > deadline:
                raise StartupError(f"the predictor was not ready within {config.startup_timeout_s:g} s: {e}") from e
        await asyncio.sleep(0.25)


async def serve(config: SelectorConfig | None = None, *,
                on_started: Callable[[SelectorServer, int], None] | None = None, worker_index: int = 0) -> None:
    """Runs the selector until SIGINT/SIGTERM, then stops it gracefully. With config.workers > 1, worker 0
    (the default) also starts and stops workers 1..N-1 on the same port (selector/workers.py)."""
    config = config or SelectorConfig()
    server, port = await create_server(config=config)
    await server.start()
    workers = None
    if worker_index == 0 and config.workers > 1:
        from selector.workers import ExtraWorkers

        workers = ExtraWorkers(config)
        try:
            await asyncio.to_thread(workers.start, config.startup_timeout_s)
        except BaseException:
            await asyncio.to_thread(workers.stop, 0.0)
            await server.stop(0)
            raise
    log.info("selector%s listening on %s:%d (predictor %s%s)", f" worker {worker_index}" if worker_index else "",
             config.host, port, config.triton_url, f", {config.workers} workers" if workers else "")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    if on_started is not None:
        on_started(server, port)
    try:
        await stop.wait()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        log.info("selector stopping")
        await server.stop()
        if workers is not None:
            await asyncio.to_thread(workers.stop, config.grace_s)


def run_event_loop(main: Coroutine, *, uvloop: bool) -> None:
    """asyncio.run(main), on uvloop's event loop when `uvloop` is set and the package is installed."""
    if uvloop:
        try:
            import uvloop as uvloop_module
        except ImportError:
            log.warning("uvloop is not installed; running on asyncio's own event loop")
        else:
            with asyncio.Runner(loop_factory=uvloop_module.new_event_loop) as runner:
                runner.run(main)
            return
    asyncio.run(main)


# `python -m selector.server` is an entry point, not an import: the command itself (its flags) lives in the
# CLI package with every other command, and nothing in selector/ imports cli/.
if __name__ == "__main__":
    from cli.selector import main

    main()
