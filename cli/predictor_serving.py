"""`routoo serve-predictor` and `routoo export-onnx`; registered by cli/main.py."""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import signal
import sys
import threading
from pathlib import Path

from cli.arg_types import count, non_negative, port, seconds
from predictor_service.contract import LOOPBACK, TRITON_GRPC_PORT, TRITON_HTTP_PORT, TRITON_METRICS_PORT

INSTANCE_KINDS = {"cpu": "KIND_CPU", "gpu": "KIND_GPU"}


def default_instance_count(instance_kind: str, usable_cpus: int | None = None) -> int:
    """Model instances when --instance-count is not given. CPU: half the usable CPUs, each instance running
    one torch thread, the other half left to Triton's gRPC threads and the Python backend's IPC (on 2 cores
    that is 1, which measured best: docs/serving.md). GPU: one instance per device."""
    if instance_kind != "KIND_CPU":
        return 1
    if usable_cpus is None:
        usable_cpus = _usable_cpus()
    return max(1, usable_cpus // 2)


def _usable_cpus(cgroup: Path = Path("/sys/fs/cgroup")) -> int:
    """CPUs this process may use: its affinity, capped by a cgroup CPU quota (`docker run --cpus 2` on a
    32-core host leaves the affinity at 32; 16 stubs of ~585 MB each would share 2 CPUs)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 2)
    quota = period = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        if (cgroup / "cpu.max").is_file():                                   # cgroup v2: "200000 100000"
            fields = (cgroup / "cpu.max").read_text().split()
            if fields[0] != "max":
                quota, period = int(fields[0]), int(fields[1])
        elif (cgroup / "cpu" / "cpu.cfs_quota_us").is_file():                # cgroup v1, -1 = none
            quota = int((cgroup / "cpu" / "cpu.cfs_quota_us").read_text())
            period = int((cgroup / "cpu" / "cpu.cfs_period_us").read_text())
    if quota is not None and period and quota > 0:
        cpus = min(cpus, max(1, math.ceil(quota / period)))
    return cpus


def cmd_serve_predictor(args: argparse.Namespace) -> int:
    from predictor_service.triton_server import TritonServer, ensure_artifact, materialise_repository

    kind = INSTANCE_KINDS[args.instance_kind]
    if args.instance_count is None and not args.write_repository:
        # A written repository may be served on another host: it keeps the committed count unless told.
        args.instance_count = default_instance_count(kind)
    if args.write_repository:
        materialise_repository(args.write_repository, ensure_artifact(args.artifact),
                               dynamic_batching=not args.no_dynamic_batching,
                               instance_count=args.instance_count, instance_kind=kind, copy_artifact=True,
                               max_queue_size=args.max_queue_size)
        print(f"model repository written to {args.write_repository} (artifact inside; copy it as it is)")
        return 0

    stop = threading.Event()
    # The server runs in its own session, so a terminal's Ctrl-C reaches only us: SIGINT and SIGTERM end the
    # wait below, and stop() sends tritonserver SIGTERM (then SIGKILL after --stop-timeout).
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    server = TritonServer(args.artifact, grpc_port=args.grpc_port, http_port=args.http_port,
                          metrics_port=args.metrics_port, host=args.host,
                          dynamic_batching=not args.no_dynamic_batching, instance_count=args.instance_count,
                          instance_kind=kind, log_verbose=args.log_verbose, stop_timeout_s=args.stop_timeout,
                          max_queue_size=args.max_queue_size)
    try:
        server.start()
        print(f"routoo_predictor ready: gRPC {server.grpc_url}, HTTP {server.http_url}, metrics "
              f"{server.metrics_url} (log {server.log_path}); Ctrl-C or SIGTERM stops it", flush=True)
        while not stop.wait(0.5):
            if not server.running():
                # The log's end, here: its run directory is removed below, and in a pod stderr is what
                # `kubectl logs` keeps.
                print(f"routoo: error: tritonserver exited; the end of its log ({server.log_path}, removed on "
                      f"exit):\n{server.log_tail()}", file=sys.stderr)
                return 1
        return 0
    finally:
        server.stop()
        server.cleanup()


def cmd_export_onnx(args: argparse.Namespace) -> int:
    from predictor_service.onnx_export import write_triton_repository
    from predictor_service.triton_server import ensure_artifact

    written = write_triton_repository(ensure_artifact(args.artifact), args.out,
                                      instance_kind=INSTANCE_KINDS[args.instance_kind])
    for path in written:
        print(f"wrote {path}")
    return 0


def add_commands(subparsers) -> None:
    p = subparsers.add_parser("serve-predictor", help="serve the predictor in Triton Inference Server")
    p.add_argument("--artifact", help="artifact folder (default: the committed default; a missing one is an error)")
    p.add_argument("--host", default=LOOPBACK, help="address every endpoint binds (default: loopback)")
    p.add_argument("--grpc-port", type=port, default=TRITON_GRPC_PORT, help="0 picks a free port")
    p.add_argument("--http-port", type=port, default=TRITON_HTTP_PORT, help="0 picks a free port")
    p.add_argument("--metrics-port", type=port, default=TRITON_METRICS_PORT,
                   help="Prometheus metrics at http://HOST:PORT/metrics; 0 picks a free port")
    p.add_argument("--no-dynamic-batching", action="store_true", help="serve with dynamic batching off")
    p.add_argument("--instance-count", type=count,
                   help="model instances (default: half the usable CPUs for cpu, one per GPU for gpu)")
    p.add_argument("--instance-kind", choices=sorted(INSTANCE_KINDS), default="cpu")
    p.add_argument("--max-queue-size", type=non_negative,
                   help="requests Triton queues before it refuses more (\"Exceeds maximum queue size\", which "
                        "the selector answers RESOURCE_EXHAUSTED); default 0 = unbounded, as any queue policy "
                        "made Triton 2.51 stall ~0.5 s at a time under load (docs/serving.md)")
    p.add_argument("--stop-timeout", type=seconds, default=15.0, help="seconds from SIGTERM to SIGKILL")
    p.add_argument("--log-verbose", action="store_true", help="tritonserver --log-verbose=1")
    p.add_argument("--write-repository", metavar="DIR",
                   help="only write the materialised model repository to DIR (for the tritonserver container)")
    p.set_defaults(func=cmd_serve_predictor)

    p = subparsers.add_parser("export-onnx", help="export the predictor to ONNX as Triton onnxruntime models")
    p.add_argument("--artifact", help="artifact folder (default: the committed default)")
    p.add_argument("--out", required=True, help="model repository folder to write")
    p.add_argument("--instance-kind", choices=sorted(INSTANCE_KINDS), default="gpu")
    p.set_defaults(func=cmd_export_onnx)
