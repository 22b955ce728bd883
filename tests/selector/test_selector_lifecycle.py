"""The selector end to end: the real tritonserver (started once for the module on free loopback ports) and the
real selector (grpc.aio, in a thread of its own), spoken to with the real clients.

Every bad input of the API is answered with its status code and a message naming the field, and the server
keeps serving; Triton stopped mid-test gives UNAVAILABLE, and the selector recovers once Triton is back.
"""

import asyncio
import filecmp
import logging
import math
import signal
import socket
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from predictor_service.artifact import default_artifact_path
from predictor_service.predictor import MAX_PROMPT_BYTES, Predictor
from predictor_service.triton_server import free_port
from selector.client import SelectorClient, make_constraints, make_route_request
from cli.services import DEMO_PROMPT, _demo_route, format_decision
from selector.config import SelectorConfig
from selector.policies import TradeoffPolicy
from selector.pool import DEFAULT_POOL_PATH, PoolMismatchError, ServedPool, load_pool
from selector.proto import generate
from selector.proto import selector_pb2 as pb
from selector.scores_wire import ScoresWire
from selector.server import SERVICE_NAME, create_server
from selector.triton_scores import PredictorUnavailable
from tests.support.selector_harness import PROMPTS, SelectorThread, rpc_error, wait_for

CANARY = "ocelot-canary-5521"      # a word that must never reach a log


@pytest.fixture(scope="module")
def selector(triton_server):
    running = SelectorThread(SelectorConfig(port=0, triton_url=triton_server.grpc_url, metrics_port=0,
                                            health_poll_s=0.2))
    yield running
    running.close()


@pytest.fixture(scope="module")
def predictor():
    return Predictor.load(default_artifact_path(), device="cpu")


# --- the API, end to end ----------------------------------------------------------------------------------

def test_route_returns_the_policys_choice_with_every_score_and_exclusion(selector):
    decision = selector.stub.Route(make_route_request(PROMPTS[0], quality_per_usd=200.0, max_latency_ms=3000,
                                                      deny=["gpt-4o@2024-05"]), timeout=30)
    pool = load_pool()
    assert [s.model for s in decision.scores] == pool.names
    quality = np.array([s.quality for s in decision.scores])
    cost = np.array([s.expected_cost_usd for s in decision.scores])
    assert ((quality >= 0) & (quality <= 1)).all() and (cost > 0).all()
    excluded = {e.model: e.reason for e in decision.excluded}
    assert excluded["gpt-4o@2024-05"] == "constraints.deny: in the deny list"
    assert excluded["gemini-3.1-pro-preview"].startswith("constraints.max_latency_ms: p95 latency 6000 ms")
    eligible = np.array([name not in excluded for name in pool.names])
    # The same policy over the returned vectors reaches the same decision.
    ranking = TradeoffPolicy(200.0).select(quality, cost, eligible)
    assert decision.model == pool.names[ranking[0]]
    assert [r.model for r in decision.runners_up] == [pool.names[j] for j in ranking[1:4]]
    assert decision.policy == "tradeoff(quality_per_usd=200)" and not decision.fallback
    assert math.isclose(decision.quality, quality[ranking[0]], rel_tol=1e-6)


def test_score_equals_the_in_process_predictor_in_pool_order(selector, predictor):
    with SelectorClient(selector.address) as client:
        scores = client.score(PROMPTS[:7])
    quality, cost = predictor.predict(PROMPTS[:7])
    columns = [predictor.model_names.index(name) for name in scores.models]
    np.testing.assert_allclose(scores.quality, quality[:, columns], rtol=0, atol=1e-5)
    np.testing.assert_allclose(scores.expected_cost_usd, cost[:, columns], rtol=1e-5)   # same prices: scale 1


def test_route_batch_spends_within_the_budget_and_beats_the_cheapest_assignment(selector):
    prompts = PROMPTS * 5                       # 100 prompts: two chunks of Triton's max batch (64)
    with SelectorClient(selector.address) as client:
        scores = client.score(prompts)
        cheapest, best = scores.expected_cost_usd.min(axis=1).sum(), scores.expected_cost_usd[
            np.arange(len(prompts)), scores.quality.argmax(axis=1)].sum()
        budget = float(cheapest + 0.3 * (best - cheapest))
        batch = client.route_batch(prompts, budget)
    assert len(batch.models) == len(prompts) and set(batch.models) <= set(scores.models)
    assert batch.total_expected_cost_usd <= budget
    assert math.isclose(batch.expected_cost_usd.sum(), batch.total_expected_cost_usd, rel_tol=1e-9)
    assert batch.total_quality > scores.quality[np.arange(len(prompts)),
                                                scores.expected_cost_usd.argmin(axis=1)].sum()
    assert batch.quality_per_usd > 0


def test_list_models_is_the_pool_file(selector):
    with SelectorClient(selector.address) as client:
        models = client.list_models()
    pool = load_pool()
    assert [(m.name, m.input_usd_per_mtok, m.output_usd_per_mtok, m.p95_latency_ms, m.enabled) for m in models] == [
        (m.name, m.input_usd_per_mtok, m.output_usd_per_mtok, m.p95_latency_ms, m.enabled) for m in pool.models]
    assert all(m.cost_scale == 1.0 for m in models)   # the default pool has the trained prices


def test_health_and_reflection(selector):
    assert selector.health("") == health_pb2.HealthCheckResponse.SERVING
    assert selector.health(SERVICE_NAME) == health_pb2.HealthCheckResponse.SERVING
    stub = reflection_pb2_grpc.ServerReflectionStub(selector.channel)
    responses = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
    services = {s.name for r in responses for s in r.list_services_response.service}
    assert {SERVICE_NAME, "grpc.health.v1.Health"} <= services


def test_metrics_count_requests_decisions_and_errors(selector):
    selector.stub.Route(make_route_request(PROMPTS[1]), timeout=30)
    rpc_error(selector.stub.Route, make_route_request(""))
    with urllib.request.urlopen(f"http://127.0.0.1:{selector.server.metrics_port}/metrics", timeout=10) as page:
        text = page.read().decode()
    assert 'routoo_selector_request_seconds_bucket{le="0.005",method="Route"}' in text
    assert 'routoo_selector_triton_call_seconds_count{method="Route"}' in text
    assert "routoo_selector_decisions_total{model=" in text
    assert 'routoo_selector_errors_total{code="INVALID_ARGUMENT",method="Route"}' in text


def test_prompt_text_never_reaches_the_log(selector, caplog):
    caplog.set_level(logging.DEBUG)
    selector.stub.Route(make_route_request(f"Tell me about {CANARY}"), timeout=30)
    rpc_error(selector.stub.Route, make_route_request(f"{CANARY} " * 20_000))   # over the size limit
    rpc_error(selector.stub.Route, make_route_request(CANARY, max_latency_ms=1))
    assert CANARY not in caplog.text


# --- bad input: status code, a message naming the field, and the server stays up -------------------------

def route(prompt="A fine prompt", **kwargs):
    return ("Route", make_route_request(prompt, **kwargs))


BAD_INPUTS = [
    # (method, request, status, text the message must contain)
    (*route(""), grpc.StatusCode.INVALID_ARGUMENT, f"prompt: must be 1 to {MAX_PROMPT_BYTES} bytes"),
    (*route("   \n\t"), grpc.StatusCode.INVALID_ARGUMENT, f"prompt: must be 1 to {MAX_PROMPT_BYTES} bytes"),
    (*route("x" * (MAX_PROMPT_BYTES + 1)), grpc.StatusCode.INVALID_ARGUMENT, f"got {MAX_PROMPT_BYTES + 1} bytes"),
    (*route("é" * (MAX_PROMPT_BYTES // 2 + 1)), grpc.StatusCode.INVALID_ARGUMENT, f"prompt: must be 1 to {MAX_PROMPT_BYTES} bytes"),
    (*route(quality_per_usd=-1.0), grpc.StatusCode.INVALID_ARGUMENT, "tradeoff.quality_per_usd: lambda must be a finite number >= 0"),
    (*route(quality_per_usd=math.nan), grpc.StatusCode.INVALID_ARGUMENT, "tradeoff.quality_per_usd"),
    (*route(quality_target=-0.01), grpc.StatusCode.INVALID_ARGUMENT, "quality_target.tau: tau must be in [0, 1]"),
    (*route(quality_target=1.01), grpc.StatusCode.INVALID_ARGUMENT, "quality_target.tau: tau must be in [0, 1]"),
    (*route(cost_cap_usd=-0.5), grpc.StatusCode.INVALID_ARGUMENT, "cost_cap.cap_usd: the cap must be a number >= 0"),
    (*route(allow=["gpt-4o@2024-05", "gpt-5"]), grpc.StatusCode.INVALID_ARGUMENT,
     "constraints.allow: unknown model(s) ['gpt-5']; valid models are ['DeepSeek-Coder-V2'"),
    (*route(deny=["nobody"]), grpc.StatusCode.INVALID_ARGUMENT, "constraints.deny: unknown model(s) ['nobody']"),
    (*route(max_latency_ms=-5.0), grpc.StatusCode.INVALID_ARGUMENT, "constraints.max_latency_ms: must be a number >= 0"),
    (*route(max_cost_usd=math.nan), grpc.StatusCode.INVALID_ARGUMENT, "constraints.max_cost_usd: must be a number >= 0"),
    (*route(max_latency_ms=100), grpc.StatusCode.FAILED_PRECONDITION, "constraints.max_latency_ms=100 excludes 32"),
    (*route(allow=["Yi-6B"], deny=["Yi-6B"]), grpc.StatusCode.FAILED_PRECONDITION,
     "constraints.allow excludes 31, constraints.deny excludes 1"),
    (*route(max_cost_usd=0.0), grpc.StatusCode.FAILED_PRECONDITION, "constraints.max_cost_usd=0 excludes 32"),
    ("RouteBatch", pb.RouteBatchRequest(prompts=["a", "b"], total_budget_usd=-1), grpc.StatusCode.INVALID_ARGUMENT,
     "total_budget_usd: must be a number >= 0"),
    ("RouteBatch", pb.RouteBatchRequest(prompts=["a"], total_budget_usd=math.nan), grpc.StatusCode.INVALID_ARGUMENT,
     "total_budget_usd"),
    ("RouteBatch", pb.RouteBatchRequest(prompts=[], total_budget_usd=1), grpc.StatusCode.INVALID_ARGUMENT,
     "prompts: must hold at least one prompt"),
    ("RouteBatch", pb.RouteBatchRequest(prompts=["fine", ""], total_budget_usd=1), grpc.StatusCode.INVALID_ARGUMENT,
     f"prompts[1]: must be 1 to {MAX_PROMPT_BYTES} bytes"),
    ("RouteBatch", pb.RouteBatchRequest(prompts=["a", "b"], total_budget_usd=0), grpc.StatusCode.FAILED_PRECONDITION,
     "total_budget_usd: 0 is below $"),
    ("RouteBatch", pb.RouteBatchRequest(prompts=["a"], total_budget_usd=1,
                                        constraints=make_constraints(max_latency_ms=1)),
     grpc.StatusCode.FAILED_PRECONDITION, "constraints.max_latency_ms=1 excludes 32"),
    ("Score", pb.ScoreRequest(prompts=[]), grpc.StatusCode.INVALID_ARGUMENT, "prompts: must hold at least one prompt"),
    ("Score", pb.ScoreRequest(prompts=["ok", "y" * (MAX_PROMPT_BYTES + 1)]), grpc.StatusCode.INVALID_ARGUMENT,
     f"prompts[1]: must be 1 to {MAX_PROMPT_BYTES} bytes of UTF-8 text, got {MAX_PROMPT_BYTES + 1} bytes"),
]


@pytest.mark.parametrize("method, request_message, status, message", BAD_INPUTS,
                         ids=[f"{m}-{i}" for i, (m, *_) in enumerate(BAD_INPUTS)])
def test_bad_input_gets_its_status_and_names_the_field_and_the_server_stays_up(selector, method, request_message,
                                                                               status, message):
    error = rpc_error(getattr(selector.stub, method), request_message)
    assert error.code() == status
    assert message in error.details()
    assert selector.stub.Route(make_route_request(PROMPTS[2]), timeout=30).model


# --- start-up checks, prices, limits ----------------------------------------------------------------------

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


def test_the_selectors_prompt_limit_is_the_predictors():
    # predictor_service.predictor holds the one limit, but importing it pulls in torch, which the selector
    # does not load; this keeps the two equal.
    assert SelectorConfig().max_prompt_bytes == MAX_PROMPT_BYTES


def test_route_scores_in_wire_format_equal_the_messages_built_field_by_field():
    names = ["a", "gpt-4o", "ü" * 70, "m" * 200]          # 1- and 2-byte varint lengths, non-ASCII
    rng = np.random.default_rng(3)
    for quality, cost in [([0.0, -0.0, 1.0, 0.5], [0.0, -0.0, 1e-300, 2.5]),
                          (rng.random(4).astype(np.float32).tolist(), (rng.random(4) * 1e-3).tolist())]:
        built = pb.RouteDecision(model="a", policy="tradeoff(quality_per_usd=0)")
        for name, q, c in zip(names, quality, cost):
            built.scores.add(model=name, quality=q, expected_cost_usd=c)
        merged = pb.RouteDecision(model="a", policy="tradeoff(quality_per_usd=0)")
        merged.MergeFromString(ScoresWire(names).encode(quality, cost))
        assert merged == built
        assert merged.SerializeToString(deterministic=True) == built.SerializeToString(deterministic=True)


def test_the_committed_generated_code_matches_the_proto(tmp_path):
    for fresh in generate.generate(tmp_path):
        committed = generate.PROTO_DIR / fresh.name
        assert filecmp.cmp(fresh, committed, shallow=False), f"{committed.name} is stale: python -m selector.proto.generate"


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
                               cwd=Path(__file__).resolve().parents[2])
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


# --- Triton stopped mid-test: UNAVAILABLE, then recovery (last: it restarts the module's server) ----------

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
