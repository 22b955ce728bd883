"""The servers a benchmark measures, each in a process of its own on free loopback ports: the selector in a
spawned child, the real tritonserver (predictor_service.triton_server)."""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from bench.targets import TargetUnavailable


def kill_serve_tree(serve) -> None:
    """SIGKILL to a `routoo serve` Popen and to its tritonservers, whose sessions (and process groups, with
    their Python stubs) are their own: killing serve alone would orphan them. Found first, while they are
    still serve's children."""
    import os
    import signal

    tritons = children(serve.pid, "tritonserver")
    serve.kill()
    for pid in tritons:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
    serve.wait(10)


def _proc_stat(pid: int) -> tuple[str, int] | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat[stat.index("(") + 1:stat.rindex(")")], int(stat[stat.rindex(")") + 2:].split()[1])


def children(pid: int, comm: str) -> list[int]:
    """Pids whose parent is `pid` and whose command name (/proc comm, cut to 15 characters) is `comm`."""
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            stat = _proc_stat(int(entry.name))
            if stat and stat[1] == pid and stat[0] == comm:
                out.append(int(entry.name))
    return out




def free_port() -> int:
    """predictor_service.triton_server.free_port, imported on call: importing it loads torch (~2.7 s), and
    the spawned selector child re-imports this module, whose CPU and memory the benchmark measures."""
    from predictor_service.triton_server import free_port as pick

    return pick()


def _run_selector(address: str, triton_url: str, ready, stop, settings: dict | None = None) -> None:
    """Child process: the selector's gRPC server (default settings but the addresses and `settings`) until
    `stop` is set."""
    from selector.config import SelectorConfig
    from selector.server import create_server, run_event_loop

    host, port = address.rsplit(":", 1)
    config = SelectorConfig(host=host, port=int(port), triton_url=triton_url, **(settings or {}))

    async def main() -> None:
        server, _ = await create_server(address, config=config)
        await server.start()
        workers = None
        try:
            if config.workers > 1:            # as serve() does: the others bind the same port
                from selector.workers import ExtraWorkers

                workers = ExtraWorkers(config)
                await asyncio.to_thread(workers.start, config.startup_timeout_s)
            ready.set()
            while not stop.is_set():
                await asyncio.sleep(0.1)
        finally:
            # Also when a worker failed to start: one left running would serve, and burn CPU, for the
            # rest of the benchmark.
            await server.stop(1.0)
            if workers is not None:
                await asyncio.to_thread(workers.stop, 1.0)

    run_event_loop(main(), uvloop=config.uvloop)


@dataclass(frozen=True)
class SelectorProcess:
    address: str
    pid: int
    metrics_ports: tuple[int, ...] = ()     # one /metrics per worker


def _free_port_run(n: int) -> int:
    """A port P with P..P+n-1 free now (worker i of a selector serves /metrics on P + i)."""
    for _ in range(50):
        first = free_port()
        try:
            for k in range(1, n):
                with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                    s.bind(("127.0.0.1", first + k))
        except OSError:
            continue
        return first
    raise TargetUnavailable(f"no run of {n} free ports for the selector's /metrics")


@contextlib.contextmanager
def selector_process(triton_url: str, *, startup_timeout_s: float = 90.0, settings: dict | None = None):
    """The selector in a spawned child process on a free loopback port; yields its address and pid.
    `settings`: SelectorConfig fields other than the addresses."""
    ctx = multiprocessing.get_context("spawn")
    ready, stop = ctx.Event(), ctx.Event()
    address = f"127.0.0.1:{free_port()}"
    workers = int((settings or {}).get("workers", 1))
    metrics_port = _free_port_run(workers)
    settings = {"metrics_port": metrics_port, **(settings or {})}
    # Not a daemon: a daemonic process may not start the selector's own worker processes.
    proc = ctx.Process(target=_run_selector, args=(address, triton_url, ready, stop, settings))
    proc.start()
    try:
        deadline = time.monotonic() + startup_timeout_s
        while not ready.wait(0.2):
            if not proc.is_alive():
                raise TargetUnavailable(f"the selector process exited with code {proc.exitcode} at start-up")
            if time.monotonic() > deadline:
                raise TargetUnavailable(f"the selector was not ready within {startup_timeout_s:.0f} s")
        yield SelectorProcess(address, proc.pid, tuple(range(metrics_port, metrics_port + workers)))
    finally:
        stop.set()
        proc.join(10)
        if proc.is_alive():
            proc.terminate()
            proc.join(5)


@contextlib.contextmanager
def triton_server(artifact: Path, *, dynamic_batching: bool, models: tuple[str, ...],
                  instance_kind: str = "KIND_CPU"):
    """The real tritonserver (predictor_service.triton_server) on free loopback ports; yields it."""
    try:
        from predictor_service.triton_server import TritonServer
    except ImportError as e:
        raise TargetUnavailable(f"predictor_service.triton_server is not importable ({e})") from e
    server = TritonServer(artifact=artifact, dynamic_batching=dynamic_batching, models=models,
                          instance_kind=instance_kind)
    with server:
        yield server
