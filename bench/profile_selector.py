"""Where the selector's CPU goes: py-spy samples the selector process while closed-loop clients route.

    pip install py-spy==0.4.3          # a sampling profiler; not a runtime requirement
    python -m bench.profile_selector                       # 32 clients, 8 s, default selector settings
    python -m bench.profile_selector --clients 1 --set coalesce=false --out /tmp/selector.txt

Starts tritonserver (static artifact, dynamic batching) and the selector in a child process as the
benchmark does, records the selector with `py-spy record --format raw` (collapsed stacks), and prints the
share of samples by part: the Route handler's own Python, the coalesced Triton call, grpc/asyncio's
event-loop work in compiled code (the rest of the loop thread), and the other threads. The findings are in
docs/bench.md.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import shutil
import subprocess
import sys
from pathlib import Path

from bench.loadgen import closed_loop
from bench.cpu_time import cpu_delta, cpu_seconds_by_role
from bench.inputs import ensure_artifact, load_prompts
from bench.processes import selector_process, triton_server
from bench.targets import SelectorRouteTarget
from predictor_service.contract import PREDICTOR_MODEL

# First match wins, in this order: a sample inside the handler is the handler's, whatever it calls.
# "RouteStream" matches the servicer's method and selector/streams.py's RouteStreams, whose reading and
# answering run in tasks of their own (stacks that start there, not in the servicer).
PARTS = (("RouteStream's messages (selector/streams.py: reading, tasks, writing; and their Routes)", "RouteStream"),
         ("Route handler (selector/service.py, policies, protobuf building)", "SelectorService.Route"),
         ("coalesced Triton call (selector/coalescer.py, triton_scores.py, tritonclient stub)",
          "CoalescingScores._call"),
         ("other threads (grpc's poller, /metrics)", "Thread.run"))
LOOP = "event loop and grpc.aio machinery in compiled code (cygrpc, uvloop)"


def summarise(collapsed: Path) -> tuple[int, dict[str, int]]:
    """Samples by part from py-spy's raw (collapsed) output: 'frame;frame;... count' per line."""
    parts: collections.Counter = collections.Counter()
    total = 0
    for line in collapsed.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        total += int(count)
        part = next((name for name, marker in PARTS if marker in stack), LOOP)
        parts[part] += int(count)
    return total, dict(parts.most_common())


async def profile(out: Path, clients: int, seconds: int, settings: dict, py_spy: str, stream: bool = False) -> dict:
    prompts = load_prompts(None, limit=2000)
    with triton_server(ensure_artifact("static"), dynamic_batching=True, models=(PREDICTOR_MODEL,)) as server:
        with selector_process(server.grpc_url, settings=settings) as selector:
            target = SelectorRouteTarget(selector.address, stream=stream)
            try:
                await closed_loop(target, prompts, clients, duration_s=1.0)       # warm-up
                spy = subprocess.Popen([py_spy, "record", "--pid", str(selector.pid), "--rate", "250",
                                        "--duration", str(seconds), "--format", "raw", "--nonblocking",
                                        "--output", str(out)], stdout=subprocess.DEVNULL,
                                       stderr=subprocess.DEVNULL)
                before = cpu_seconds_by_role(selector.pid)
                result = await closed_loop(target, prompts, clients, duration_s=seconds + 0.5)
                cpu = cpu_delta(before, cpu_seconds_by_role(selector.pid), result.completed)
                await asyncio.to_thread(spy.wait)
            finally:
                await target.close()
    total, parts = summarise(out)
    return {"clients": clients, "settings": settings, "stream": stream,
            "routes_per_s": round(result.summary()["throughput_rps"]),
            "cpu_ms_per_route": cpu, "samples": total,
            "share": {name: round(n / total, 3) for name, n in parts.items()} if total else {}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile_selector", description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=JSON",
                        help="a SelectorConfig field for the selector, e.g. coalesce=false (repeatable)")
    parser.add_argument("--stream", action="store_true",
                        help="each client sends its Routes on a RouteStream (bench target selector_route_stream)")
    parser.add_argument("--out", type=Path, default=Path("/tmp/routoo-selector-profile.txt"),
                        help="py-spy's collapsed stacks (default: %(default)s)")
    args = parser.parse_args(argv)
    py_spy = shutil.which("py-spy")
    if py_spy is None:
        raise SystemExit("py-spy is not on PATH: pip install py-spy==0.4.3")
    settings = {}
    for item in args.set:
        field, _, value = item.partition("=")
        settings[field] = json.loads(value)
    print(json.dumps(asyncio.run(profile(args.out, args.clients, args.seconds, settings, py_spy,
                                                 args.stream)), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
