"""The selector's settings, in one place. Prices and latencies live in the pool file (pool.toml), not here."""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from pathlib import Path

from predictor_service.contract import LOOPBACK, MAX_PROMPT_BYTES, PREDICTOR_MODEL, SELECTOR_PORT, TRITON_GRPC_ADDRESS
from selector.targets import parse_targets

KIB = 1024
MIB = 1024 * KIB


@dataclass(frozen=True)
class SelectorConfig:
    # Where the selector listens. Loopback by default: the API has no authentication.
    host: str = LOOPBACK
    port: int = SELECTOR_PORT            # 0 = any free port (tests)
    # The predictor served by Triton (KServe v2 over gRPC): HOST:PORT, or several comma-separated, or a DNS
    # name with one address per replica (a Kubernetes headless Service); selector/replicas.py.
    triton_url: str = TRITON_GRPC_ADDRESS
    predictor_model: str = PREDICTOR_MODEL
    pool_path: Path | None = None        # None = selector/pool.toml
    # Deadline of one Triton call, whichever encoder the predictor runs. Static: a few ms. MiniLM on 2 cores:
    # a chunk of 64 prompts takes ~0.8 s alone (12.6 ms/prompt), and under 32 concurrent clients the dynamic
    # batcher's batches take 4-6 s, queueing included (the benchmark's minilm runs), so the former 2 s failed
    # healthy calls with DEADLINE_EXCEEDED; 10 s covers that with room. It bounds how long a stuck predictor
    # holds a request; a caller's own shorter gRPC deadline wins.
    triton_timeout_s: float = 10.0
    # Triton calls one RouteBatch/Score request keeps in flight: enough to fill the dynamic batcher,
    # few enough that one huge batch does not starve single Route calls.
    triton_chunk_concurrency: int = 4
    # gRPC retries a broken connection with exponential backoff up to 120 s by default; 1 s caps how long
    # the selector keeps answering UNAVAILABLE after Triton is back.
    triton_reconnect_backoff_max_ms: int = 1000
    # How long start-up waits for the predictor to be ready before giving up with a clear message.
    startup_timeout_s: float = 60.0
    # How often the health service re-checks that the predictor is ready.
    health_poll_s: float = 1.0
    # Input limits: UTF-8 bytes per prompt (the Triton model's own limit, one source of truth) and prompts
    # per RouteBatch/Score call.
    max_prompt_bytes: int = MAX_PROMPT_BYTES
    max_batch_prompts: int = 20_000
    # gRPC message size: 20k prompts of ~2 KB each fit; a default of 4 MiB would not.
    max_message_bytes: int = 64 * MIB
    # Bytes of big requests (>= big_request_bytes each) held at once, counted from the wire size before
    # decoding; past it, RESOURCE_EXHAUSTED. A RouteBatch costs ~4x its payload in RSS while worked on
    # (2x gRPC's receive, 2x decoded; docs/faults.md states the worst case per setting).
    max_in_flight_bytes: int = 256 * MIB
    big_request_bytes: int = 1 * MIB
    # Big requests decoded and worked on at once (others wait, their bytes counted): two keep Triton busy,
    # and leave its queue and the event loop to single Route calls.
    max_concurrent_big_requests: int = 2
    # Repeated warnings (predictor unavailable, ...) are written once per this many seconds, with a count.
    log_interval_s: float = 10.0
    # Requests handled at once; beyond this the selector answers RESOURCE_EXHAUSTED at once instead of
    # queueing without bound (a Route takes ~1-2 ms, so 128 in flight is already a deep queue).
    max_concurrent_requests: int = 128
    # Messages of one RouteStream held at once, from read to answer written; the stream is not read further
    # until one is written, so gRPC's flow control slows a fast writer (or a slow reader of its answers)
    # instead of filling the selector's memory. 64: one full coalesced call from a single stream.
    stream_max_in_flight: int = 64
    # RouteStream messages being decided at once over all streams (a message's slot here goes back once it
    # is decided, so callers that do not read their answers hold none); a stream waits for one rather than
    # being refused, and stream messages do not count in max_concurrent_requests: streams cannot starve
    # unary calls nor be starved by them.
    max_concurrent_stream_messages: int = 128
    # Coalescing (selector/coalescer.py): Routes and Scores arriving while a Triton call is in flight join
    # the next call, one ModelInfer of many rows, instead of one call each; a lone request goes at once.
    coalesce: bool = True
    # Rows per coalesced call: routoo_predictor's max_batch_size, so one call is one ModelInfer. Larger
    # requests (RouteBatch) bypass the queue.
    coalesce_max_rows: int = 64
    # Coalesced calls out at once. 1: while Triton runs one batch, the next one forms here.
    coalesce_max_in_flight: int = 1
    # Rows waiting for a call slot before RESOURCE_EXHAUSTED: 16 full calls, far past
    # max_concurrent_requests' 128 single Routes, so it bounds only many-row Score calls.
    coalesce_max_queued_rows: int = 1024
    # Coalesced batches of at least this many rows decide their Routes with one array pass per (policy,
    # constraints) (selector.policies.rank_rows); smaller ones row by row in plain Python, cheaper there.
    batch_decide_min_rows: int = 4
    # Selector processes sharing the port (SO_REUSEPORT; selector/workers.py). One process is one core at
    # most; more help where cores are free and clients open several connections.
    workers: int = 1
    # Event loop of `python -m selector.server` and `routoo serve`: uvloop where installed.
    uvloop: bool = True
    # Model to return, unscored, when the predictor is unreachable or too slow. Off by default: a silent
    # fallback hides an outage; turn it on where any answer beats an error.
    fallback_model: str | None = None
    # Policy when a RouteRequest sets none: tradeoff with this lambda (quality points per USD);
    # 0 = best predicted quality regardless of cost.
    default_quality_per_usd: float = 0.0
    # Eligible models listed after the chosen one in a decision.
    runners_up: int = 3
    # Prometheus /metrics on this port (None = off; 0 = any free port).
    metrics_port: int | None = None
    # Seconds in-flight calls get to finish on SIGINT/SIGTERM before they are cancelled.
    grace_s: float = 5.0
    # Several predictor replicas (selector/replicas.py). CoreDNS answers a headless Service with a 5 s TTL,
    # so re-resolving as often follows pods coming and going.
    replica_resolve_interval_s: float = 5.0
    # Readiness check of each replica in rotation: a hung one is out within this plus the check's 1 s.
    replica_health_interval_s: float = 1.0
    # A replica out of rotation is probed after 0.25 s, then 0.5, 1, 2, 4 s: back within ~4 s of being
    # ready again, while a long-dead one costs one refused connect every 4 s.
    replica_backoff_min_s: float = 0.25
    replica_backoff_max_s: float = 4.0

    def __post_init__(self) -> None:
        positive = {"triton_timeout_s": self.triton_timeout_s, "startup_timeout_s": self.startup_timeout_s,
                    "health_poll_s": self.health_poll_s, "max_prompt_bytes": self.max_prompt_bytes,
                    "max_batch_prompts": self.max_batch_prompts, "max_message_bytes": self.max_message_bytes,
                    "max_concurrent_requests": self.max_concurrent_requests,
                    "stream_max_in_flight": self.stream_max_in_flight,
                    "max_concurrent_stream_messages": self.max_concurrent_stream_messages,
                    "triton_chunk_concurrency": self.triton_chunk_concurrency,
                    "triton_reconnect_backoff_max_ms": self.triton_reconnect_backoff_max_ms,
                    "max_in_flight_bytes": self.max_in_flight_bytes, "big_request_bytes": self.big_request_bytes,
                    "max_concurrent_big_requests": self.max_concurrent_big_requests,
                    "log_interval_s": self.log_interval_s,
                    "coalesce_max_rows": self.coalesce_max_rows,
                    "coalesce_max_in_flight": self.coalesce_max_in_flight,
                    "batch_decide_min_rows": self.batch_decide_min_rows, "workers": self.workers}
        # inf is refused too: a gRPC deadline of inf overflows, and an unbounded wait holds a slot for ever.
        bad = {name: value for name, value in positive.items() if not 0 < value < math.inf}
        if bad:
            raise ValueError(f"these selector settings must be finite numbers > 0: {bad}")
        parse_targets(self.triton_url)      # ValueError naming the bad address
        if self.metrics_port is not None and not 0 <= self.metrics_port < 65536:
            raise ValueError(f"metrics_port must be in [0, 65535], got {self.metrics_port}")
        if not 0 <= self.port < 65536:
            raise ValueError(f"port must be in [0, 65535], got {self.port}")
        if not self.default_quality_per_usd >= 0:
            raise ValueError(f"default_quality_per_usd must be >= 0, got {self.default_quality_per_usd}")
        if self.coalesce_max_queued_rows < self.coalesce_max_rows:
            raise ValueError(f"coalesce_max_queued_rows ({self.coalesce_max_queued_rows}) must be >= "
                             f"coalesce_max_rows ({self.coalesce_max_rows})")
        if self.workers > 1 and self.port == 0:
            raise ValueError("workers > 1 share one port: give a fixed port, not 0")
        if self.runners_up < 0 or not 0 <= self.grace_s < math.inf:
            raise ValueError(f"runners_up and grace_s must be finite and >= 0, got {self.runners_up}, {self.grace_s}")

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


def add_selector_arguments(parser: argparse.ArgumentParser, *, triton: bool = True) -> None:
    """The selector's command-line options; defaults come from SelectorConfig so they live in one place."""
    defaults = SelectorConfig()
    parser.add_argument("--host", default=defaults.host, help="address to bind (default: %(default)s)")
    parser.add_argument("--selector-port", type=int, default=defaults.port, help="default: %(default)s")
    if triton:
        parser.add_argument("--predictor-url", "--triton-url", dest="triton_url", default=defaults.triton_url,
                            help="the predictor's Triton gRPC endpoint(s): HOST:PORT[,HOST:PORT...]; a DNS "
                                 "name resolving to several addresses is one replica each (default: %(default)s)")
    parser.add_argument("--pool", type=Path, default=None, help="pool file (default: selector/pool.toml)")
    parser.add_argument("--startup-timeout-s", type=float, default=defaults.startup_timeout_s,
                        help="how long to wait at start for the predictor to be ready (default: %(default)s)")
    parser.add_argument("--triton-timeout-s", type=float, default=defaults.triton_timeout_s,
                        help="deadline of one predictor call (default: %(default)s)")
    parser.add_argument("--fallback-model", default=None,
                        help="answer with this model, unscored, while the predictor is down (default: off)")
    parser.add_argument("--max-concurrent-requests", type=int, default=defaults.max_concurrent_requests,
                        help="beyond this, RESOURCE_EXHAUSTED (default: %(default)s)")
    parser.add_argument("--max-in-flight-mib", type=_finite_mib, default=defaults.max_in_flight_bytes / MIB,
                        help="MiB of big requests held at once; beyond, RESOURCE_EXHAUSTED (default: %(default)s)")
    parser.add_argument("--metrics-port", type=int, default=defaults.metrics_port,
                        help="serve Prometheus /metrics on this port (default: off)")
    parser.add_argument("--selector-workers", type=int, default=defaults.workers,
                        help="selector processes sharing the port (SO_REUSEPORT) (default: %(default)s)")
    parser.add_argument("--no-coalesce", action="store_true",
                        help="one predictor call per request instead of coalescing concurrent ones")


def _finite_mib(text: str) -> float:
    value = float(text)
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a number of MiB > 0, got {text!r}")
    return value


def config_from_args(args: argparse.Namespace, **overrides) -> SelectorConfig:
    values = dict(host=args.host, port=args.selector_port, pool_path=args.pool,
                  triton_timeout_s=args.triton_timeout_s, startup_timeout_s=args.startup_timeout_s,
                  fallback_model=args.fallback_model,
                  max_concurrent_requests=args.max_concurrent_requests, metrics_port=args.metrics_port,
                  max_in_flight_bytes=int(args.max_in_flight_mib * MIB),
                  workers=args.selector_workers, coalesce=not args.no_coalesce)
    if getattr(args, "triton_url", None):
        values["triton_url"] = args.triton_url
    values.update(overrides)
    return SelectorConfig(**values)
