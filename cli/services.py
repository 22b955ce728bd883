"""`routoo serve`, `routoo demo` and `routoo route`: registered by cli/main.py through
`add_commands(subparsers)`."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from dataclasses import replace

import grpc

from cli.arg_types import port, seconds
from gateway.config import add_gateway_arguments
from predictor_service.contract import (LOOPBACK, SELECTOR_ADDRESS, TRITON_GRPC_PORT, TRITON_HTTP_PORT,
                                        TRITON_METRICS_PORT)
from selector.config import add_selector_arguments, config_from_args
from selector.policies import POLICIES
from selector.proto import selector_pb2 as pb

# The demo's prompt: an MMLU-Pro-style question (question + lettered options), like the training data.
DEMO_PROMPT = (
    "A ball is thrown straight up at 20 m/s from the edge of a 25 m high cliff and falls to the ground at the "
    "foot of the cliff. Ignoring air resistance and taking g = 9.8 m/s^2, how long is the ball in the air?\n"
    "A. 2.0 s\nB. 3.1 s\nC. 4.1 s\nD. 5.1 s\nE. 5.5 s\nF. 6.2 s\nG. 4.8 s\nH. 3.6 s\nI. 7.0 s\nJ. 2.6 s")
# Demo settings: one dollar is worth 200 quality points (so $0.001 must buy 0.2 quality), and answers must
# come within 3 s (p95, the pool file's stand-in figures): shows a trade-off and an exclusion at once.
DEMO_QUALITY_PER_USD = 200.0
DEMO_MAX_LATENCY_MS = 3000.0


def add_commands(subparsers) -> None:
    p = subparsers.add_parser("serve", help="run the predictor in Triton and the selector together (Ctrl-C stops both)")
    add_selector_arguments(p, triton=False)
    p.add_argument("--triton-grpc-port", type=port, default=TRITON_GRPC_PORT, help="default: %(default)s")
    p.add_argument("--triton-http-port", type=port, default=TRITON_HTTP_PORT, help="default: %(default)s")
    p.add_argument("--triton-metrics-port", type=port, default=TRITON_METRICS_PORT, help="default: %(default)s")
    p.add_argument("--artifact", help="predictor artifact folder (default: the committed default artifact)")
    add_gateway_arguments(p, standalone=False)
    add_restart_arguments(p)
    p.set_defaults(func=cmd_serve)

    p = subparsers.add_parser("demo", help="start predictor and selector, route one example prompt, stop both")
    p.add_argument("--artifact", help="predictor artifact folder (default: the committed default artifact)")
    p.add_argument("--pool", help="pool file (default: selector/pool.toml, or one made from the artifact's "
                   "models and prices where they differ from it)")
    p.add_argument("--prompt", default=DEMO_PROMPT, help="the prompt to route (default: a physics question)")
    p.set_defaults(func=cmd_demo)

    p = subparsers.add_parser("write-pool", help="write a pool file for an artifact's models (trained prices; "
                              "latencies from selector/pool.toml where it has the model, else stand-ins)")
    p.add_argument("--artifact", help="predictor artifact folder (default: the committed default artifact)")
    p.add_argument("--out", required=True, help="pool file to write (TOML)")
    p.set_defaults(func=cmd_write_pool)

    p = subparsers.add_parser("route", help="ask a running selector where a prompt should go")
    p.add_argument("prompt")
    policy = p.add_mutually_exclusive_group()
    policy.add_argument("--lambda", dest="quality_per_usd", type=float,
                        help="tradeoff: quality points one dollar is worth (0 = best quality)")
    policy.add_argument("--quality-target", type=float, help="cheapest model predicted to reach this quality")
    policy.add_argument("--cost-cap", type=float, help="best model expected to cost at most this (USD)")
    p.add_argument("--allow", type=_names, default=[], help="comma-separated models to choose among")
    p.add_argument("--deny", type=_names, default=[], help="comma-separated models never to choose")
    p.add_argument("--max-latency-ms", type=float, help="exclude models whose p95 latency is above this")
    p.add_argument("--max-cost-usd", type=float, help="exclude models expected to cost more than this")
    p.add_argument("--selector", default=SELECTOR_ADDRESS, help="HOST:PORT of the selector (default: %(default)s)")
    p.add_argument("--timeout-s", type=seconds, default=10.0)
    p.add_argument("--json", action="store_true", help="print the decision as JSON")
    p.set_defaults(func=cmd_route)


def _names(text: str) -> list[str]:
    return [name.strip() for name in text.split(",") if name.strip()]


# --- serve ----------------------------------------------------------------------------------------------

def add_restart_arguments(parser: argparse.ArgumentParser) -> None:
    from predictor_service.supervision import RestartPolicy

    defaults = RestartPolicy()
    parser.add_argument("--max-restarts", type=int, default=defaults.max_restarts,
                        help="restarts of a crashed tritonserver allowed within --restart-window-s; one more "
                             "crash and serve exits 1 (default: %(default)s)")
    parser.add_argument("--restart-window-s", type=float, default=defaults.window_s, help="default: %(default)s")


def cmd_serve(args: argparse.Namespace) -> int:
    import os

    from gateway.server import serve_beside_selector
    from cli.predictor_serving import default_instance_count
    from predictor_service.supervision import RestartPolicy, Supervisor
    from predictor_service.triton_server import TritonServer
    from selector.server import StartupError, load_checked_pool, run_event_loop, serve

    config = config_from_args(args)      # validated before minutes are spent starting Triton
    load_checked_pool(config)            # so are the pool file and the fallback model (PoolError: a ValueError)
    try:
        gateway = None if args.no_gateway else _gateway(args)
    except ValueError as e:
        print(f"routoo: error: the gateway cannot start: {e} (--no-gateway runs without it)", file=sys.stderr)
        return 1
    policy = RestartPolicy(max_restarts=args.max_restarts, window_s=args.restart_window_s)
    # SIGTERM while Triton starts: unwind through the `with` so tritonserver (its own session) is stopped.
    signal.signal(signal.SIGTERM, _exit_on_signal)
    triton = TritonServer(args.artifact, grpc_port=args.triton_grpc_port, http_port=args.triton_http_port,
                          metrics_port=args.triton_metrics_port, host=args.host,
                          instance_count=default_instance_count("KIND_CPU"))
    print(f"starting the predictor in Triton on {args.host} (gRPC {args.triton_grpc_port}) ...", flush=True)
    with triton:
        # Restarts a crashed tritonserver on the same ports; when it gives up, SIGTERM stops the selector
        # through its own signal handler, and serve exits 1.
        supervisor = Supervisor([triton], policy, on_give_up=lambda *_: os.kill(os.getpid(), signal.SIGTERM))

        def started(server, port: int) -> None:
            metrics = f", metrics http://{args.host}:{server.metrics_port}/metrics" if server.metrics_port else ""
            print(f"predictor ready at {triton.grpc_url} (Triton); selector ready at {args.host}:{port}{metrics}\n"
                  f"try: routoo route \"What is 2 + 2?\" --selector {args.host}:{port}     (Ctrl-C stops both)",
                  flush=True)

        def serve_selector():
            return serve(replace(config, triton_url=triton.grpc_url), on_started=started)

        try:
            supervisor.watch()
            # The gateway runs on the selector's event loop, in this process: it stops with it.
            run_event_loop(serve_selector() if gateway is None else serve_beside_selector(serve_selector, gateway),
                           uvloop=config.uvloop)
        except StartupError as e:
            print(f"routoo: error: the selector did not start: {e}; stopping Triton", file=sys.stderr, flush=True)
            return 1
        except OSError as e:             # the gateway's port is taken
            print(f"routoo: error: {e}; stopping Triton", file=sys.stderr, flush=True)
            return 1
        finally:
            supervisor.stop()       # on every way out: tritonserver, its stubs and their shared memory
        if supervisor.gave_up:
            print(f"routoo: error: {supervisor.gave_up}; stopped", file=sys.stderr, flush=True)
            return 1
        print("selector stopped; stopping Triton ...", flush=True)
    print("stopped", flush=True)
    return 0


def _gateway(args: argparse.Namespace):
    """The gateway for `routoo serve`, built (pool file and keys checked) but not started: ValueError if unusable."""
    from gateway.config import gateway_config_from_args
    from gateway.server import GatewayServer

    return GatewayServer(gateway_config_from_args(args))


def _exit_on_signal(signum, frame) -> None:
    raise SystemExit(128 + signum)


# --- demo -----------------------------------------------------------------------------------------------

def artifact_pool(artifact_path: str | None, base):
    """The pool for an artifact's models: `base`'s settings where it has a model, the artifact's trained
    prices, stand-in latencies for models `base` does not know."""
    from predictor_service.artifact import Artifact, default_artifact_path
    from selector.pool import pool_for_models

    manifest = Artifact.load(artifact_path or default_artifact_path()).manifest
    return pool_for_models(manifest.model_names, manifest.model_prices, base=base)


def cmd_write_pool(args: argparse.Namespace) -> int:
    from pathlib import Path

    from selector.pool import STAND_IN_P95_LATENCY_MS, load_pool, pool_toml

    pool = artifact_pool(args.artifact, load_pool())
    header = (f"Pool for the artifact {args.artifact or 'predictor_service/default_artifact'}, written by "
              f"`routoo write-pool`.\nPrices: as trained (0 = unknown: the predictor's cost is used as it is).\n"
              f"p95_latency_ms: from selector/pool.toml where it has the model, else a stand-in "
              f"{STAND_IN_P95_LATENCY_MS:.0f} ms.\nEdit both before relying on them; selector/pool.toml explains "
              f"each field.")
    Path(args.out).write_text(pool_toml(pool, header), encoding="utf-8")
    print(f"pool of {len(pool)} models -> {args.out}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    import tempfile
    from pathlib import Path

    from predictor_service.triton_server import TritonServer
    from selector.pool import load_pool, pool_toml

    pool_path = args.pool
    with tempfile.TemporaryDirectory(prefix="routoo-demo-") as scratch:
        if pool_path is None:
            default = load_pool()
            pool = artifact_pool(args.artifact, default)
            if set(pool.names) != set(default.names):
                # An artifact trained on other models: route among its own pool rather than refuse to start.
                pool_path = Path(scratch) / "pool.toml"
                pool_path.write_text(pool_toml(pool), encoding="utf-8")
                print(f"the artifact's {len(pool)} models differ from selector/pool.toml's: routing among them "
                      f"at their trained prices", flush=True)
        print("starting the predictor in Triton (free loopback ports) ...", flush=True)
        with TritonServer(args.artifact) as triton:
            print(f"predictor ready at {triton.grpc_url}; starting the selector ...", flush=True)
            decision = asyncio.run(_demo_route(triton.grpc_url, args.prompt, pool_path))
    print(f"\nprompt ({len(args.prompt)} characters): {args.prompt.splitlines()[0][:100]} ...\n")
    print(format_decision(decision))
    print("\nselector and Triton stopped.")
    return 0


async def _demo_route(triton_url: str, prompt: str, pool_path=None) -> pb.RouteDecision:
    from selector.client import make_route_request
    from selector.config import SelectorConfig
    from selector.proto import selector_pb2_grpc as pb_grpc
    from selector.server import create_server

    server, port = await create_server(f"{LOOPBACK}:0", config=SelectorConfig(port=0, triton_url=triton_url,
                                                                          pool_path=pool_path))
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"{LOOPBACK}:{port}") as channel:
            request = make_route_request(prompt, quality_per_usd=DEMO_QUALITY_PER_USD,
                                         max_latency_ms=DEMO_MAX_LATENCY_MS)
            return await pb_grpc.SelectorStub(channel).Route(request, timeout=30.0)
    finally:
        await server.stop(1.0)


# --- route ----------------------------------------------------------------------------------------------

def cmd_route(args: argparse.Namespace) -> int:
    from google.protobuf import json_format

    from selector.client import SelectorClient

    with SelectorClient(args.selector, timeout_s=args.timeout_s) as client:
        try:
            decision = client.route(args.prompt, quality_per_usd=args.quality_per_usd,
                                    quality_target=args.quality_target, cost_cap_usd=args.cost_cap,
                                    allow=args.allow, deny=args.deny, max_latency_ms=args.max_latency_ms,
                                    max_cost_usd=args.max_cost_usd)
        except grpc.RpcError as e:
            print(f"routoo: error: selector at {args.selector}: {e.code().name}: {e.details()}", file=sys.stderr)
            return 1
    print(json_format.MessageToJson(decision, preserving_proto_field_name=True) if args.json
          else format_decision(decision))
    return 0


def format_decision(decision: pb.RouteDecision) -> str:
    """A decision as a person wants to read it: the choice, what came next, and what was ruled out and why."""
    if decision.fallback:
        return (f"policy {decision.policy}: the predictor was unavailable, so the configured fallback model "
                f"{decision.model} was chosen without scores")

    def money(usd: float) -> str:
        return f"${usd:.6f} (${usd * 1000:.3g} per 1,000 prompts)"

    width = max([len(s.model) for s in decision.scores], default=10) + 2
    rule = POLICIES[decision.policy.split("(")[0]].__doc__.splitlines()[0] if "(" in decision.policy else ""
    lines = [f"policy {decision.policy}: {rule}".rstrip(": "),
             f"  chosen:     {decision.model:<{width}} predicted quality {decision.quality:.3f}   "
             f"expected cost {money(decision.expected_cost_usd)}"]
    for i, other in enumerate(decision.runners_up):
        label = "runners-up:" if i == 0 else ""
        lines.append(f"  {label:<11} {other.model:<{width}} predicted quality {other.quality:.3f}   "
                     f"expected cost {money(other.expected_cost_usd)}")
    top = max(decision.scores, key=lambda s: s.quality, default=None)
    if top is not None and top.model != decision.model:
        why = {e.model: e.reason for e in decision.excluded}.get(top.model, "not worth its cost under this policy")
        lines.append(f"  {'highest:':<11} {top.model:<{width}} predicted quality {top.quality:.3f}   "
                     f"expected cost {money(top.expected_cost_usd)}; {why}")
    eligible = len(decision.scores) - len(decision.excluded)
    lines.append(f"  {eligible} of {len(decision.scores)} pool models were eligible"
                 + (f"; excluded ({len(decision.excluded)}):" if decision.excluded else "."))
    lines.extend(f"    {e.model:<{width}} {e.reason}" for e in decision.excluded)
    if decision.content_free:
        lines.append("  note: the prompt has no letter or digit, so these are the predictor's prior scores, the "
                     "same for every such prompt")
    return "\n".join(lines)
