"""The gateway's settings, in one place. Upstreams (base_url, upstream_model, api_key_env) live in the pool
file beside each model's prices, not here."""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from pathlib import Path

from gateway.prompt import PROMPT_RULES
from predictor_service.contract import GATEWAY_PORT, LOOPBACK, SELECTOR_ADDRESS

KIB = 1024
MIB = 1024 * KIB


@dataclass(frozen=True)
class GatewayConfig:
    # Loopback by default: without --api-key-env the gateway spends the upstreams' keys for anyone who reaches it.
    host: str = LOOPBACK
    port: int = GATEWAY_PORT               # 0 = any free port (tests)
    selector_address: str = SELECTOR_ADDRESS
    pool_path: Path | None = None          # the selector's pool file; None = selector/pool.toml
    # Name of the environment variable holding the key clients must send (`Authorization: Bearer KEY`);
    # None = no client authentication.
    api_key_env: str | None = None
    # Deadline of one selector call. A Route takes ~1-2 ms on 2 cores with the static encoder; MiniLM under
    # load takes seconds (the selector's own predictor deadline is 10 s), so 15 s lets the selector answer first.
    route_timeout_s: float = 15.0
    # Upstream deadlines. Connect: a loopback or LAN server accepts in well under 1 s; a dead host is refused at
    # once or hangs, and 5 s bounds the hang. Read: the longest wait for the upstream's next bytes, its
    # response headers (the first byte; past it the runner-up is tried) or the next chunk of a stream; a long
    # prompt on a busy vLLM takes tens of seconds to prefill.
    upstream_connect_timeout_s: float = 5.0
    upstream_timeout_s: float = 60.0
    # Models tried per request: the choice, then the decision's runners-up in the policy's order, while an
    # upstream is unreachable, answers 5xx or times out before its first byte. The selector lists 3 runners-up.
    max_attempts: int = 2
    # Model to forward to, unrouted, when the selector is unavailable. Off by default: a silent fallback
    # hides an outage (the selector's own --fallback-model covers a predictor outage).
    fallback_model: str | None = None
    # The text the predictor scores, built from the messages (gateway/prompt.py documents the rules).
    prompt_rule: str = "last_user"
    # Request body limit: 1 MiB holds ~250k tokens of chat, more than any model's context.
    max_body_bytes: int = 1 * MIB
    # Chat completions handled at once; beyond this, 429 at once instead of an unbounded queue. Streams hold
    # a slot for their whole length, so this is also the number of concurrent streams.
    max_concurrent_requests: int = 256
    # Longest wait for a request's whole body once its headers are in: a client that trickles its body holds a
    # concurrency slot no longer than this (408). 1 MiB arrives in well under a second on any real link.
    body_timeout_s: float = 10.0
    # Seconds in-flight requests get to finish on shutdown.
    grace_s: float = 5.0

    def __post_init__(self) -> None:
        positive = {"route_timeout_s": self.route_timeout_s,
                    "upstream_connect_timeout_s": self.upstream_connect_timeout_s,
                    "upstream_timeout_s": self.upstream_timeout_s, "max_attempts": self.max_attempts,
                    "max_body_bytes": self.max_body_bytes, "max_concurrent_requests": self.max_concurrent_requests,
                    "body_timeout_s": self.body_timeout_s}
        # inf is refused too: asyncio and gRPC deadlines overflow on it, and "never time out" is not a
        # setting a service that holds concurrency slots should offer.
        bad = {name: value for name, value in positive.items() if not 0 < value < math.inf}
        if bad:
            raise ValueError(f"these gateway settings must be finite numbers > 0: {bad}")
        if not 0 <= self.port < 65536:
            raise ValueError(f"port must be in [0, 65535], got {self.port}")
        if self.prompt_rule not in PROMPT_RULES:
            raise ValueError(f"prompt_rule must be one of {sorted(PROMPT_RULES)}, got {self.prompt_rule!r}")
        if not 0 <= self.grace_s < math.inf:
            raise ValueError(f"grace_s must be a number >= 0, got {self.grace_s}")


def add_gateway_arguments(parser: argparse.ArgumentParser, *, standalone: bool) -> None:
    """The gateway's options; defaults come from GatewayConfig. `standalone`: `routoo gateway` (its own
    --host, --pool and --selector) rather than `routoo serve`, which shares those with the selector."""
    defaults = GatewayConfig()
    if standalone:
        parser.add_argument("--host", default=defaults.host, help="address to bind (default: %(default)s)")
        parser.add_argument("--port", dest="gateway_port", type=int, default=defaults.port,
                            help="default: %(default)s")
        parser.add_argument("--selector", default=defaults.selector_address,
                            help="HOST:PORT of the running selector (default: %(default)s)")
        parser.add_argument("--pool", type=Path, default=None,
                            help="the selector's pool file, with the upstreams (default: selector/pool.toml)")
    else:
        parser.add_argument("--gateway-port", type=int, default=defaults.port,
                            help="port of the OpenAI-compatible gateway (default: %(default)s)")
        parser.add_argument("--no-gateway", action="store_true", help="run the selector without the gateway")
    parser.add_argument("--api-key-env", default=None,
                        help="environment variable holding the key clients must send as a Bearer token "
                             "(default: none, no client authentication)")
    parser.add_argument("--max-attempts", type=int, default=defaults.max_attempts,
                        help="models tried per request when upstreams fail before the first byte "
                             "(default: %(default)s)")
    parser.add_argument("--upstream-timeout-s", type=float, default=defaults.upstream_timeout_s,
                        help="longest wait for an upstream's first byte or next chunk (default: %(default)s)")
    parser.add_argument("--prompt-rule", choices=sorted(PROMPT_RULES), default=defaults.prompt_rule,
                        help="text the predictor scores (default: %(default)s)")
    parser.add_argument("--gateway-fallback-model", default=None,
                        help="forward to this model, unrouted, while the selector is unavailable (default: off)")
    parser.add_argument("--gateway-grace-s", type=float, default=defaults.grace_s,
                        help="on SIGTERM, how long open requests and streams may finish (default: %(default)s)")


def gateway_config_from_args(args: argparse.Namespace, **overrides) -> GatewayConfig:
    values = dict(host=args.host, port=args.gateway_port, pool_path=args.pool, api_key_env=args.api_key_env,
                  max_attempts=args.max_attempts, upstream_timeout_s=args.upstream_timeout_s,
                  prompt_rule=args.prompt_rule, fallback_model=args.gateway_fallback_model,
                  grace_s=args.gateway_grace_s)
    if getattr(args, "selector", None):
        values["selector_address"] = args.selector
    elif getattr(args, "selector_port", None) is not None:       # routoo serve: the selector beside it
        host = LOOPBACK if args.host in ("0.0.0.0", "::", "") else args.host
        values["selector_address"] = f"{host}:{args.selector_port}"
    values.update(overrides)
    return GatewayConfig(**values)
