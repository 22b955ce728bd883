"""Run the real `tritonserver` (from the nvidia-pytriton wheel) on Routoo's model repository.

    with TritonServer() as server:           # free loopback ports, default artifact, both models
        score_remote(server.grpc_url, ["some prompt"])

`start()` materialises `model_repository/` into a run directory (artifact path, the pool's names and prices
and a label file written into each config, dynamic batching and instance count set), prepares the Python
backend directory the wheel needs (stub for this Python, LD_LIBRARY_PATH; /work/shared/NOTES.md), starts the
binary in explicit model-control mode and waits until every model is ready. Clients discover the pool from
the served config's `parameters` (`pool_models`, `pool_prices`) or the QUALITY output's labels.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from predictor_service.artifact import Artifact, default_artifact_path
from predictor_service.contract import (ARTIFACT_PATH, LOOPBACK, POOL_LABELS_FILE, QUALITY, SERVED_MODELS,
                                        pool_parameters)
from predictor_service.backend_stubs import stub_pids, stubs_gone
from predictor_service.supervision import UNSERVING, bounded_error, describe_exit, spawn_group, stop_group

log = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parents[1]
MODEL_REPOSITORY = PROJECT_ROOT / "model_repository"
SERVED_ARTIFACT = "artifact"         # the artifact's folder inside a portable repository's version folder


class TritonServerError(RuntimeError):
    """The server could not be set up or did not become ready; the message carries its last log lines.
    `returncode` is the server's exit status when it exited before it was ready (negative: a signal)."""

    def __init__(self, message: str, returncode: int | None = None):
        super().__init__(message)
        self.returncode = returncode


# tritonserver has been seen to die of these while starting, once in dozens of starts and never twice in a
# row (SIGSEGV after SIGCONT, SIGABRT on a supervised restart in a loaded CI run): a crash, not a setting,
# so it is started again, after a short pause. An exit with a code (a bad flag, a taken port) or
# SIGTERM/SIGKILL (someone stopped it) is not retried. These tries are one start to a Supervisor: its
# restart policy counts exits of a server that was running, not a start that never got there.
_START_CRASHES = frozenset(-int(s) for s in (signal.SIGSEGV, signal.SIGABRT, signal.SIGBUS, signal.SIGILL,
                                              signal.SIGFPE))
_START_TRIES = 3
_CRASH_PAUSE_S = 0.5


def free_port(host: str = LOOPBACK) -> int:
    """A port that was free a moment ago (the OS may hand it out again; start() retries on a clash)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class TritonDist:
    """The parts of the nvidia-pytriton wheel that running its `tritonserver` by hand needs."""

    server: Path            # bin/tritonserver
    python_backend: Path    # backends/python: libtriton_python.so, triton_python_backend_utils.py
    stub: Path              # triton_python_backend_stub built for the running Python
    libs: Path              # nvidia_pytriton.libs: libcudart and friends, which the copied stub links to

    @classmethod
    def locate(cls) -> "TritonDist":
        try:
            import pytriton
        except ImportError as e:
            raise TritonServerError("nvidia-pytriton is not installed; it ships the tritonserver binary "
                                    "(pip install -r requirements.txt)") from e
        root = Path(pytriton.__file__).resolve().parent / "tritonserver"
        version = f"{sys.version_info.major}.{sys.version_info.minor}"
        dist = cls(server=root / "bin" / "tritonserver", python_backend=root / "backends" / "python",
                   stub=root / "python_backend_stubs" / version / "triton_python_backend_stub",
                   libs=root.parent.parent / "nvidia_pytriton.libs")
        missing = [str(p) for p in (dist.server, dist.python_backend, dist.stub, dist.libs) if not p.exists()]
        if missing:
            raise TritonServerError(f"nvidia-pytriton wheel lacks {missing} (Python {version} stub needed)")
        return dist

    def backend_directory(self, target: Path) -> Path:
        """`--backend-directory`: python/ holds the backend's files plus the stub for this Python."""
        python_dir = target / "python"
        shutil.copytree(self.python_backend, python_dir, dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns("__pycache__"))
        shutil.copy2(self.stub, python_dir / "triton_python_backend_stub")
        return target

    def environment(self) -> dict[str, str]:
        env = dict(os.environ)
        # The stub cannot find libcudart-*.so or libpython3.X.so without these (NOTES.md).
        libs = [str(self.libs), sysconfig.get_config_var("LIBDIR") or ""]
        env["LD_LIBRARY_PATH"] = ":".join(filter(None, [*libs, env.get("LD_LIBRARY_PATH", "")]))
        # The stub embeds libpython in isolated mode (PYTHON* variables are ignored) and finds its prefix
        # from the `python3` on PATH: putting this interpreter's bin/ first gives model.py this venv's
        # site-packages, hence torch and, through the editable install (`pip install -e .`), predictor_service.
        env["PATH"] = ":".join(filter(None, [str(Path(sys.prefix) / "bin"), env.get("PATH", "")]))
        env.setdefault("HF_HUB_OFFLINE", "1")
        env.setdefault("TRANSFORMERS_OFFLINE", "1")
        env.setdefault("TOKENIZERS_PARALLELISM", "false")
        return env


def ensure_artifact(path: str | Path | None) -> Path:
    """The artifact folder to serve (default: the committed default artifact), checked by loading it. A
    missing or unusable artifact is an error naming the folder, never silently replaced: training belongs
    to training/ (`make train-default` rebuilds the default one), not to the launcher."""
    folder = Path(path) if path is not None else default_artifact_path()
    artifact = Artifact.load(folder)
    if artifact.manifest.encoder == "static":
        # Its table and tokenizer too (digests checked): Triton would otherwise be the first to read them,
        # and name neither the folder nor the file ("Internal: Exception: expected value at line 1").
        artifact.load_encoder()
    return folder


def materialise_repository(target: str | Path, artifact_path: str | Path, *,
                           models: tuple[str, ...] = SERVED_MODELS, dynamic_batching: bool = True,
                           instance_count: int | None = None, instance_kind: str = "KIND_CPU",
                           source: Path = MODEL_REPOSITORY, copy_artifact: bool = False,
                           max_queue_size: int | None = None) -> Path:
    """Copy `source`'s models into `target` with the served settings written into each config.pbtxt.

    instance_count and max_queue_size None keep the committed values (no queue bound; max_queue_size 0: none). With
    dynamic_batching False the block is removed and
    nothing else changes, so "batching off" is the same model with only that difference. copy_artifact
    puts the artifact inside each model's version folder and refers to it by a relative path, so the
    repository can be copied to another host (NVIDIA's container) as it is.
    """
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    artifact_path = Path(artifact_path).resolve()
    manifest = Artifact.load(artifact_path).manifest
    target = Path(target)
    for name in models:
        if not (source / name / "config.pbtxt").is_file():
            choices = sorted(p.name for p in source.iterdir() if (p / "config.pbtxt").is_file())
            raise TritonServerError(f"no model {name!r} in {source}; it has {choices}")
        model_dir = target / name
        shutil.copytree(source / name, model_dir, dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__"))
        config = text_format.Parse((model_dir / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
        # Only models that read an artifact (their committed config names the parameter) get a copy.
        copy_here = copy_artifact and ARTIFACT_PATH in config.parameters
        if copy_here:
            shutil.copytree(artifact_path, model_dir / "1" / SERVED_ARTIFACT, dirs_exist_ok=True)
        parameters = {ARTIFACT_PATH: SERVED_ARTIFACT if copy_here else str(artifact_path),
                      **pool_parameters(manifest.model_names, manifest.model_prices)}
        for key, value in parameters.items():
            config.parameters[key].string_value = value
        if not dynamic_batching:
            config.ClearField("dynamic_batching")
        elif max_queue_size:
            config.dynamic_batching.default_queue_policy.max_queue_size = max_queue_size
        elif max_queue_size == 0:   # no policy at all: an empty one is still a policy (config.pbtxt: policies stalled)
            config.dynamic_batching.ClearField("default_queue_policy")
        for group in config.instance_group:
            if instance_count is not None:
                group.count = instance_count
            group.kind = model_config_pb2.ModelInstanceGroup.Kind.Value(instance_kind)
        for output in config.output:
            if output.name == QUALITY:
                (model_dir / POOL_LABELS_FILE).write_text("".join(f"{m}\n" for m in manifest.model_names),
                                                          encoding="utf-8")
                output.label_filename = POOL_LABELS_FILE
        (model_dir / "config.pbtxt").write_text(text_format.MessageToString(config))
    return target


def _http_ok(url: str, timeout: float = 1.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


class TritonServer:
    """One `tritonserver` process serving Routoo's models; a context manager (start on enter, stop on exit).

    Ports of 0 or None are picked free at the first start and kept, so `restart()` comes back on the same
    addresses (the selector's recovery tests rely on that).
    """

    def __init__(self, artifact: str | Path | None = None, *, grpc_port: int | None = 0,
                 http_port: int | None = 0, metrics_port: int | None = 0, host: str = LOOPBACK,
                 dynamic_batching: bool = True, instance_count: int | None = None,
                 instance_kind: str = "KIND_CPU", models: tuple[str, ...] = SERVED_MODELS,
                 log_verbose: bool = False, ready_timeout_s: float = 180.0, stop_timeout_s: float = 15.0,
                 run_dir: str | Path | None = None, max_queue_size: int | None = None):
        self.artifact = artifact
        self.host = host
        self.dynamic_batching = dynamic_batching
        self.instance_count = instance_count          # None: the committed config's count
        self.max_queue_size = max_queue_size          # None: the committed config's (unbounded)
        self.instance_kind = instance_kind
        self.models = tuple(models)
        self.log_verbose = log_verbose
        self.ready_timeout_s = ready_timeout_s        # first start loads torch + the artifact: ~10 s here
        self.stop_timeout_s = stop_timeout_s          # SIGTERM grace before SIGKILL
        self.name = "tritonserver"                    # as a supervised child (predictor_service/supervision.py)
        self._requested_ports = {"grpc": grpc_port, "http": http_port, "metrics": metrics_port}
        self.ports: dict[str, int] = {}
        self._run_dir = Path(run_dir) if run_dir is not None else None
        self._owns_run_dir = run_dir is None
        self._process: subprocess.Popen | None = None
        self._stubs: frozenset[int] = frozenset()      # its Python-backend stubs, once ready
        self._log_file = None
        self._shm_prefix = ""

    # --- addresses -------------------------------------------------------------------------------------
    @property
    def grpc_url(self) -> str:
        return f"{self.host}:{self.ports['grpc']}"

    @property
    def http_url(self) -> str:
        return f"{self.host}:{self.ports['http']}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.host}:{self.ports['metrics']}/metrics"

    @property
    def repository(self) -> Path:
        return self._require_run_dir() / "model_repository"

    @property
    def log_path(self) -> Path:
        return self._require_run_dir() / "tritonserver.log"

    def _require_run_dir(self) -> Path:
        if self._run_dir is None:
            raise TritonServerError("the server has not been started")
        return self._run_dir

    # --- lifecycle -------------------------------------------------------------------------------------
    def __enter__(self) -> "TritonServer":
        try:
            self.start()
        except BaseException:   # a failed start leaves no process or run directory behind
            self.stop()
            self.cleanup()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
        self.cleanup()

    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def exit_status(self) -> int | None:
        """The exit status once the process has exited (reaping it), None while it runs or was stopped;
        UNSERVING while it runs without a Python-backend stub it was ready with (backend_stubs: it would
        answer that model's every request INTERNAL, and never recover)."""
        process = self._process
        status = None if process is None else process.poll()
        if status is None and self._stubs and stubs_gone(process.pid, self._stubs):
            return UNSERVING
        return status

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    def start(self) -> "TritonServer":
        if self.running():
            return self
        if self._run_dir is None:
            self._run_dir = Path(tempfile.mkdtemp(prefix="routoo-triton-"))
        if not (self._run_dir / "model_repository").is_dir():
            self._prepare()
        # Auto-picked ports can be taken between free_port() and the bind: retry with fresh ones, but never
        # move ports that were asked for or that a restart must keep.
        first_start = not self.ports
        for attempt in range(_START_TRIES):
            if first_start:
                self.ports = {k: (v or free_port(self.host)) for k, v in self._requested_ports.items()}
            self._launch()
            try:
                self._wait_ready()
                return self
            except TritonServerError as e:   # its message ends with the server's last log lines
                clash = "already in use" in str(e)
                self.stop()
                last = attempt == _START_TRIES - 1
                if clash and first_start and not any(self._requested_ports.values()) and not last:
                    log.warning("a port picked for tritonserver was taken meanwhile (%s); retrying on fresh "
                                "ports", self.ports)
                elif e.returncode in _START_CRASHES and not last:
                    log.warning("tritonserver was %s before it was ready; starting it again in %.1f s: %s",
                                describe_exit(e.returncode), _CRASH_PAUSE_S, bounded_error(e, lines=8))
                    time.sleep(_CRASH_PAUSE_S)
                else:
                    raise
        return self

    def restart(self) -> "TritonServer":
        """Stop, then start again on the same ports with the same repository."""
        self.stop()
        return self.start()

    def stop(self) -> None:
        """SIGTERM, SIGKILL after stop_timeout_s, then SIGKILL to what is left of its process group: the
        Python stubs outlive a server killed with SIGKILL (re-parented to PID 1, 585 MB each, seen)."""
        process, self._process, self._stubs = self._process, None, frozenset()
        if process is not None:
            stop_group(process, timeout_s=self.stop_timeout_s, name="tritonserver")
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        # A killed stub leaves its shared-memory regions behind; the prefix is unique to this server.
        if self._shm_prefix:
            for leftover in Path("/dev/shm").glob(f"{self._shm_prefix}*"):
                with contextlib.suppress(OSError):
                    leftover.unlink()

    def cleanup(self) -> None:
        """Remove the run directory if this object created it (after stop)."""
        if self._owns_run_dir and self._run_dir is not None and not self.running():
            shutil.rmtree(self._run_dir, ignore_errors=True)
            self._run_dir = None

    # --- internals -------------------------------------------------------------------------------------
    def _prepare(self) -> None:
        artifact_path = ensure_artifact(self.artifact)
        materialise_repository(self._run_dir / "model_repository", artifact_path, models=self.models,
                               dynamic_batching=self.dynamic_batching, instance_count=self.instance_count,
                               instance_kind=self.instance_kind, max_queue_size=self.max_queue_size)
        TritonDist.locate().backend_directory(self._run_dir / "backends")

    def command(self) -> list[str]:
        dist = TritonDist.locate()
        run_dir = self._require_run_dir()
        args = [str(dist.server), f"--model-repository={run_dir / 'model_repository'}",
                f"--backend-directory={run_dir / 'backends'}",
                "--model-control-mode=explicit", *(f"--load-model={m}" for m in self.models),
                # The configs are complete; auto-complete would launch one more stub per model just to ask
                # model.py (which imports torch: ~8 s more to start on 2 cores).
                "--disable-auto-complete-config",
                f"--grpc-address={self.host}", f"--grpc-port={self.ports['grpc']}",
                f"--http-address={self.host}", f"--http-port={self.ports['http']}",
                f"--metrics-address={self.host}", f"--metrics-port={self.ports['metrics']}",
                # Servers on one machine must not share the Python backend's shared-memory regions.
                f"--backend-config=python,shm-region-prefix-name={self._shm_prefix}",
                f"--exit-timeout-secs={max(1, int(self.stop_timeout_s) - 2)}"]
        if self.log_verbose:
            args.append("--log-verbose=1")
        return args

    def _launch(self) -> None:
        self._shm_prefix = f"routoo_{os.getpid()}_{self.ports['grpc']}_"
        self._log_file = open(self.log_path, "ab")
        log.info("starting tritonserver: gRPC %s, HTTP %s, metrics %s (log %s)", self.grpc_url, self.http_url,
                 self.metrics_url, self.log_path)
        # Its own session, so the group holds the server and its Python stubs; SIGTERM when serve's thread dies.
        self._process = spawn_group(self.command(), stdout=self._log_file, stderr=subprocess.STDOUT,
                                    env=TritonDist.locate().environment())

    def _wait_ready(self) -> None:
        base = f"http://{self.http_url}/v2"
        deadline = time.monotonic() + self.ready_timeout_s
        while time.monotonic() < deadline:
            if self._process is None or self._process.poll() is not None:
                code = None if self._process is None else self._process.returncode
                raise TritonServerError(f"tritonserver exited with code {code} before it was ready; last log "
                                        f"lines ({self.log_path}):\n{self.log_tail()}", returncode=code)
            if _http_ok(f"{base}/health/ready") and all(_http_ok(f"{base}/models/{m}/ready") for m in self.models):
                self._stubs = stub_pids(self._process.pid)
                return
            time.sleep(0.1)
        raise TritonServerError(f"tritonserver not ready after {self.ready_timeout_s:.0f} s; last log lines "
                                f"({self.log_path}):\n{self.log_tail()}")

    def log_tail(self, n_lines: int = 30) -> str:
        with contextlib.suppress(OSError):
            lines = self.log_path.read_text(errors="replace").splitlines()
            return "\n".join(lines[-n_lines:])
        return "(no log)"
