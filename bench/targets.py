"""What the benchmark measures: each target is an async callable `await target(prompt)`.

Six targets per encoder, measured in one run on one machine so that their ratios mean something:

    echo_floor          Triton, a Python-backend model with the predictor's I/O that does no work: the floor
    predictor_batching  routoo_predictor in Triton, dynamic batching on
    predictor_no_batch  the same model with dynamic batching off (how NVIDIA's LLM Router blueprint ships
                        its Triton models)
    selector_route      the selector's Route end to end (gRPC in, Triton call, policy, gRPC out)
    selector_route_2w   the same with --selector-workers 2, over 8 client connections
    in_process          Predictor.predict([prompt]) in the benchmark's own process, no RPC

Servers run in processes of their own (tritonserver, the selector in a `python -m` child), never inside the
load generator's event loop: sharing one interpreter would charge the server's work to the client's clock.
A target raises on a failed request; the load generator counts it as an error.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import shutil
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from predictor_service.contract import (ECHO_FLOOR_MODEL, EXPECTED_COST_USD, PREDICTOR_MODEL, PROMPT, PROMPT_DATATYPE,
                                        QUALITY, TORCH_THREADS)

log = logging.getLogger(__name__)

ENCODERS = ("static", "minilm")
TARGETS = ("echo_floor", "predictor_batching", "predictor_no_batch", "selector_route", "selector_route_2w",
           "in_process")
# Selector targets: SelectorConfig settings of the selector process, and client connections.
SELECTOR_TARGETS = {"selector_route": ({}, 1), "selector_route_2w": ({"workers": 2}, 8)}
TRITON_TARGETS = {"echo_floor": ECHO_FLOOR_MODEL, "predictor_batching": PREDICTOR_MODEL,
                  "predictor_no_batch": PREDICTOR_MODEL}

# Where the minilm artifact the benchmark trains is cached (`ROUTOO_BENCH_ARTIFACTS` overrides it).
DEFAULT_ARTIFACT_CACHE = Path.home() / ".cache" / "routoo" / "bench-artifacts"
DATA_ROOT = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "mmlu-pro"


class TargetUnavailable(RuntimeError):
    """A target that cannot be measured on this machine; the message says what is missing."""


# --- artifacts ------------------------------------------------------------------------------------------

def artifact_cache() -> Path:
    return Path(os.environ.get("ROUTOO_BENCH_ARTIFACTS") or DEFAULT_ARTIFACT_CACHE)


def ensure_artifact(encoder: str, *, data_root: Path = DATA_ROOT, show_progress: bool = True) -> Path:
    """The artifact folder for `encoder`: the committed default for `static`; for `minilm`, one trained on
    mmlu-pro/train once (~3-5 min of MiniLM embeddings on 2 cores) and cached.

    Raises TargetUnavailable when it would have to train one and the data set is not there.
    """
    from predictor_service.artifact import MANIFEST, default_artifact_path

    if encoder == "static":
        return default_artifact_path()
    if encoder not in ENCODERS:
        raise ValueError(f"unknown encoder {encoder!r}; choose one of {list(ENCODERS)}")
    folder = artifact_cache() / encoder
    if (folder / MANIFEST).is_file():
        return folder
    train_dir, dev_dir = data_root / "train", data_root / "dev"
    if not (train_dir / "prompts.jsonl").is_file():
        raise TargetUnavailable(f"no {encoder} artifact in {folder} and no training data in {train_dir} to "
                                f"train one; skipping the {encoder} encoder")
    from training.data import load_dataset
    from training.fit import train

    log.warning("training a %s artifact into %s (once; minutes on 2 cores)", encoder, folder)
    dev = load_dataset(dev_dir) if (dev_dir / "prompts.jsonl").is_file() else None
    artifact, _ = train(load_dataset(train_dir), dev, encoder_name=encoder, show_progress=show_progress)
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    artifact.save(tmp)
    shutil.rmtree(folder, ignore_errors=True)
    tmp.replace(folder)
    return folder


def default_prompts_path() -> Path:
    return DATA_ROOT / "dev" / "prompts.jsonl"


def load_prompts(path: Path | None, *, limit: int = 2000, seed: int = 0) -> list[str]:
    """Prompt texts from a canonical prompts.jsonl (MMLU-Pro dev by default), shuffled with a fixed seed.

    Without the data set, a fixed synthetic set of MMLU-sized prompts (~600 characters) stands in and the
    run says so.
    """
    from training.data import read_prompts

    path = path or default_prompts_path()
    rng = np.random.default_rng(seed)
    if path.is_file():
        texts = [p.text for p in read_prompts(path) if p.text.strip()]
    else:
        log.warning("%s not found: using synthetic prompts", path)
        words = ["energy", "momentum", "contract", "enzyme", "integral", "market", "court", "protein",
                 "voltage", "theorem", "tariff", "neuron", "which", "of", "the", "following", "is"]
        texts = [" ".join(rng.choice(words, size=int(rng.integers(40, 160)))) + "?" for _ in range(limit)]
    order = rng.permutation(len(texts))[:limit]
    return [texts[i] for i in order]


# --- ports and processes --------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
        if config.workers > 1:            # as serve() does: the others bind the same port
            from selector.workers import ExtraWorkers

            workers = ExtraWorkers(config)
            await asyncio.to_thread(workers.start, config.startup_timeout_s)
        ready.set()
        while not stop.is_set():
            await asyncio.sleep(0.1)
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


# --- CPU time by process ---------------------------------------------------------------------------------

def _proc_table() -> dict[int, tuple[int, str, int]]:
    """pid -> (ppid, comm, user + system clock ticks) for every process we can read (Linux /proc)."""
    table = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            raw = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        comm = raw[raw.index("(") + 1: raw.rindex(")")]
        fields = raw[raw.rindex(")") + 2:].split()
        # After the comm: state, ppid, ..., utime (11), stime (12); see proc(5).
        table[int(entry.name)] = (int(fields[1]), comm, int(fields[11]) + int(fields[12]))
    return table


def cpu_seconds_by_role(selector_pid: int | None = None) -> dict[str, float]:
    """CPU seconds used so far by this process and its descendants, by role: `loadgen` (this process),
    `tritonserver`, `python_stub` (Triton's Python-backend model processes), `selector`, `other`.

    On 2 cores the roles compete for the same CPUs: CPU-ms per request per role says where the throughput
    goes. Empty where /proc is missing.
    """
    if not Path("/proc/self/stat").is_file():
        return {}
    table = _proc_table()
    ticks = os.sysconf("SC_CLK_TCK")
    children: dict[int, list[int]] = {}
    for pid, (ppid, _, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    me = os.getpid()
    out: dict[str, float] = {}
    stack = [(me, "loadgen")]
    while stack:
        pid, inherited = stack.pop()
        if pid not in table:
            continue
        comm = table[pid][1]
        if pid == selector_pid:
            role = "selector"
        elif comm.startswith("tritonserver"):
            role = "tritonserver"
        elif comm.startswith("triton_python"):
            role = "python_stub"
        else:
            role = inherited if pid == me or inherited in ("selector", "python_stub") else "other"
        out[role] = out.get(role, 0.0) + table[pid][2] / ticks
        stack.extend((child, role) for child in children.get(pid, []))
    return out


def cpu_delta(before: dict[str, float], after: dict[str, float], requests: int) -> dict:
    """CPU ms per completed request by role, between two cpu_seconds_by_role snapshots."""
    if not after or requests <= 0:
        return {}
    used = {role: after[role] - before.get(role, 0.0) for role in after}
    out = {f"{role}_ms": round(1e3 * value / requests, 4) for role, value in sorted(used.items()) if value > 0}
    out["total_ms"] = round(1e3 * sum(v for v in used.values() if v > 0) / requests, 4)
    return out


# --- the targets ----------------------------------------------------------------------------------------

@dataclass
class TritonTarget:
    """One KServe-v2 infer call over gRPC (asyncio tritonclient, one channel reused by every request)."""

    url: str
    model_name: str
    client: object = field(init=False, repr=False)

    def __post_init__(self) -> None:
        from tritonclient.grpc.aio import InferenceServerClient

        self.client = InferenceServerClient(self.url)

    async def __call__(self, prompt: str):
        from tritonclient.grpc.aio import InferInput, InferRequestedOutput

        data = np.array([[prompt.encode("utf-8")]], dtype=np.object_)   # (batch=1, 1) BYTES
        inp = InferInput(PROMPT, [1, 1], PROMPT_DATATYPE)
        inp.set_data_from_numpy(data)
        outputs = [InferRequestedOutput(QUALITY), InferRequestedOutput(EXPECTED_COST_USD)]
        result = await self.client.infer(self.model_name, [inp], outputs=outputs)
        return result.as_numpy(QUALITY)

    async def statistics(self) -> dict:
        """Triton's cumulative statistics for this model (the statistics extension), as a dict."""
        stats = await self.client.get_inference_statistics(self.model_name, as_json=True)
        return stats["model_stats"][0] if stats.get("model_stats") else {}

    async def server_version(self) -> str:
        meta = await self.client.get_server_metadata(as_json=True)
        return str(meta.get("version", ""))

    async def close(self) -> None:
        await self.client.close()


@dataclass
class SelectorRouteTarget:
    """The selector's Route over its gRPC API (grpc.aio stubs), default policy. `channels` connections,
    used in turn: one connection reaches one selector worker (SO_REUSEPORT spreads connections)."""

    address: str
    channels: int = 1
    _channels: list = field(init=False, repr=False)
    _stubs: list = field(init=False, repr=False)
    _next: int = field(init=False, repr=False, default=0)

    def __post_init__(self) -> None:
        import grpc

        from selector.proto import selector_pb2_grpc

        # A local subchannel pool each, or channels to one address would share one connection.
        options = [("grpc.use_local_subchannel_pool", 1)] if self.channels > 1 else []
        self._channels = [grpc.aio.insecure_channel(self.address, options=options) for _ in range(self.channels)]
        self._stubs = [selector_pb2_grpc.SelectorStub(channel) for channel in self._channels]

    async def __call__(self, prompt: str):
        from selector.proto import selector_pb2

        self._next = (self._next + 1) % len(self._stubs)
        decision = await self._stubs[self._next].Route(selector_pb2.RouteRequest(prompt=prompt), timeout=10.0)
        return decision.model

    async def close(self) -> None:
        for channel in self._channels:
            await channel.close()


@dataclass
class InProcessTarget:
    """Predictor.predict([prompt]) called directly: the predictor's own cost with no RPC around it.

    It runs on the event loop's thread, so concurrent clients serialise on it, as they would on the GIL.
    """

    predictor: object

    @classmethod
    def load(cls, artifact: Path, device: str = "cpu") -> "InProcessTarget":
        import torch

        from predictor_service.predictor import Predictor

        # The same intra-op threads as a routoo_predictor instance in Triton, so RPC is the only difference.
        torch.set_num_threads(served_torch_threads())
        return cls(Predictor.load(artifact, device=device))

    async def __call__(self, prompt: str):
        quality, _ = self.predictor.predict([prompt])
        return quality

    async def close(self) -> None:
        return None


def served_torch_threads(repository: Path | None = None) -> int:
    """routoo_predictor's `torch_threads` parameter from the committed model config (1 if unset)."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    from predictor_service.triton_server import MODEL_REPOSITORY

    path = (repository or MODEL_REPOSITORY) / PREDICTOR_MODEL / "config.pbtxt"
    config = text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())
    value = config.parameters[TORCH_THREADS].string_value if TORCH_THREADS in config.parameters else ""
    return int(value) if value.strip() else 1


async def wait_until_idle(predictor: "TritonTarget", *, timeout_s: float = 60.0) -> float:
    """Waits until Triton has worked off every request queued for the model; returns the seconds waited.

    Requests a client gave up on (the selector's deadline, a probe's time-out) stay in Triton's queue and
    still run, and would slow the next measurement down. One request of our own is a barrier: the queue is
    first in, first out and there is one instance, so when it returns, everything queued before it is done.
    """
    start = time.perf_counter()
    with contextlib.suppress(Exception):    # a failed barrier is no reason to stop the benchmark
        await asyncio.wait_for(predictor("barrier"), timeout_s)
    return time.perf_counter() - start


def stats_delta(before: dict, after: dict) -> dict:
    """Server-side split of one measured run from two Triton statistics snapshots, per request in ms.

    Triton reports cumulative counts and nanoseconds; `queue` is the time a request waited for the
    dynamic batcher and a free instance, `compute_*` the model's input, execution and output phases
    (per request: an execution's time is charged to every request in its batch).
    """
    def total(snapshot: dict, phase: str) -> tuple[int, int]:
        entry = snapshot.get("inference_stats", {}).get(phase, {})
        return int(entry.get("count", 0)), int(entry.get("ns", 0))

    out: dict = {}
    n_success, _ = total(after, "success")
    n_success -= total(before, "success")[0]
    out["requests"] = n_success
    for phase in ("success", "queue", "compute_input", "compute_infer", "compute_output"):
        count = total(after, phase)[0] - total(before, phase)[0]
        ns = total(after, phase)[1] - total(before, phase)[1]
        key = "server_total_ms" if phase == "success" else f"{phase}_ms"
        out[key] = round(ns / count / 1e6, 4) if count > 0 else None
    fails = total(after, "fail")[0] - total(before, "fail")[0]
    out["failed"] = fails
    executions = int(after.get("execution_count", 0)) - int(before.get("execution_count", 0))
    inferences = int(after.get("inference_count", 0)) - int(before.get("inference_count", 0))
    out["executions"] = executions
    out["mean_batch_size"] = round(inferences / executions, 3) if executions > 0 else None
    # Rows per ModelInfer as Triton received them: 1 for single-prompt clients, more where the selector
    # coalesced. mean_batch_size is what Triton's dynamic batcher then made of them.
    out["rows_per_request"] = round(inferences / n_success, 3) if n_success > 0 else None
    return out


# --- the selector's own coalescing figures ----------------------------------------------------------------

_SELECTOR_SERIES = ("routoo_selector_coalesced_rows_sum", "routoo_selector_coalesced_rows_count",
                    "routoo_selector_coalesced_requests_sum", "routoo_selector_queue_wait_seconds_sum",
                    "routoo_selector_queue_wait_seconds_count")


def selector_counters(ports: tuple[int, ...]) -> dict[str, float]:
    """The coalescing histograms' sums and counts from each worker's /metrics, summed over the workers."""
    import urllib.request

    out = dict.fromkeys(_SELECTOR_SERIES, 0.0)
    for port in ports:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as page:
            for line in page.read().decode().splitlines():
                name, _, value = line.partition(" ")
                if name in out:
                    out[name] += float(value)
    return out


def selector_delta(before: dict[str, float], after: dict[str, float]) -> dict:
    """Per coalesced Triton call of one run: prompts (rows) and requests it carried; per request, the mean
    wait for a call slot (ms)."""
    d = {k: after[k] - before.get(k, 0.0) for k in after}
    calls, waits = d["routoo_selector_coalesced_rows_count"], d["routoo_selector_queue_wait_seconds_count"]
    return {"coalesced_calls": int(calls),
            "rows_per_call": round(d["routoo_selector_coalesced_rows_sum"] / calls, 3) if calls else None,
            "requests_per_call": round(d["routoo_selector_coalesced_requests_sum"] / calls, 3) if calls else None,
            "queue_wait_ms": round(1e3 * d["routoo_selector_queue_wait_seconds_sum"] / waits, 4) if waits else None}
