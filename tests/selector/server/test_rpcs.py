"""The selector's RPCs end to end: the real tritonserver and the real selector (grpc.aio, in a thread of its
own; both from this folder's conftest.py, shared with test_lifecycle.py), spoken to with the real clients.

Every bad input of the API is answered with its status code and a message naming the field, and the server
keeps serving. Start-up, overload, fallback, the command line and Triton restarted are in
test_lifecycle.py.
"""

import filecmp
import logging
import math
import urllib.request

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from predictor_service.artifact import default_artifact_path
from predictor_service.predictor import MAX_PROMPT_BYTES, Predictor
from selector.client import SelectorClient, make_constraints, make_route_request
from selector.config import SelectorConfig
from selector.policies import TradeoffPolicy
from selector.pool import load_pool
from selector.proto import generate
from selector.proto import selector_pb2 as pb
from selector.scores_wire import ScoresWire
from selector.server import SERVICE_NAME
from tests.support.selector_harness import PROMPTS, rpc_error

CANARY = "ocelot-canary-5521"      # a word that must never reach a log


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


# --- what the selector's wire code and limits must agree on -----------------------------------------------

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
