"""More selector processes on one port (`--selector-workers N`), for hosts with cores to spare.

One selector process is one event loop on one core: at 32 clients nearly all of its CPU is grpc.aio's own
per-RPC work (docs/bench.md), which no amount of batching behind it removes. N processes bind the same
address with SO_REUSEPORT (grpc option "grpc.so_reuseport"), and the kernel spreads incoming connections
over them: one client connection stays on one worker, so the gain needs several connections (many
clients, or a client with several channels). Each worker has its own Triton channel, coalescing queue and
metrics; with --metrics-port P, worker i serves /metrics on P + i.

The first worker is the calling process (serve()); it starts the others, waits until they listen, and
stops them when it stops. A worker that dies is reported in the log; the others keep serving.
"""

from __future__ import annotations

import logging
import multiprocessing
import time
from dataclasses import replace

from selector.config import SelectorConfig

log = logging.getLogger("routoo.selector")


class WorkerStartError(RuntimeError):
    """An extra selector worker did not start."""


def _worker_main(config: SelectorConfig, index: int, ready) -> None:
    """Child process: one more selector on the shared port until SIGINT/SIGTERM."""
    from selector.server import run_event_loop, serve

    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s %(levelname)s %(name)s[{index}]: %(message)s")
    run_event_loop(serve(config, on_started=lambda server, port: ready.set(), worker_index=index),
                   uvloop=config.uvloop)


class ExtraWorkers:
    """Workers 1..N-1 of a selector whose worker 0 is this process."""

    def __init__(self, config: SelectorConfig):
        if config.port == 0:
            raise ValueError("selector workers share one port: give a fixed port (not 0) with workers > 1")
        self._ctx = multiprocessing.get_context("spawn")    # no fork of a process that holds grpc threads
        self._processes = []
        self._ready = []
        for index in range(1, config.workers):
            metrics_port = config.metrics_port + index if config.metrics_port else config.metrics_port
            ready = self._ctx.Event()
            process = self._ctx.Process(target=_worker_main, name=f"routoo-selector-{index}",
                                        args=(replace(config, metrics_port=metrics_port), index, ready))
            self._processes.append(process)
            self._ready.append(ready)

    def start(self, timeout_s: float) -> None:
        """Starts the workers and waits until each listens; raises WorkerStartError if one does not."""
        for process in self._processes:
            process.start()
        deadline = time.monotonic() + timeout_s
        for process, ready in zip(self._processes, self._ready):
            while not ready.wait(0.2):
                if not process.is_alive():
                    raise WorkerStartError(f"selector worker {process.name} exited with code {process.exitcode} "
                                           f"at start-up; see its log")
                if time.monotonic() > deadline:
                    raise WorkerStartError(f"selector worker {process.name} did not start within {timeout_s:g} s")

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self._processes if p.pid is not None]

    def stop(self, grace_s: float) -> None:
        """SIGTERM to each (a graceful stop of its server), then SIGKILL to any still running."""
        for process in self._processes:
            if process.is_alive():
                process.terminate()
        for process in self._processes:
            process.join(grace_s + 5.0)
            if process.is_alive():
                log.warning("selector worker %s did not stop; killing it", process.name)
                process.kill()
                process.join(5.0)
