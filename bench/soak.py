"""Soak: the real `routoo serve` (a subprocess on free loopback ports) under mixed load for N minutes, with
tritonserver killed (SIGKILL) every minute and brought back by serve's supervisor, never by this script.

    python -m bench.soak                      # 10 minutes, a kill every 60 s
    python -m bench.soak --minutes 3          # shorter

Load: --route-clients closed-loop Route clients, one RouteBatch client (--batch-prompts prompts a call) and
one Score client (64 prompts), each call with a --timeout-s deadline. Every call ends as OK, failed with a
status code, or lost: no answer at all (the client's own deadline expired, or still pending at the end).
Goal: nothing lost, failures only while no predictor is ready. Also recorded: the outage after each kill
(kill to the next OK Route), and RSS and open fds of serve, tritonserver and its stubs at start and end.
Writes bench/results/soak.json (--out); not part of the test suite.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import grpc

from bench import report as report_mod
from bench.processes import children, kill_serve_tree
from predictor_service.triton_server import PROJECT_ROOT, free_port
from selector.client import make_route_request
from selector.config import MIB
from selector.proto import selector_pb2 as pb
from selector.proto import selector_pb2_grpc as pb_grpc

RESULTS = PROJECT_ROOT / "bench" / "results"
PROMPTS = [f"Question {i}: what does {a} have to do with {b}? Explain briefly, with one example."
           for i, (a, b) in enumerate(zip(["entropy", "tort law", "heaps", "Kant", "mitosis"] * 20,
                                          ["heat", "contracts", "sorting", "duty", "cancer"] * 20))]


def _usage(pid: int) -> dict:
    """RSS (MiB) and open fds of one process, or None if it is gone."""
    try:
        rss_kib = next(int(line.split()[1]) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                       if line.startswith("VmRSS:"))
        return {"pid": pid, "rss_mib": round(rss_kib / 1024, 1), "fds": len(os.listdir(f"/proc/{pid}/fd"))}
    except (OSError, StopIteration):
        return {"pid": pid, "rss_mib": None, "fds": None}


def snapshot(serve_pid: int) -> dict:
    tritons = children(serve_pid, "tritonserver")
    stubs = [p for t in tritons for p in children(t, "triton_python_b")]   # comm is cut to 15 characters
    return {"serve": _usage(serve_pid), "tritonserver": [_usage(p) for p in tritons],
            "stubs": [_usage(p) for p in stubs],
            "shm_regions": len(list(Path("/dev/shm").glob(f"routoo_{serve_pid}_*")))}


class Tally:
    def __init__(self) -> None:
        self.outcomes: dict[str, Counter] = {"Route": Counter(), "RouteBatch": Counter(), "Score": Counter()}
        self.pending = 0
        self.pending_at_end = 0
        self.last_ok_route = 0.0
        self.last_failed_route = 0.0
        self.failure_times: list[float] = []      # monotonic, every failed call: were they all in outages?

    def summary(self) -> dict:
        return {**{method: dict(counts) for method, counts in self.outcomes.items()},
                "lost_pending_at_end": self.pending_at_end}


async def _call(tally: Tally, method: str, call, request, timeout_s: float) -> None:
    tally.pending += 1
    try:
        await call(request, timeout=timeout_s)
        tally.outcomes[method]["OK"] += 1
        if method == "Route":
            tally.last_ok_route = time.monotonic()
    except Exception as e:   # noqa: BLE001 - every call ends as OK, a gRPC status, lost or a client error
        if isinstance(e, grpc.aio.AioRpcError):
            # The client's own deadline with no answer from the server: lost. The selector's own deadline
            # errors carry its message ("the predictor missed the deadline ...").
            lost = e.code() == grpc.StatusCode.DEADLINE_EXCEEDED and e.details() == "Deadline Exceeded"
            kind = "lost" if lost else e.code().name
        else:
            kind = f"client {type(e).__name__}"
        tally.outcomes[method][kind] += 1
        tally.failure_times.append(time.monotonic())
        if method == "Route":
            tally.last_failed_route = time.monotonic()
        await asyncio.sleep(0.01)      # a failing server is not hammered in a tight loop
    finally:
        tally.pending -= 1


async def load(address: str, args, tally: Tally, stop: asyncio.Event) -> None:
    options = [("grpc.max_send_message_length", 64 * MIB), ("grpc.max_receive_message_length", 64 * MIB)]
    async with grpc.aio.insecure_channel(address, options=options) as channel:
        stub = pb_grpc.SelectorStub(channel)

        async def route_client(i: int) -> None:
            n = i
            while not stop.is_set():
                n += 1
                await _call(tally, "Route", stub.Route, make_route_request(PROMPTS[n % len(PROMPTS)]), args.timeout_s)

        async def batch_client() -> None:
            request = pb.RouteBatchRequest(prompts=(PROMPTS * (args.batch_prompts // len(PROMPTS) + 1))
                                           [:args.batch_prompts], total_budget_usd=1.0)
            while not stop.is_set():
                await _call(tally, "RouteBatch", stub.RouteBatch, request, args.timeout_s)

        async def score_client() -> None:
            request = pb.ScoreRequest(prompts=PROMPTS[:64])
            while not stop.is_set():
                await _call(tally, "Score", stub.Score, request, args.timeout_s)

        tasks = [asyncio.create_task(route_client(i)) for i in range(args.route_clients)]
        tasks += [asyncio.create_task(batch_client()), asyncio.create_task(score_client())]
        await stop.wait()
        _, not_done = await asyncio.wait(tasks, timeout=args.timeout_s + 5)
        tally.pending_at_end = tally.pending if not_done else 0     # unanswered: lost too
        for task in not_done:
            task.cancel()


async def soak(args, serve_pid: int, address: str) -> dict:
    tally, stop = Tally(), asyncio.Event()
    loader = asyncio.create_task(load(address, args, tally, stop))
    started = time.monotonic()
    end = started + args.minutes * 60
    kills, next_kill = [], started + args.kill_every_s
    while time.monotonic() < end:
        await asyncio.sleep(0.05)
        # No kill in the last 30 s: the run ends with a ready predictor, so the end snapshot is comparable.
        if time.monotonic() >= next_kill and next_kill < end - 30:
            tritons = children(serve_pid, "tritonserver")
            killed_at = time.monotonic()
            for pid in tritons:
                os.kill(pid, signal.SIGKILL)
            kills.append({"at_s": round(killed_at - started, 1), "pids": tritons, "outage_s": None,
                          "_at": killed_at})
            next_kill += args.kill_every_s
        for kill in kills:     # the outage: from the kill to the first OK Route after a failed one
            killed_at = kill["_at"]
            if kill["outage_s"] is None and tally.last_ok_route > tally.last_failed_route > killed_at:
                kill["outage_s"] = round(tally.last_ok_route - killed_at, 2)
        if loader.done():
            break
    stop.set()
    await loader
    # A failure counts as during an outage from its kill to 1 s after the first OK Route (other clients'
    # calls on the reconnecting channel can still fail just after it); other failures are the finding.
    # A kill with no recovery seen ends its window at the next kill (or the run's end) and is reported:
    # an open-ended window would excuse every later failure.
    ends = [k["_at"] for k in kills[1:]] + [time.monotonic()]
    windows = [(k["_at"], k["_at"] + k["outage_s"] + 1.0 if k["outage_s"] is not None else end)
               for k, end in zip(kills, ends)]
    outside = [round(t - started, 2) for t in tally.failure_times if not any(a <= t <= b for a, b in windows)]
    for kill in kills:
        del kill["_at"]
    return {"outcomes": tally.summary(), "kills": kills, "failed_outside_outages": len(outside),
            "kills_without_recovery_seen": sum(k["outage_s"] is None for k in kills),
            "failed_outside_outages_at_s": outside[:50],
            "elapsed_s": round(time.monotonic() - started, 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--kill-every-s", type=float, default=60.0)
    parser.add_argument("--route-clients", type=int, default=8)
    parser.add_argument("--batch-prompts", type=int, default=1000)
    parser.add_argument("--timeout-s", type=float, default=10.0)
    parser.add_argument("--out", type=Path, default=RESULTS / "soak.json")
    args = parser.parse_args(argv)
    ports = {name: free_port() for name in ("selector", "grpc", "http", "metrics")}
    run_dir = Path(tempfile.mkdtemp(prefix="routoo-soak-"))
    log_path = run_dir / "serve.log"
    command = [sys.executable, "-m", "cli.main", "serve", "--selector-port", str(ports["selector"]),
               "--triton-grpc-port", str(ports["grpc"]), "--triton-http-port", str(ports["http"]),
               "--triton-metrics-port", str(ports["metrics"]), "--max-restarts", "1000"]
    report = report_mod.new_report({k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()})
    with open(log_path, "wb") as log_file:
        serve = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT, cwd=PROJECT_ROOT,
                                 env=dict(os.environ, PYTHONPATH=str(PROJECT_ROOT)))
    try:
        deadline = time.monotonic() + 180
        while "selector ready" not in log_path.read_text():
            if serve.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"routoo serve did not start; see {log_path}")
            time.sleep(0.2)
        time.sleep(2.0)                                       # let the first loads settle before measuring
        report["start"] = snapshot(serve.pid)
        report.update(asyncio.run(soak(args, serve.pid, f"127.0.0.1:{ports['selector']}")))
        report["end"] = snapshot(serve.pid)
    finally:
        if serve.poll() is None:
            serve.send_signal(signal.SIGTERM)
        try:
            report["serve_exit_code"] = serve.wait(60)
        except subprocess.TimeoutExpired:
            kill_serve_tree(serve)
            report["serve_exit_code"] = f"killed after 60 s: {serve.returncode}"
    time.sleep(1.0)
    report["after_exit"] = {"stubs_left": len([p for p in Path("/proc").iterdir() if p.name.isdigit() and
                                               f"routoo_{serve.pid}_".encode() in _cmdline(p)]),
                            "shm_regions_left": len(list(Path("/dev/shm").glob(f"routoo_{serve.pid}_*")))}
    text = log_path.read_text(errors="replace")
    report["serve_log"] = {"lines": len(text.splitlines()), "bytes": len(text.encode()),
                           "restarts_logged": text.count("tritonserver exited"), "path": str(log_path)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: report[k] for k in ("outcomes", "kills", "start", "end", "after_exit", "serve_log",
                                             "serve_exit_code")}, indent=1))
    print(f"-> {args.out}")
    return 0


def _cmdline(entry: Path) -> bytes:
    try:
        return (entry / "cmdline").read_bytes()
    except OSError:
        return b""


if __name__ == "__main__":
    sys.exit(main())
