"""The gateway end to end, routing and forwarding: the real openai client against the real gateway, which asks
the real selector (over the real tritonserver) and forwards to fake upstream LLMs (real HTTP servers on
loopback, one per pool model, that record what they receive). The stack is conftest.py's, shared by the
folder; streaming is in test_gateway_streaming.py, bad requests and faults in test_gateway_errors.py.
"""

import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import openai

from predictor_service.triton_server import free_port
from selector.config import SelectorConfig
from selector.server import create_server
from tests.support.gateway_stack import (CANARY, CLIENT_KEY, CLIENT_KEY_ENV, QUESTION, chat, error_of, metric,
                                         upstream_key)
from tests.support.upstreams import COMPLETION_TOKENS, prompt_tokens


# --- routing and forwarding --------------------------------------------------------------------------------

def test_routed_completion_goes_to_the_chosen_upstream_with_its_model_name_and_key(fresh):
    decision = fresh.route(QUESTION)
    raw = fresh.client().chat.completions.with_raw_response.create(model="routoo", messages=chat(QUESTION))
    completion = raw.parse()
    chosen = decision["model"]
    assert raw.headers["x-routoo-model"] == chosen == completion.model
    assert math.isclose(float(raw.headers["x-routoo-quality"]), decision["quality"], abs_tol=1e-4)
    assert math.isclose(float(raw.headers["x-routoo-expected-cost-usd"]), decision["expected_cost_usd"],
                        rel_tol=1e-5)
    assert completion.choices[0].message.content == f"answer from {chosen}"
    assert completion.usage.completion_tokens == COMPLETION_TOKENS
    # Only the chosen upstream was called, with its own model name and key, never the gateway's key.
    received = fresh.received()
    assert list(received) == [chosen] and len(received[chosen]) == 1
    call = received[chosen][0]
    i = fresh.pool.names.index(chosen)
    assert call["path"] == "/v1/chat/completions"
    assert call["body"]["model"] == f"upstream-model-{i}" and call["body"]["messages"] == chat(QUESTION)
    assert call["headers"]["authorization"] == f"Bearer {upstream_key(i)}"
    assert CLIENT_KEY not in str(call["headers"]) and "routoo" not in call["body"]


def test_policy_in_the_model_name_and_constraints_in_the_routoo_object(fresh):
    allow = ["Llama-2-7b-hf", "gpt-4o@2024-05", "Mistral-7B-Instruct-v0.2"]
    cheap = fresh.route(QUESTION, quality_target={"tau": 0.0}, constraints={"allow": allow})
    raw = fresh.client().chat.completions.with_raw_response.create(
        model="routoo:quality_target=0", messages=chat(QUESTION), extra_body={"routoo": {"allow": allow}})
    assert raw.headers["x-routoo-model"] == cheap["model"]
    assert raw.headers["x-routoo-policy"] == "quality_target(tau=0)"
    # The cheapest of the three at tau 0; gpt-4o costs the most by far.
    assert cheap["model"] != "gpt-4o@2024-05"
    raw = fresh.client().chat.completions.with_raw_response.create(
        model="routoo:tradeoff=0", messages=chat(QUESTION), extra_body={"routoo": {"deny": [cheap["model"]],
                                                                                  "allow": allow}})
    assert raw.headers["x-routoo-model"] in set(allow) - {cheap["model"]}
    assert set(fresh.received()) == {cheap["model"], raw.headers["x-routoo-model"]}


def test_a_pool_model_name_bypasses_routing(fresh):
    raw = fresh.client().chat.completions.with_raw_response.create(model="Yi-6B", messages=chat(QUESTION))
    assert raw.headers["x-routoo-model"] == "Yi-6B" and "x-routoo-quality" not in raw.headers
    assert raw.parse().model == "Yi-6B"
    assert list(fresh.received()) == ["Yi-6B"]


def test_models_lists_routoo_and_the_pool(stack):
    ids = [m.id for m in stack.client().models.list()]
    assert ids[0] == "routoo" and ids[1:] == stack.pool.names


def test_decision_only_endpoints_mirror_route_and_score(stack):
    decision = stack.route(QUESTION, tradeoff={"quality_per_usd": 200.0}, constraints={"max_latency_ms": 3000})
    assert decision["policy"] == "tradeoff(quality_per_usd=200)"
    assert [s["model"] for s in decision["scores"]] == stack.pool.names
    assert any(e["model"] == "gemini-3.1-pro-preview" and e["reason"].startswith("constraints.max_latency_ms")
               for e in decision["excluded"])
    headers = {"authorization": f"Bearer {CLIENT_KEY}"}
    scores = httpx.post(stack.url + "/v1/routoo/score", json={"prompts": [QUESTION, "What is 2 + 2?"]},
                        headers=headers, timeout=30).json()
    assert scores["models"] == stack.pool.names and len(scores["quality"]) == 2 * len(stack.pool)
    by_model = dict(zip(scores["models"], scores["quality"][:len(stack.pool)]))
    assert math.isclose(by_model[decision["model"]], decision["quality"], abs_tol=1e-5)
    bad = httpx.post(stack.url + "/v1/routoo/route", json={"prompt": QUESTION, "quality_target": {"tau": 2}},
                     headers=headers, timeout=30)
    assert bad.status_code == 400 and "quality_target.tau" in bad.json()["error"]["message"]
    bad = httpx.post(stack.url + "/v1/routoo/route", json={"prompt": QUESTION, "colour": "red"},
                     headers=headers, timeout=30)
    assert bad.status_code == 400 and "colour" in bad.json()["error"]["message"]
    schema = httpx.get(stack.url + "/openapi.json", timeout=10).json()
    assert {"/v1/chat/completions", "/v1/routoo/route", "/v1/routoo/score"} <= set(schema["paths"])


# --- metrics -----------------------------------------------------------------------------------------------

def test_metrics_count_requests_spend_and_the_always_best_spend(fresh):
    decision = fresh.route(QUESTION)
    chosen = decision["model"]
    best = max(decision["scores"], key=lambda s: s["quality"])["model"]
    before = fresh.metrics()
    client = fresh.client()
    client.chat.completions.create(model="routoo", messages=chat(QUESTION))
    list(client.chat.completions.create(model="routoo", messages=chat(QUESTION), stream=True,
                                        stream_options={"include_usage": True}))
    after = fresh.metrics()
    price = {m.name: m for m in fresh.pool.models}
    tokens_in = prompt_tokens({"messages": chat(QUESTION)})

    def cost(name: str) -> float:
        return (tokens_in * price[name].input_usd_per_mtok + COMPLETION_TOKENS * price[name].output_usd_per_mtok) / 1e6

    def delta(name: str, **labels) -> float:
        return metric(after, name, **labels) - metric(before, name, **labels)

    assert delta("routoo_gateway_requests_total", model=chosen, status="200") == 2
    assert math.isclose(delta("routoo_gateway_spend_usd_total", model=chosen, routed="true"), 2 * cost(chosen),
                        rel_tol=1e-9)
    assert math.isclose(delta("routoo_gateway_best_model_spend_usd_total"), 2 * cost(best), rel_tol=1e-9)
    assert delta("routoo_gateway_routing_seconds_count") == 2
    assert delta("routoo_gateway_upstream_ttfb_seconds_count", model=chosen) == 2
    assert delta("routoo_gateway_upstream_seconds_count", model=chosen) == 2


# --- the gateway alone, without upstreams, over several selectors ------------------------------------------

def test_routoo_gateway_runs_alone_against_a_running_selector(stack):
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    process = subprocess.Popen([sys.executable, "-m", "cli.main", "gateway", "--port", str(port),
                                "--selector", f"127.0.0.1:{stack.selector_port}", "--pool", str(stack.pool_path),
                                "--api-key-env", CLIENT_KEY_ENV], env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    try:
        assert "gateway ready at" in process.stdout.readline()
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=CLIENT_KEY, max_retries=0)
        raw = client.chat.completions.with_raw_response.create(model="routoo", messages=chat(CANARY))
        assert raw.headers["x-routoo-model"] == raw.parse().model
    finally:
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=30)
    assert process.returncode == 0 and "gateway stopped" in output
    assert CANARY not in output and CLIENT_KEY not in output


def test_with_the_default_pool_there_is_no_upstream_but_decisions_still_work(stack):
    bare = stack.start_gateway(pool_path=None, api_key_env=None)      # selector/pool.toml: no base_url
    try:
        url = f"http://127.0.0.1:{bare.port}"
        r = httpx.post(url + "/v1/chat/completions", json={"model": "routoo", "messages": chat(QUESTION)}, timeout=30)
        assert r.status_code == 503 and error_of(r)["code"] == "upstream_not_configured"
        r = httpx.post(url + "/v1/chat/completions", json={"model": "Yi-6B", "messages": chat(QUESTION)}, timeout=30)
        assert r.status_code == 400 and "no upstream" in error_of(r)["message"]
        r = httpx.post(url + "/v1/routoo/route", json={"prompt": QUESTION}, timeout=30)
        assert r.status_code == 200 and r.json()["model"] == stack.route(QUESTION)["model"]
        assert [m["id"] for m in httpx.get(url + "/v1/models", timeout=10).json()["data"]] == ["routoo"]
    finally:
        stack.loop.call(bare.stop())


def test_calls_are_spread_over_every_selector_the_address_names(stack):
    def decisions(server) -> float:
        return sum(s.value for metric in server.metrics.registry.collect() for s in metric.samples
                   if s.name == "routoo_selector_decisions_total")

    config = SelectorConfig(port=0, triton_url=stack.triton_url, pool_path=stack.pool_path)
    second, second_port = stack.loop.call(create_server("127.0.0.1:0", config=config))
    stack.loop.call(second.start())
    both = stack.start_gateway(selector_address=f"ipv4:127.0.0.1:{stack.selector_port},127.0.0.1:{second_port}")
    try:
        before = decisions(stack.selector), decisions(second)
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{both.port}/v1", api_key=CLIENT_KEY, max_retries=0)
        for i in range(20):
            client.chat.completions.create(model="routoo", messages=chat(f"{QUESTION}\nVariant {i}"))
        first_share, second_share = decisions(stack.selector) - before[0], decisions(second) - before[1]
        assert first_share + second_share == 20 and first_share >= 5 and second_share >= 5
    finally:
        stack.loop.call(both.stop())
        stack.loop.call(second.stop(0))
