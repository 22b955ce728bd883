"""The selector's gRPC server (grpc.aio), shaped as grpc's Python examples: create_server(), serve(); its
command is cli/selector.py.

The server owns the servicer (selector/service.py, which answers the RPCs), the predictor client, the health
service that follows the predictor's readiness, reflection and /metrics, and stops them all gracefully.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from typing import Callable, Coroutine

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from selector.admission import Admission, add_selector_servicer
from selector.coalescer import CoalescingScores
from selector.config import SelectorConfig
from selector.metrics import SelectorMetrics
from selector.pool import Pool, PoolError, load_pool, match_pool
from selector.proto import selector_pb2 as pb
from selector.replicas import scores_from_config
from selector.service import SelectorService
from selector.triton_scores import PredictorTimeout, PredictorUnavailable, ScoreSource

log = logging.getLogger("routoo.selector")

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Selector"].full_name   # "routoo.selector.v1.Selector"


class StartupError(RuntimeError):
    """The selector cannot start: the predictor never became ready, or the pool file does not match it."""


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
        # /metrics first: a port in use is then a start-up error naming it, with no gRPC server left running.
        if self._config.metrics_port is not None:
            try:
                self._metrics_http, _ = self.metrics.serve_http(self._config.host, self._config.metrics_port)
            except OSError as e:
                raise StartupError(f"cannot serve /metrics on {self._config.host}:{self._config.metrics_port}: "
                                   f"{e.strerror or e}") from e
            self.metrics_port = self._metrics_http.server_port
        await self.grpc_server.start()
        # create_server has just read the predictor's config, so both start SERVING; the watcher follows.
        for service in ("", SERVICE_NAME):
            await self._health.set(service, health_pb2.HealthCheckResponse.SERVING)
        self._watcher = asyncio.create_task(self._watch_predictor())

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
        self.service.drain()
        await self.grpc_server.stop(self._config.grace_s if grace is None else grace)
        if self._metrics_http is not None:
            self._metrics_http.shutdown()
            self._metrics_http.server_close()
        await self._scores.close()

    async def wait_for_termination(self) -> None:
        await self.grpc_server.wait_for_termination()


def load_checked_pool(config: SelectorConfig) -> Pool:
    """The pool file of `config`, with its fallback model checked against it; PoolError otherwise. What
    needs no predictor, so `routoo serve` calls it before it starts Triton."""
    pool = load_pool(config.pool_path)
    if not any(m.enabled for m in pool.models):
        # Health would say SERVING, and every Route and RouteBatch be refused.
        raise PoolError(f"every model of the pool file {config.pool_path} is disabled (enabled = false): no "
                        f"request could be routed")
    if config.fallback_model is not None and config.fallback_model not in pool.names:
        raise PoolError(f"fallback_model {config.fallback_model!r} is not in the pool; valid models are {pool.names}")
    if config.fallback_model is not None and not pool.models[pool.names.index(config.fallback_model)].enabled:
        # Health would say SERVING on the strength of a fallback that Route never answers with.
        raise PoolError(f"fallback_model {config.fallback_model!r} is disabled in the pool file (enabled = false)")
    return pool


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
    pool = load_checked_pool(config)
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
