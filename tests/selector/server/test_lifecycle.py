"""The selector's lifecycle and faults: start-up checks against the predictor, prices from the pool file, a
Triton call past its deadline, overload and fallback with a predictor we control, the command line
(`routoo route`, `demo`, `serve`), and Triton stopped mid-test: UNAVAILABLE, then recovery. The real
tritonserver and selector come from conftest.py; the RPCs themselves are in test_rpcs.py.
"""

import asyncio
import math
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2

from cli.services import DEMO_PROMPT, _demo_route, format_decision
from predictor_service.triton_server import free_port
from selector.client import SelectorClient, make_route_request
from selector.config import SelectorConfig
from selector.pool import DEFAULT_POOL_PATH, PoolMismatchError, ServedPool, load_pool
from selector.proto import selector_pb2 as pb
from selector.server import SERVICE_NAME, create_server
from selector.triton_scores import PredictorUnavailable
from tests.support.selector_harness import PROMPTS, SelectorThread, rpc_error, wait_for


# --- start-up checks, prices, deadlines -------------------------------------------------------------------

def edited_pool(tmp_path: Path, old: str, new: str) -> Path:
    text = DEFAULT_POOL_PATH.read_text()
    assert old in text
    path = tmp_path / "pool.toml"
    path.write_text(text.replace(old, new, 1))
    return path


def test_pool_file_that_does_not_match_the_predictor_refuses_to_start(triton_server, tmp_path):
    path = edited_pool(tmp_path, 'name = "Yi-34B"', 'name = "Yi-35B"')
    config = SelectorConfig(port=0, triton_url=triton_server.grpc_url, pool_path=path)
    with pytest.raises(PoolMismatchError, match=r"not in the pool file: \['Yi-34B'\].*not served by the "
                                                r"predictor: \['Yi-35B'\]"):
        asyncio.run(create_server("127.0.0.1:0", config=config))


def test_a_metrics_port_in_use_is_a_start_up_error_naming_it(triton_server):
    # It raised OSError after the gRPC server had started: a traceback, then "Event loop is closed".
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run([sys.executable, "-m", "selector.server", "--predictor-url", triton_server.grpc_url,
                               "--selector-port", "0", "--metrics-port", str(port)],
                              capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    assert f"error: cannot serve /metrics on 127.0.0.1:{port}: Address already in use" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_price_in_the_pool_file_scales_that_models_expected_cost(selector, triton_server, tmp_path):
    # Llama-2-7b-hf was trained at $0.15/$0.15 per Mtok; the pool file says $0.30/$0.45: blended x2.5.
    path = edited_pool(tmp_path, 'name = "Llama-2-7b-hf"\ninput_usd_per_mtok = 0.15\noutput_usd_per_mtok = 0.15',
                       'name = "Llama-2-7b-hf"\ninput_usd_per_mtok = 0.3\noutput_usd_per_mtok = 0.45')
    repriced = SelectorThread(SelectorConfig(port=0, triton_url=triton_server.grpc_url, pool_path=path))
    try:
        with SelectorClient(repriced.address) as client, SelectorClient(selector.address) as default:
            scale = {m.name: m.cost_scale for m in client.list_models()}
            new, old = client.score(PROMPTS[:3]), default.score(PROMPTS[:3])
    finally:
        repriced.close()
    j = new.models.index("Llama-2-7b-hf")
    assert scale["Llama-2-7b-hf"] == pytest.approx(2.5) and sum(v != 1.0 for v in scale.values()) == 1
    np.testing.assert_allclose(new.expected_cost_usd[:, j], 2.5 * old.expected_cost_usd[:, j], rtol=1e-6)
    others = [k for k in range(len(new.models)) if k != j]
    np.testing.assert_array_equal(new.expected_cost_usd[:, others], old.expected_cost_usd[:, others])


def test_a_triton_call_past_its_deadline_is_deadline_exceeded(triton_server):
    # gRPC deadlines have millisecond resolution, and one warm prompt can come back within a millisecond,
    # so the call that must miss its 1 ms deadline is ten chunks of 64 prompts (tens of ms of work).
    hurried = SelectorThread(SelectorConfig(port=0, triton_url=triton_server.grpc_url, triton_timeout_s=1e-3))
    try:
        prompts = [f"{PROMPTS[i % len(PROMPTS)]} ({i})" for i in range(640)]
        error = rpc_error(hurried.stub.RouteBatch, pb.RouteBatchRequest(prompts=prompts, total_budget_usd=1.0))
        assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert "deadline" in error.details()
    finally:
        hurried.close()


# --- overload and fallback, with a predictor we control ----------------------------------------------------

class HeldScores:
    """A predictor that answers only when released, or is down; it serves the default pool's names."""

    def __init__(self, *, down: bool = False):
        self.names = tuple(load_pool().names)
        self.entered = threading.Event()
        self.release: asyncio.Event | None = None
        self.down = down

    async def served_pool(self):
        return ServedPool(self.names, tuple((m.input_usd_per_mtok, m.output_usd_per_mtok) for m in load_pool().models))

    async def score(self, prompts, *, timeout_s):
        if self.down:
            raise PredictorUnavailable("the predictor is unreachable (test)")
        self.release = self.release or asyncio.Event()
        self.entered.set()
        await self.release.wait()
        shape = (len(prompts), len(self.names))
        return np.full(shape, 0.5, np.float32), np.full(shape, 1e-4, np.float32)

    async def ready(self):
        return not self.down

    async def close(self):
        pass


def test_requests_over_the_concurrency_limit_get_resource_exhausted():
    held = HeldScores()
    running = SelectorThread(SelectorConfig(port=0, max_concurrent_requests=1), scores=held)
    try:
        first = running.stub.Route.future(make_route_request(PROMPTS[0]), timeout=60)
        assert held.entered.wait(30)
        error = rpc_error(running.stub.Route, make_route_request(PROMPTS[1]))
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "limit of 1 concurrent requests" in error.details()
        running.loop.call_soon_threadsafe(held.release.set)
        assert first.result(timeout=30).model                      # the held call still completes
        assert running.stub.Route(make_route_request(PROMPTS[1]), timeout=30).model   # and the slot is free again
    finally:
        running.close()


def test_fallback_model_answers_while_the_predictor_is_down_unless_the_constraints_rule_it_out():
    down = HeldScores(down=True)
    running = SelectorThread(SelectorConfig(port=0, fallback_model="Meta-Llama-3_1-8B-Instruct"), scores=down)
    try:
        decision = running.stub.Route(make_route_request(PROMPTS[0]), timeout=30)
        assert decision.fallback and decision.model == "Meta-Llama-3_1-8B-Instruct" and math.isnan(decision.quality)
        assert "fallback model Meta-Llama-3_1-8B-Instruct" in format_decision(decision)
        for ruled_out in (dict(deny=["Meta-Llama-3_1-8B-Instruct"]), dict(max_cost_usd=1.0)):
            error = rpc_error(running.stub.Route, make_route_request(PROMPTS[0], **ruled_out))
            assert error.code() == grpc.StatusCode.UNAVAILABLE and "unreachable" in error.details()
        assert wait_for(lambda: running.health(SERVICE_NAME) == health_pb2.HealthCheckResponse.SERVING)
    finally:
        running.close()


# --- the command line -------------------------------------------------------------------------------------

def test_routoo_route_prints_the_decision_and_reports_errors(selector, capsys):
    from cli.main import main

    assert main(["route", PROMPTS[3], "--lambda", "300", "--max-latency-ms", "2000", "--deny", "Yi-34B,Yi-6B",
                 "--selector", selector.address]) == 0
    out = capsys.readouterr().out
    assert "policy tradeoff(quality_per_usd=300)" in out and "chosen:" in out and "runners-up:" in out
    assert "Yi-34B" in out and "constraints.deny: in the deny list" in out
    assert main(["route", PROMPTS[3], "--quality-target", "2", "--selector", selector.address]) == 1
    assert "INVALID_ARGUMENT: quality_target.tau" in capsys.readouterr().err


def test_demo_routes_its_prompt_and_explains_the_decision(triton_server):
    text = format_decision(asyncio.run(_demo_route(triton_server.grpc_url, DEMO_PROMPT)))
    assert "chosen:" in text and "runners-up:" in text and "predicted quality" in text and "expected cost $" in text
    assert "gemini-3.1-pro-preview" in text and "constraints.max_latency_ms: p95 latency 6000 ms > 3000 ms" in text


def test_demo_with_an_artifact_of_other_models_routes_among_them(tmp_path, capsys):
    from cli.main import main as routoo
    from training.data import load_dataset
    from training.fit import TrainConfig, train
    from tests.support.datasets import synthetic_dataset

    ds = load_dataset(synthetic_dataset(tmp_path / "data", n=60))
    artifact, _ = train(ds, None, config=TrainConfig(hidden=8, folds=2, max_epochs=3, patience=3), show_progress=False)
    artifact.save(tmp_path / "artifact")
    assert routoo(["write-pool", "--artifact", str(tmp_path / "artifact"), "--out", str(tmp_path / "pool.toml")]) == 0
    assert load_pool(tmp_path / "pool.toml").names == ds.model_names
    # selector/pool.toml lists the 32 mmlu-pro models; the demo routes among the artifact's 3 instead.
    assert routoo(["demo", "--artifact", str(tmp_path / "artifact"), "--prompt", "Which court hears appeals?"]) == 0
    out = capsys.readouterr().out
    assert "the artifact's 3 models differ from selector/pool.toml's" in out
    assert "3 of 3 pool models were eligible" in out and "chosen:" in out


def test_routoo_serve_starts_both_and_stops_both_on_sigterm(tmp_path):
    ports = {name: free_port() for name in ("selector", "grpc", "http", "metrics", "gateway")}
    command = [sys.executable, "-m", "cli.main", "serve", "--selector-port", str(ports["selector"]),
               "--triton-grpc-port", str(ports["grpc"]), "--triton-http-port", str(ports["http"]),
               "--triton-metrics-port", str(ports["metrics"]), "--gateway-port", str(ports["gateway"])]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               cwd=Path(__file__).resolve().parents[3])
    try:
        lines = []
        for line in process.stdout:
            lines.append(line)
            if "selector ready" in line or process.poll() is not None:
                break
        assert any("selector ready" in line for line in lines), "".join(lines)
        with SelectorClient(f"127.0.0.1:{ports['selector']}") as client:
            assert client.route(PROMPTS[4]).model in load_pool().names
        process.send_signal(signal.SIGTERM)
        rest = process.communicate(timeout=60)[0]
        assert process.returncode == 0, "".join(lines) + rest
        assert "stopped" in rest
    finally:
        if process.poll() is None:
            process.kill()
    for port in (ports["selector"], ports["grpc"], ports["http"], ports["gateway"]):   # nothing listens any more
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=5).close()


# --- Triton stopped mid-test: UNAVAILABLE, then recovery (last: it restarts the shared server) ------------

def test_triton_stopped_mid_test_gives_unavailable_then_the_selector_recovers(selector, triton_server):
    request = make_route_request(PROMPTS[0])
    assert selector.stub.Route(request, timeout=30).model
    triton_server.stop()
    try:
        error = rpc_error(selector.stub.Route, request)
        assert error.code() == grpc.StatusCode.UNAVAILABLE
        assert "predictor is unreachable" in error.details()
        assert wait_for(lambda: selector.health(SERVICE_NAME) == health_pb2.HealthCheckResponse.NOT_SERVING)
        assert selector.health("") == health_pb2.HealthCheckResponse.SERVING      # the process itself is up
    finally:
        triton_server.start()
    assert wait_for(lambda: _routes(selector, request)), "the selector did not recover after Triton restarted"
    assert wait_for(lambda: selector.health(SERVICE_NAME) == health_pb2.HealthCheckResponse.SERVING)


def _routes(selector, request) -> bool:
    try:
        return bool(selector.stub.Route(request, timeout=10).model)
    except grpc.RpcError as e:
        assert e.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED), e
        return False
