"""The selector's servicer: the Route, RouteBatch, Score and ListModels RPCs (selector.proto).

Each RPC reads its request (selector/requests.py), asks the predictor in Triton for the prompts' per-model
quality and expected cost, and lets a policy (selector/policies.py) or the budgeted assignment
(selector/budget.py) decide. Errors are answered per request with the status codes of the API; the server
keeps serving. Prompt text is never logged. The server around it is selector/server.py.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time

import grpc
import numpy as np

from selector.admission import (Admission, Deferred, Rejected, Undecodable, leading_id, materialise,
                                short_message)
from selector.budget import BudgetTooSmall, assign_budget
from selector.coalescer import ScoredBatch
from selector.config import SelectorConfig
from selector.constraints import ELIGIBLE, Constraints, InvalidRequest, NoEligibleModel, require_eligible
from selector.log_limits import AggregatedLog
from selector.metrics import SelectorMetrics
from selector.policies import Policy, TradeoffPolicy, rank_rows
from selector.pool import Pool, PoolColumns
from selector.proto import selector_pb2 as pb
from selector.proto import selector_pb2_grpc as pb_grpc
from selector.requests import check_prompt_count, check_prompts, constraints_of, is_content_free, policy_of
from selector.scores_wire import ScoresWire
from selector.streams import RouteStreams
from selector.triton_scores import Overloaded, PredictorError, PredictorTimeout, PredictorUnavailable, ScoreSource

log = logging.getLogger("routoo.selector")

_METHODS = ("Route", "RouteBatch", "Score", "RouteStream")
_STATUS_OF = {InvalidRequest: grpc.StatusCode.INVALID_ARGUMENT,
              NoEligibleModel: grpc.StatusCode.FAILED_PRECONDITION,
              BudgetTooSmall: grpc.StatusCode.FAILED_PRECONDITION,
              PredictorUnavailable: grpc.StatusCode.UNAVAILABLE,
              PredictorTimeout: grpc.StatusCode.DEADLINE_EXCEEDED,
              PredictorError: grpc.StatusCode.INTERNAL,
              Overloaded: grpc.StatusCode.RESOURCE_EXHAUSTED}

# Keys of ScoredBatch.memo: per-row finiteness, the batch in pool order, and its values as Python lists.
_FINITE_ROWS, _POOL_ORDER, _LISTS = "finite_rows", "pool_order", "lists"


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
        self._stream_messages = 0    # RouteStream messages being decided, over all streams
        # One line per kind of failure per interval: a predictor outage failed ~750 requests/s, one line each.
        self.warnings = AggregatedLog(log, interval_s=config.log_interval_s,
                                      on_suppressed=metrics.log_lines_suppressed.inc)
        self._streams = RouteStreams(config, self.warnings)
        # Labelled metric children looked up once (labels() takes a lock and a dict lookup per call).
        self._decisions = [metrics.decisions.labels(name) for name in pool.names]
        self._request_seconds = {m: metrics.request_seconds.labels(m) for m in _METHODS}
        self._triton_seconds = {m: metrics.triton_seconds.labels(m) for m in _METHODS}
        self._scores_wire = ScoresWire(pool.names)
        # What a request that sets no policy and no constraints gets (the common case), built once.
        self._default_policy = TradeoffPolicy(config.default_quality_per_usd)
        self._no_constraints = Constraints()
        # Read at scrape time: no gauge lock taken twice per RPC.
        metrics.in_flight.set_function(lambda: self._in_flight)
        metrics.stream_messages_in_flight.set_function(lambda: self._stream_messages)

    # --- RPCs ---------------------------------------------------------------------------------------

    async def Route(self, request: pb.RouteRequest, context) -> pb.RouteDecision:
        return await self._answer("Route", self._route, request, context)

    async def RouteBatch(self, request: pb.RouteBatchRequest, context) -> pb.RouteBatchResponse:
        return await self._answer("RouteBatch", self._route_batch, request, context)

    async def Score(self, request: pb.ScoreRequest, context) -> pb.ScoreResponse:
        return await self._answer("Score", self._score_rpc, request, context)

    async def RouteStream(self, requests, context, admission: Admission) -> None:
        """Route for each message of the stream, answered as each is decided (selector.proto; the slots,
        the order of answers and the drain are selector/streams.py's)."""
        await self._streams.serve(requests, context, lambda item: self._stream_route(item, context, admission))

    def drain(self) -> None:
        """Stops every RouteStream reading (SelectorServer.stop, before the grace period)."""
        self._streams.drain()

    async def ListModels(self, request: pb.ListModelsRequest, context) -> pb.ListModelsResponse:
        return pb.ListModelsResponse(models=[
            pb.PoolModel(name=m.name, input_usd_per_mtok=m.input_usd_per_mtok,
                         output_usd_per_mtok=m.output_usd_per_mtok, p95_latency_ms=m.p95_latency_ms,
                         enabled=m.enabled, cost_scale=float(scale))
            for m, scale in zip(self._pool.models, self._columns.cost_scale)])

    # --- handlers -----------------------------------------------------------------------------------

    async def _route_streamed(self, request: pb.RouteRequest, context) -> pb.RouteDecision:
        return await self._route(request, context, "RouteStream")

    async def _route(self, request: pb.RouteRequest, context, method: str = "Route") -> pb.RouteDecision:
        policy = policy_of(request, self._default_policy)
        constraints = constraints_of(request.constraints, self._pool, self._no_constraints)
        check_prompts([request.prompt], "prompt", self._config)
        try:
            batch, row = await self._predict_rows(method, [request.prompt], context)
        except (PredictorUnavailable, PredictorTimeout) as e:
            fallback = self._fallback(constraints, policy, e, method)
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
        if is_content_free(request.prompt):
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
        constraints = constraints_of(request.constraints, self._pool, self._no_constraints)
        check_prompt_count(len(request.prompts), self._config)       # before 20,000+ strings are made
        prompts = await materialise(request.prompts)
        check_prompts(prompts, "prompts", self._config)
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
        check_prompt_count(len(request.prompts), self._config)
        prompts = await materialise(request.prompts)
        check_prompts(prompts, "prompts", self._config)
        quality, cost = await self._predict("Score", prompts, context)
        response = pb.ScoreResponse(models=self._pool.names)
        response.quality.extend(quality.ravel().tolist())
        response.expected_cost_usd.extend(cost.ravel().tolist())
        return response

    # --- shared steps -------------------------------------------------------------------------------

    async def _answer(self, method: str, handler, request, context):
        """A unary RPC: the handler's response, or the call aborted with the status of what went wrong."""
        response, failure = await self._settle(method, handler, request, context)
        if failure is not None:
            await context.abort(*failure)
        return response

    async def _settle(self, method: str, handler, request, context, *, streamed: bool = False):
        """(response, None) or (None, (status code, message)): bounded concurrency, latency metrics, and the
        mapping of domain errors onto status codes, shared by the unary RPCs and RouteStream's messages
        (`streamed`: bounded by RouteStream's slots instead of max_concurrent_requests)."""
        if streamed:
            self._stream_messages += 1
        elif self._in_flight >= self._config.max_concurrent_requests:
            self._metrics.errors.labels(method, "RESOURCE_EXHAUSTED").inc()
            return None, (grpc.StatusCode.RESOURCE_EXHAUSTED,
                          f"the selector is handling its limit of {self._config.max_concurrent_requests} "
                          f"concurrent requests; retry with backoff")
        else:
            self._in_flight += 1
        start = time.perf_counter()
        try:
            return await handler(request, context), None
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
            if streamed:
                self._stream_messages -= 1
            else:
                self._in_flight -= 1
            self._request_seconds[method].observe(time.perf_counter() - start)
        self._metrics.errors.labels(method, code.name).inc()
        message = short_message(message)
        remaining = context.time_remaining()
        if code == grpc.StatusCode.DEADLINE_EXCEEDED and remaining is not None and remaining < 0.05:
            log.debug("%s -> %s (the caller's deadline): %s", method, code.name, message)
        elif code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.INTERNAL):
            self.warnings.warning((method, code.name), "%s -> %s: %s", method, code.name, message)
        return None, (code, message)

    async def _stream_route(self, item, context, admission: Admission) -> pb.RouteStreamResponse:
        """One RouteStream message's answer: its decision or its error, never an exception (but
        cancellation), so that the stream and its other messages go on."""
        # A big message's id is read from its first bytes now: they are gone once it is decoded. A small one
        # that did not decode had its id read by the deserializer.
        kind = type(item)
        wire_id = leading_id(item.data) if kind is Deferred else item.id if kind is Undecodable else ""
        try:
            async with admission.message(item) as message:
                response = pb.RouteStreamResponse(id=message.id)
                decision, failure = await self._settle("RouteStream", self._route_streamed, message.route, context,
                                                       streamed=True)
        except Rejected as e:             # not decoded: its id is read from its first bytes, where it can be
            admission.count_rejection("RouteStream", e)
            response = pb.RouteStreamResponse(id=wire_id)
            decision, failure = None, (e.code, short_message(e.message))
        if failure is None:
            response.decision.CopyFrom(decision)
        else:
            response.error.code, response.error.message = failure[0].name, failure[1]
        return response

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

    def _fallback(self, constraints: Constraints, policy: Policy, error: Exception,
                  method: str = "Route") -> pb.RouteDecision | None:
        """The configured fallback model, unscored, if the constraints that need no scores allow it."""
        name = self._config.fallback_model
        if name is None or constraints.max_cost_usd is not None:    # its cost is unknown without the predictor
            return None
        j = self._pool.index(name)
        no_cost = np.zeros((1, len(self._pool)))
        if constraints.exclusions(self._pool, no_cost)[0, j]:
            return None
        self.warnings.warning((method, "fallback"), "%s -> fallback %s: %s", method, name, error)
        self._decisions[j].inc()
        return pb.RouteDecision(model=name, quality=math.nan, expected_cost_usd=math.nan,
                                policy=policy.describe(), fallback=True)
