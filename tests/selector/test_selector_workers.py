"""`--selector-workers N`: N selector processes on one port (SO_REUSEPORT), against the real tritonserver.

The kernel spreads connections over the workers; 16 connections leave both workers idle with probability
2 x 2^-16. Each worker counts its own requests on its own /metrics port (P, P + 1).
"""

import signal
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import grpc
import pytest

from predictor_service.triton_server import free_port
from selector.client import make_route_request
from selector.config import SelectorConfig
from selector.proto import selector_pb2_grpc as pb_grpc
from tests.support.selector_harness import PROMPTS, SelectorThread

pytestmark = pytest.mark.timeout(120)
ROOT = Path(__file__).resolve().parents[2]


def routed_requests(metrics_port: int) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as page:
        for line in page.read().decode().splitlines():
            if line.startswith('routoo_selector_request_seconds_count{method="Route"}'):
                return float(line.split()[-1])
    return 0.0


def test_two_workers_share_the_port_both_answer_and_both_stop_on_sigterm(triton_server):
    port, metrics = free_port(), free_port()
    while metrics + 1 == port:
        metrics = free_port()
    process = subprocess.Popen([sys.executable, "-m", "selector.server", "--selector-port", str(port),
                                "--triton-url", triton_server.grpc_url, "--selector-workers", "2",
                                "--metrics-port", str(metrics)],
                               cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        lines = []
        for line in process.stdout:
            lines.append(line)
            if "2 workers" in line or process.poll() is not None:
                break
        assert any("2 workers" in line for line in lines), "".join(lines)
        channels = [grpc.insecure_channel(f"127.0.0.1:{port}", options=[("grpc.use_local_subchannel_pool", 1)])
                    for _ in range(16)]
        try:
            for i, channel in enumerate(channels):
                assert pb_grpc.SelectorStub(channel).Route(make_route_request(PROMPTS[i]), timeout=30).model
        finally:
            for channel in channels:
                channel.close()
        per_worker = [routed_requests(metrics), routed_requests(metrics + 1)]
        assert sum(per_worker) == 16 and min(per_worker) >= 1, per_worker
        process.send_signal(signal.SIGTERM)
        rest = process.communicate(timeout=60)[0]
        assert process.returncode == 0, "".join(lines) + rest
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate(timeout=10)
    with pytest.raises(ConnectionRefusedError):       # neither worker listens any more
        socket.create_connection(("127.0.0.1", port), timeout=5).close()


def test_a_single_selector_refuses_a_port_already_in_use(triton_server):
    # gRPC sets SO_REUSEPORT by default; without workers the selector turns it off, so a second selector
    # on a busy port fails to start instead of silently sharing it.
    first = SelectorThread(SelectorConfig(port=0, triton_url=triton_server.grpc_url))
    try:
        from selector.server import StartupError, create_server

        with pytest.raises(StartupError, match="cannot bind"):
            first.call(create_server(f"127.0.0.1:{first.port}",
                                     config=SelectorConfig(port=first.port, triton_url=triton_server.grpc_url)))
    finally:
        first.close()


def test_workers_need_a_fixed_port():
    with pytest.raises(ValueError, match="fixed port"):
        SelectorConfig(port=0, workers=2)
