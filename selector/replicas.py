"""Several Triton replicas behind one selector: a ScoreSource over one TritonScores per replica.

    --predictor-url triton-0:8001,10.0.0.7:8001        # fixed replicas
    --predictor-url routoo-triton.routoo.svc:8001        # a headless Service: one address per ready pod

DNS names are re-resolved every `replica_resolve_interval_s`: new addresses are probed and join, vanished
ones leave once their calls finish. Each call goes to the ready replica with the fewest calls in flight
(ties in turn), so a slow replica gets less. A replica leaves the rotation when a call to it fails with
UNAVAILABLE (connection refused or reset, model not loaded) or when its readiness check, run every
`replica_health_interval_s`, fails or hangs; it is probed again after a backoff that doubles from
`replica_backoff_min_s` to `replica_backoff_max_s`, and rejoins once it is ready and serves the same pool
as the others (a replica with another pool would mix two predictors' scores, so it stays out, logged).
A call whose replica became unavailable is retried once on another ready replica within the same
deadline; timeouts are not retried (the deadline is spent) and neither are contract errors (every replica
would give the same).

One RPC's prompts go to one replica, which chunks them to its max_batch_size as TritonScores does.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from dataclasses import dataclass, field, replace
from typing import Awaitable, Callable

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from selector.config import SelectorConfig
from selector.pool import PoolError, ServedPool
from selector.targets import Target, grpc_target, parse_targets
from selector.triton_scores import (Overloaded, PredictorError, PredictorTimeout, PredictorUnavailable, ScoreSource,
                                    TritonScores)

log = logging.getLogger("routoo.selector.replicas")

Resolver = Callable[[str, int], Awaitable[list[str]]]     # (host, port) -> gRPC targets "ip:port"
OUTCOMES = ("ok", "unavailable", "timeout", "overloaded", "error")


def scores_from_config(config: SelectorConfig) -> ScoreSource:
    """One IP literal: a plain TritonScores, as before. Several addresses or a DNS name: a ReplicaSet."""
    targets = parse_targets(config.triton_url)
    if len(targets) == 1 and targets[0].is_literal:
        return TritonScores.from_config(config)
    return ReplicaSet.from_config(config)


async def resolve_dns(host: str, port: int) -> list[str]:
    """Every address the system resolver gives for host (A and AAAA), as sorted gRPC targets."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return sorted({grpc_target(info[4][0], port) for info in infos})


@dataclass(eq=False)
class Replica:
    address: str                     # gRPC target, "ip:port"
    scores: TritonScores
    healthy: bool = False
    in_flight: int = 0
    failures: int = 0                # consecutive failed probes: sets the backoff
    next_check: float = 0.0          # monotonic time of the next probe (out) or readiness check (in)
    calls: dict[str, int] = field(default_factory=lambda: dict.fromkeys(OUTCOMES, 0))


class ReplicaSet:
    """ScoreSource over several predictor replicas; settings from SelectorConfig (`from_config`)."""

    def __init__(self, targets: tuple[Target, ...], make_scores: Callable[[str], TritonScores], *,
                 resolve_interval_s: float, health_interval_s: float, backoff_min_s: float,
                 backoff_max_s: float, resolver: Resolver = resolve_dns):
        if not targets:
            raise ValueError("a ReplicaSet needs at least one predictor address")
        if not (resolve_interval_s > 0 and health_interval_s > 0 and 0 < backoff_min_s <= backoff_max_s):
            raise ValueError(f"replica intervals must be > 0 with backoff_min_s <= backoff_max_s, got resolve "
                             f"{resolve_interval_s}, health {health_interval_s}, backoff {backoff_min_s}-"
                             f"{backoff_max_s}")
        self._targets = targets
        self._make_scores = make_scores
        self._resolver = resolver
        self._resolve_interval_s = resolve_interval_s
        self._health_interval_s = health_interval_s
        self._backoff_min_s = backoff_min_s
        self._backoff_max_s = backoff_max_s
        self._replicas: dict[str, Replica] = {}            # by address, in order of discovery
        self._resolved: dict[Target, list[str]] = {}        # last good answer per DNS name
        self._unresolved: set[Target] = set()               # names whose last lookup failed
        self._next_resolve = 0.0
        self._pool: ServedPool | None = None                # what every replica in rotation serves
        self._turn = 0                                      # round robin among equally loaded replicas
        self._retries = 0
        self._maintainer: asyncio.Task | None = None
        self._closing: set[asyncio.Task] = set()

    @classmethod
    def from_config(cls, config: SelectorConfig) -> "ReplicaSet":
        return cls(parse_targets(config.triton_url),
                   lambda address: TritonScores.from_config(replace(config, triton_url=address)),
                   resolve_interval_s=config.replica_resolve_interval_s,
                   health_interval_s=config.replica_health_interval_s,
                   backoff_min_s=config.replica_backoff_min_s, backoff_max_s=config.replica_backoff_max_s)

    # --- ScoreSource ----------------------------------------------------------------------------------
    async def served_pool(self, *, timeout_s: float = 5.0) -> ServedPool:
        if self._pool is None:
            await self._resolve()
            await asyncio.gather(*(self._probe(r, timeout_s) for r in list(self._replicas.values())))
            if self._pool is None:
                raise PredictorUnavailable(f"no predictor replica is ready among {self._describe()}")
        if self._maintainer is None:
            self._maintainer = asyncio.create_task(self._maintain())
        return self._pool

    async def ready(self) -> bool:
        return any(r.healthy for r in self._replicas.values())

    async def score(self, prompts: list[str], *, timeout_s: float):
        deadline = time.monotonic() + timeout_s
        first = self._pick(exclude=None)
        if first is None:
            raise PredictorUnavailable(f"no predictor replica is ready among {self._describe()}")
        try:
            return await self._call(first, prompts, timeout_s)
        except PredictorUnavailable:
            second = self._pick(exclude=first)
            remaining = deadline - time.monotonic()
            if second is None or remaining <= 0:
                raise
            self._retries += 1
            return await self._call(second, prompts, remaining)

    async def close(self) -> None:
        if self._maintainer is not None:
            self._maintainer.cancel()
            await asyncio.gather(self._maintainer, return_exceptions=True)
        await asyncio.gather(*self._closing, return_exceptions=True)
        replicas, self._replicas = list(self._replicas.values()), {}
        await asyncio.gather(*(r.scores.close() for r in replicas), return_exceptions=True)

    # --- what operators see ---------------------------------------------------------------------------
    def snapshot(self) -> dict[str, dict]:
        """Per replica: in rotation or not, calls in flight, calls by outcome (also on /metrics)."""
        return {r.address: {"healthy": r.healthy, "in_flight": r.in_flight, "calls": dict(r.calls)}
                for r in list(self._replicas.values())}

    def register_metrics(self, registry) -> None:
        registry.register(self)

    def collect(self):
        """prometheus_client custom collector: read at scrape time, nothing to update on the hot path."""
        ready = GaugeMetricFamily("routoo_selector_replica_ready",
                                  "1 while the predictor replica is in the selector's rotation", labels=["replica"])
        in_flight = GaugeMetricFamily("routoo_selector_replica_in_flight",
                                      "Predictor calls in flight to the replica", labels=["replica"])
        calls = CounterMetricFamily("routoo_selector_replica_calls",
                                    "Predictor calls sent to the replica, by outcome", labels=["replica", "outcome"])
        for address, state in self.snapshot().items():
            ready.add_metric([address], 1.0 if state["healthy"] else 0.0)
            in_flight.add_metric([address], state["in_flight"])
            for outcome, count in state["calls"].items():
                calls.add_metric([address, outcome], count)
        retries = CounterMetricFamily("routoo_selector_predictor_retries",
                                      "Predictor calls retried on another replica after theirs became unavailable")
        retries.add_metric([], self._retries)
        return [ready, in_flight, calls, retries]

    # --- internals ------------------------------------------------------------------------------------
    def _pick(self, exclude: Replica | None) -> Replica | None:
        candidates = [r for r in self._replicas.values() if r.healthy and r is not exclude]
        if not candidates:
            return None
        self._turn += 1
        start = self._turn % len(candidates)
        best = None
        for i in range(len(candidates)):
            replica = candidates[(start + i) % len(candidates)]
            if best is None or replica.in_flight < best.in_flight:
                best = replica
        return best

    async def _call(self, replica: Replica, prompts: list[str], timeout_s: float):
        replica.in_flight += 1
        outcome = "error"
        try:
            result = await replica.scores.score(prompts, timeout_s=timeout_s)
            outcome = "ok"
            return result
        except PredictorUnavailable as e:
            outcome = "unavailable"
            self._take_out(replica, str(e))
            raise
        except PredictorTimeout:
            outcome = "timeout"
            raise
        except Overloaded:
            outcome = "overloaded"       # busy, not down: it stays in rotation
            raise
        finally:
            replica.in_flight -= 1
            replica.calls[outcome] += 1

    def _take_out(self, replica: Replica, reason: str) -> None:
        now = time.monotonic()
        if replica.healthy:
            log.warning("predictor replica %s taken out of rotation: %s", replica.address, reason)
            replica.healthy = False
            replica.failures = 0
        else:
            replica.failures += 1
        backoff = min(self._backoff_max_s, self._backoff_min_s * 2 ** min(replica.failures, 30))
        replica.next_check = now + backoff

    def _put_in(self, replica: Replica) -> None:
        if not replica.healthy:
            log.info("predictor replica %s in rotation (%d of %d)", replica.address,
                     1 + sum(r.healthy for r in self._replicas.values()), len(self._replicas))
        replica.healthy = True
        replica.failures = 0
        replica.next_check = time.monotonic() + self._health_interval_s

    async def _probe(self, replica: Replica, timeout_s: float = 1.0) -> None:
        """Out of rotation: back in once ready and serving the same pool as the others."""
        try:
            if not await replica.scores.ready():
                raise PredictorUnavailable("its model is not ready")
            pool = await replica.scores.served_pool(timeout_s=timeout_s)
        except (PredictorUnavailable, PredictorTimeout, PredictorError, PoolError) as e:
            self._take_out(replica, str(e))
            return
        if self._pool is None:
            self._pool = pool
        elif pool != self._pool:
            if replica.failures == 0:
                log.error("predictor replica %s serves another pool (%d models) than the rest (%d models); "
                          "it stays out of rotation", replica.address, len(pool.names), len(self._pool.names))
            self._take_out(replica, "serves another pool")
            return
        if replica.address in self._replicas:       # not retired by a resolve meanwhile
            self._put_in(replica)

    async def _check(self, replica: Replica) -> None:
        """In rotation: out as soon as its readiness check fails or hangs (ready() gives it 1 s)."""
        if await replica.scores.ready():
            replica.next_check = time.monotonic() + self._health_interval_s
        else:
            self._take_out(replica, "its readiness check failed")

    async def _maintain(self) -> None:
        tick_s = min(self._health_interval_s, self._backoff_min_s, self._resolve_interval_s)
        while True:
            await asyncio.sleep(tick_s)
            try:
                now = time.monotonic()
                if now >= self._next_resolve:
                    await self._resolve()
                due = [r for r in list(self._replicas.values()) if now >= r.next_check]
                await asyncio.gather(*((self._check if r.healthy else self._probe)(r) for r in due))
            except Exception:        # the maintainer must outlive any one failed round
                log.exception("predictor replica maintenance failed")

    async def _resolve(self) -> None:
        """Addresses now wanted: literals as given, DNS names as resolved (the last answer if this one fails)."""
        self._next_resolve = time.monotonic() + self._resolve_interval_s
        wanted: list[str] = []
        for target in self._targets:
            if target.is_literal:
                wanted.append(str(target))
                continue
            try:
                addresses = await self._resolver(target.host, target.port)
                self._unresolved.discard(target)
            except OSError as e:     # socket.gaierror: a headless Service with no ready pod has no records
                addresses = self._resolved.get(target, [])
                if target not in self._unresolved:      # once per outage, not every 5 s (bounded logs)
                    self._unresolved.add(target)
                    log.warning("cannot resolve predictor name %s (%s); keeping its %d known address(es)",
                                target.host, e, len(addresses))
            self._resolved[target] = addresses
            wanted.extend(addresses)
        for address in wanted:
            if address not in self._replicas:
                self._replicas[address] = Replica(address, self._make_scores(address))
        for address in [a for a in self._replicas if a not in wanted]:
            gone = self._replicas.pop(address)
            log.info("predictor replica %s left (no longer in DNS)", address)
            task = asyncio.create_task(self._retire(gone))
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    async def _retire(self, replica: Replica, wait_s: float = 30.0) -> None:
        deadline = time.monotonic() + wait_s      # its calls in flight finish first (or time out)
        while replica.in_flight and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        await replica.scores.close()

    def _describe(self) -> str:
        known = ", ".join(self._replicas) or "none resolved"
        return f"{len(self._replicas)} known ({known}) from {', '.join(map(str, self._targets))}"
