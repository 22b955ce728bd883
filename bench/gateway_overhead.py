"""The gateway's added latency: the same instant local upstream called directly and through the gateway.

    python -m bench.gateway_overhead [--duration-s 5] [--clients 1,32] [--out bench/results/gateway_overhead.json]
    python -m bench.gateway_overhead --readme     # the README's table, from that JSON

Three targets, each a closed loop of N clients (aiohttp, keep-alive) sending one small chat completion:
- `direct`: the instant upstream itself (a minimal asyncio HTTP server in its own process that answers every
  request with the same completion at once);
- `gateway_bypass`: through the gateway with a pool model's name (no routing: parsing, forwarding, the
  answer's model renamed and its usage counted);
- `gateway_routed`: through the gateway with model "routoo" (the above plus the selector's Route over the
  predictor in Triton);
- `selector_route`: the selector's Route RPC called directly (grpc.aio), the routing floor: what of
  gateway_routed's added latency is the selector's rather than the gateway's;
- `direct_httpx`: the instant upstream again, with httpx as the client: why the gateway forwards with
  aiohttp (gateway/upstream.py).
The gateway, selector and Triton run as `routoo serve` does (one process); the upstream and this load
generator run in processes of their own, all on this machine. Added latency = gateway pN - direct pN at the
same number of clients. At 32 clients the three processes share the machine's cores, so the figure includes
the gateway's queueing for CPU, as it would in production on a box this size.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

from bench.loadgen import closed_loop
from bench.processes import free_port, kill_serve_tree
from bench.report import git_revision, load_average, machine_info
from evals.provenance import REPO

DEFAULT_OUT = REPO / "bench" / "results" / "gateway_overhead.json"
BYPASS_MODEL = "Meta-Llama-3_1-8B-Instruct"
# MMLU-Pro-like questions, varied so that the predictor cannot answer from one cached row.
PROMPTS = [f"Question {i}: which of the following best explains {topic}?\nA. one\nB. two\nC. three\nD. four"
           for i, topic in enumerate(["entropy", "tort law", "binary heaps", "Kant's duty", "mitosis", "inflation",
                                      "Ohm's law", "the French revolution"] * 4)]

_ANSWER = json.dumps({
    "id": "chatcmpl-instant", "object": "chat.completion", "created": 1, "model": "instant",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "B"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 40, "completion_tokens": 1, "total_tokens": 41}}).encode()
_RESPONSE = (b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: "
             + str(len(_ANSWER)).encode() + b"\r\n\r\n" + _ANSWER)


class _InstantUpstream(asyncio.Protocol):
    """HTTP/1.1 keep-alive, one canned answer per request; parses only what it must (headers, content-length)."""

    def connection_made(self, transport):
        self.transport, self.buffer = transport, b""

    def data_received(self, data: bytes):
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buffer[:end].lower()
            at = head.find(b"content-length:")
            length = int(head[at + 15:head.find(b"\r\n", at) if head.find(b"\r\n", at) > 0 else None]) if at >= 0 else 0
            if len(self.buffer) < end + 4 + length:
                return
            self.buffer = self.buffer[end + 4 + length:]
            self.transport.write(_RESPONSE)


async def _serve_upstream(port: int) -> None:
    server = await asyncio.get_running_loop().create_server(_InstantUpstream, "127.0.0.1", port)
    print("ready", flush=True)
    async with server:
        await server.serve_forever()


def _wait_for(predicate, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not come up within {timeout_s:g} s")
        time.sleep(0.25)


def _http_ok(url: str) -> bool:
    import urllib.request
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


async def _measure_httpx(url: str, model: str, clients: list[int], duration_s: float) -> list[dict]:
    import httpx

    runs = []
    async with httpx.AsyncClient(limits=httpx.Limits(max_connections=None, max_keepalive_connections=100)) as client:
        async def call(prompt: str) -> None:
            body = {"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": 1}
            response = await client.post(url, json=body)
            if response.status_code != 200:
                raise RuntimeError(f"HTTP {response.status_code}")

        for n in clients:
            await closed_loop(call, PROMPTS, n, duration_s=min(1.0, duration_s))       # warm-up, discarded
            runs.append((await closed_loop(call, PROMPTS, n, duration_s=duration_s)).summary())
    return runs


async def _measure(url: str, model: str, clients: list[int], duration_s: float) -> list[dict]:
    import aiohttp

    runs = []
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        async def call(prompt: str) -> None:
            body = {"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": 1}
            async with session.post(url, json=body) as response:
                await response.read()
                if response.status != 200:
                    raise RuntimeError(f"HTTP {response.status}")

        for n in clients:
            await closed_loop(call, PROMPTS, n, duration_s=min(1.0, duration_s))       # warm-up, discarded
            runs.append((await closed_loop(call, PROMPTS, n, duration_s=duration_s)).summary())
    return runs


async def _measure_selector(address: str, clients: list[int], duration_s: float) -> list[dict]:
    import grpc

    from selector.proto import selector_pb2 as pb
    from selector.proto import selector_pb2_grpc as pb_grpc

    runs = []
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.SelectorStub(channel)

        async def call(prompt: str) -> None:
            await stub.Route(pb.RouteRequest(prompt=prompt), timeout=30)

        for n in clients:
            await closed_loop(call, PROMPTS, n, duration_s=min(1.0, duration_s))       # warm-up, discarded
            runs.append((await closed_loop(call, PROMPTS, n, duration_s=duration_s)).summary())
    return runs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gateway_overhead", description=__doc__.split("\n")[0])
    parser.add_argument("--duration-s", type=float, default=5.0, help="per measured run (default: %(default)s)")
    parser.add_argument("--clients", default="1,32", help="comma-separated concurrencies (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--readme", action="store_true", help="print the README table from --out and stop")
    parser.add_argument("--serve-upstream", type=int, help=argparse.SUPPRESS)   # the upstream's own process
    args = parser.parse_args(argv)
    if args.readme:
        print(readme_table(json.loads(args.out.read_text())))
        return 0
    if args.serve_upstream is not None:
        try:
            asyncio.run(_serve_upstream(args.serve_upstream))
        except KeyboardInterrupt:            # the parent's SIGINT is how it stops
            pass
        return 0
    clients = [int(c) for c in args.clients.split(",")]

    from selector.pool import Pool, load_pool, pool_toml

    upstream_port, gateway_port, selector_port = free_port(), free_port(), free_port()
    triton_ports = [free_port() for _ in range(3)]
    scratch = Path(os.environ.get("TMPDIR", "/tmp")) / f"routoo-gateway-bench-{os.getpid()}"
    scratch.mkdir(parents=True, exist_ok=True)
    pool_path = scratch / "pool.toml"
    base_url = f"http://127.0.0.1:{upstream_port}/v1"
    pool_path.write_text(pool_toml(Pool(tuple(replace(m, base_url=base_url) for m in load_pool().models))))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    started = []
    report = {"meta": {"date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "machine": machine_info(),
                       "git": git_revision(), "load_average_start": load_average()},
              "settings": {"duration_s": args.duration_s, "clients": clients, "bypass_model": BYPASS_MODEL,
                           "client": "aiohttp, keep-alive, one loop", "upstream": "asyncio canned answer"},
              "targets": {}}
    try:
        upstream = subprocess.Popen([sys.executable, "-m", "bench.gateway_overhead", "--serve-upstream",
                                     str(upstream_port)], env=env, stdout=subprocess.PIPE, text=True)
        started.append(upstream)
        assert upstream.stdout.readline().strip() == "ready"
        serve = subprocess.Popen(
            [sys.executable, "-m", "cli.main", "serve", "--pool", str(pool_path),
             "--selector-port", str(selector_port), "--gateway-port", str(gateway_port),
             "--triton-grpc-port", str(triton_ports[0]), "--triton-http-port", str(triton_ports[1]),
             "--triton-metrics-port", str(triton_ports[2])],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        started.append(serve)
        gateway = f"http://127.0.0.1:{gateway_port}"
        _wait_for(lambda: _http_ok(gateway + "/health"), 180, "routoo serve (Triton, selector, gateway)")
        targets = {"direct": (base_url + "/chat/completions", BYPASS_MODEL),
                   "gateway_bypass": (gateway + "/v1/chat/completions", BYPASS_MODEL),
                   "gateway_routed": (gateway + "/v1/chat/completions", "routoo")}
        for name, (url, model) in targets.items():
            report["targets"][name] = asyncio.run(_measure(url, model, clients, args.duration_s))
        report["targets"]["selector_route"] = asyncio.run(
            _measure_selector(f"127.0.0.1:{selector_port}", clients, args.duration_s))
        report["targets"]["direct_httpx"] = asyncio.run(
            _measure_httpx(targets["direct"][0], BYPASS_MODEL, clients, args.duration_s))
    finally:
        for process in reversed(started):
            process.send_signal(2)             # SIGINT: routoo serve stops Triton itself
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                kill_serve_tree(process)
    report["meta"]["load_average_end"] = load_average()
    report["added_ms"] = _added(report["targets"], clients)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    _print_table(report, clients)
    print(f"\nload average {report['meta']['load_average_start']} -> {report['meta']['load_average_end']}; "
          f"written to {args.out}")
    return 0


def _added(targets: dict, clients: list[int]) -> dict:
    """Gateway pN minus direct pN, per target and concurrency."""
    added = {}
    direct = {r["clients"]: r for r in targets["direct"]}
    for name in ("gateway_bypass", "gateway_routed"):
        for run in targets[name]:
            base = direct[run["clients"]]
            if run.get("errors") or base.get("errors"):
                continue           # percentiles over completed requests only: no difference to state
            added[f"{name}@{run['clients']}"] = {
                q: round(run[q] - base[q], 3) for q in ("p50_ms", "p99_ms") if run[q] is not None and base[q] is not None}
    return added


def _ms(value) -> float:
    """A percentile, or nan where no request completed (the JSON keeps null)."""
    return float("nan") if value is None else value


def _print_table(report: dict, clients: list[int]) -> None:
    print(f"{'target':<16}{'clients':>8}{'p50 ms':>10}{'p99 ms':>10}{'req/s':>10}{'errors':>8}"
          f"{'+p50 ms':>10}{'+p99 ms':>10}")
    for name, runs in report["targets"].items():
        for run in runs:
            extra = report["added_ms"].get(f"{name}@{run['clients']}", {})
            print(f"{name:<16}{run['clients']:>8}{_ms(run['p50_ms']):>10.3f}{_ms(run['p99_ms']):>10.3f}"
                  f"{run['throughput_rps']:>10.0f}{run['errors']:>8}"
                  f"{extra.get('p50_ms', float('nan')):>10.3f}{extra.get('p99_ms', float('nan')):>10.3f}")


_LABELS = {"direct": "instant upstream, direct (aiohttp client)",
           "gateway_bypass": "through the gateway, pool model by name",
           "gateway_routed": "through the gateway, model `routoo`",
           "selector_route": "selector `Route` alone (gRPC)",
           "direct_httpx": "instant upstream, direct (httpx client)"}


def readme_table(report: dict) -> str:
    meta = report["meta"]
    lines = [f"Measured {meta['date_utc']} on {meta['machine']['cpu']} ({meta['machine']['cpus_usable']} CPUs), "
             f"commit `{meta['git']['commit'][:10]}`, load average {meta['load_average_start']} at the start and "
             f"{meta['load_average_end']} at the end (a shared machine: compare rows of one run). "
             f"`python -m bench.gateway_overhead`, {report['settings']['duration_s']:g} s per run.", "",
             "| target | clients | p50 ms | p99 ms | req/s | added p50 ms | added p99 ms |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name, runs in report["targets"].items():
        for run in runs:
            added = report["added_ms"].get(f"{name}@{run['clients']}", {})
            extra = [f"{added[q]:.2f}" if q in added else "" for q in ("p50_ms", "p99_ms")]
            failed = f" ({run['errors']} errors)" if run.get("errors") else ""
            lines.append(f"| {_LABELS.get(name, name)} | {run['clients']} | {_ms(run['p50_ms']):.2f} | "
                         f"{_ms(run['p99_ms']):.2f} | {run['throughput_rps']:,.0f}{failed} | {extra[0]} | {extra[1]} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
