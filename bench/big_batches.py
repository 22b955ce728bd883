"""Big RouteBatches beside Route calls: Route latency and the selector's peak RSS while --batches RouteBatches
of --prompts prompts of ~3 KiB arrive at once, with the selector's admission settings as given.

    python -m bench.big_batches                                   # defaults: budget 256 MiB, 2 big at once
    python -m bench.big_batches --budget-mib 100000 --big-slots 128   # ~no gate (the behaviour before)

The selector runs in a process of its own (so /proc's VmHWM is its peak alone) against a real tritonserver;
4 closed-loop Route clients run for the whole time. Writes bench/results/big_batches.json (--out).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import grpc

from bench import report as report_mod
from bench.loadgen import percentile
from predictor_service.triton_server import PROJECT_ROOT, TritonServer, free_port
from selector.client import make_route_request
from selector.config import MIB
from selector.proto import selector_pb2 as pb
from selector.proto import selector_pb2_grpc as pb_grpc

PROMPT = ("What does entropy have to do with heat, and how does the second law constrain engines? " * 34)[:3000]
SELECTOR = """
import asyncio, json, logging, sys
from selector.config import SelectorConfig
from selector.server import serve
logging.basicConfig(level=logging.WARNING)
asyncio.run(serve(SelectorConfig(**json.loads(sys.argv[1]))))
"""


def _status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


async def measure(address: str, args) -> dict:
    options = [("grpc.max_send_message_length", 64 * MIB), ("grpc.max_receive_message_length", 64 * MIB)]
    async with grpc.aio.insecure_channel(address, options=options) as batch_channel, \
            grpc.aio.insecure_channel(address) as route_channel:
        batch_stub, route_stub = pb_grpc.SelectorStub(batch_channel), pb_grpc.SelectorStub(route_channel)
        await route_stub.Route(make_route_request("warm up"), timeout=30)
        latencies, slow, stop, t0 = [], [], asyncio.Event(), [time.perf_counter()]
        route_errors: Counter = Counter()

        async def route_client() -> None:
            # Closed loop: a stall of S seconds is one sample per client, not S x rate, so the percentiles
            # understate stalls (coordinated omission); `max` and `slow_routes_at_s_ms` are what show them.
            request = make_route_request("What is 2 + 2?")
            while not stop.is_set():
                start = time.perf_counter()
                try:
                    await route_stub.Route(request, timeout=60)
                except grpc.aio.AioRpcError as e:       # counted; the run goes on
                    route_errors[e.code().name] += 1
                    await asyncio.sleep(0.01)
                    continue
                latencies.append(time.perf_counter() - start)
                if latencies[-1] > 0.1:       # when the slow ones happen, from the batches' start
                    slow.append((round(start - t0[0], 2), round(latencies[-1] * 1000)))

        async def one_batch(request) -> str:
            try:
                await batch_stub.RouteBatch(request, timeout=600)
                return "OK"
            except grpc.aio.AioRpcError as e:
                return e.code().name

        request = pb.RouteBatchRequest(prompts=[PROMPT] * args.prompts, total_budget_usd=1000.0)
        routes = [asyncio.create_task(route_client()) for _ in range(4)]
        start = t0[0] = time.perf_counter()
        outcomes = await asyncio.gather(*(one_batch(request) for _ in range(args.batches)))
        elapsed = time.perf_counter() - start
        stop.set()
        await asyncio.gather(*routes)
    ms = [x * 1000 for x in latencies]
    route_ms = ({f"p{q}": round(percentile(ms, q), 2) for q in (50, 99)} | {"max": round(max(ms), 1)}) if ms else None
    return {"request_mib": round(request.ByteSize() / MIB, 1), "batch_outcomes": {o: outcomes.count(o) for o in
            set(outcomes)}, "batches_s": round(elapsed, 1), "routes": len(ms),
            "route_errors": dict(route_errors), "slow_routes_at_s_ms": slow[:20], "route_ms": route_ms}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.big_batches", description=__doc__.split("\n")[0])
    parser.add_argument("--batches", type=int, default=16)
    parser.add_argument("--prompts", type=int, default=4000)
    parser.add_argument("--budget-mib", type=float, default=256)
    parser.add_argument("--big-slots", type=int, default=2)
    parser.add_argument("--out", type=Path, default=PROJECT_ROOT / "bench" / "results" / "big_batches.json")
    args = parser.parse_args(argv)
    report = report_mod.new_report({k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()})
    with TritonServer() as triton:
        port = free_port()
        settings = {"port": port, "triton_url": triton.grpc_url, "max_in_flight_bytes": int(args.budget_mib * MIB),
                    "max_concurrent_big_requests": args.big_slots}
        selector = subprocess.Popen([sys.executable, "-c", SELECTOR, json.dumps(settings)], cwd=PROJECT_ROOT,
                                    env=dict(os.environ, PYTHONPATH=str(PROJECT_ROOT)))
        try:
            grpc.channel_ready_future(grpc.insecure_channel(f"127.0.0.1:{port}")).result(timeout=60)
            base = _status_kib(selector.pid, "VmRSS")
            report.update(asyncio.run(measure(f"127.0.0.1:{port}", args)))
            report["rss_mib"] = {"base": round(base / 1024), "peak": round(_status_kib(selector.pid, "VmHWM") / 1024)}
        finally:
            selector.terminate()
            selector.wait(30)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: report[k] for k in ("request_mib", "batch_outcomes", "batches_s", "routes", "route_ms",
                                             "slow_routes_at_s_ms",
                                             "rss_mib")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
