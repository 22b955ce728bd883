"""The gateway end to end: the real openai client (sync and async, streaming and not) against the real
gateway, which asks the real selector (over the real tritonserver) and forwards to fake upstream LLMs: real
HTTP servers on loopback, one per pool model, that record what they receive.

Faults are made for real: an upstream port closed, a 500, an answer slower than the timeout, a stream that
breaks off, a client that leaves mid-stream, and the selector stopped and started again on its port.
"""

import asyncio
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai
import pytest

from gateway.config import GatewayConfig
from gateway.server import GatewayServer
from predictor_service.triton_server import free_port
from selector.config import SelectorConfig
from selector.pool import Pool, load_pool, pool_toml
from selector.server import create_server
from tests.support.upstreams import COMPLETION_TOKENS, FakeUpstream, LoopThread, prompt_tokens

CLIENT_KEY_ENV, CLIENT_KEY = "ROUTOO_TEST_GATEWAY_KEY", "gateway-key-7d1e"
CANARY = "marmoset-canary-8812"            # prompt text that must never reach a log
QUESTION = ("Which gas makes up most of Earth's atmosphere?\nA. Oxygen\nB. Nitrogen\nC. Argon\nD. Carbon "
            "dioxide")
UPSTREAM_TIMEOUT_S = 1.0                   # the test gateway's read timeout: "slow" sleeps past it


def upstream_key(i: int) -> str:
    return f"upstream-key-{i}-secret"


class Stack:
    """Fake upstreams, the selector and the gateway on one event loop thread (as `routoo serve` runs them)."""

    def __init__(self, triton_url: str, pool_path, pool: Pool, upstreams: dict[str, FakeUpstream]):
        self.pool, self.upstreams, self.pool_path, self.triton_url = pool, upstreams, pool_path, triton_url
        self.loop = LoopThread()
        self.selector_port = free_port()
        self.start_selector()
        self.gateway = self.start_gateway()
        self.url = f"http://127.0.0.1:{self.gateway.port}"

    def start_selector(self) -> None:
        config = SelectorConfig(port=self.selector_port, triton_url=self.triton_url, pool_path=self.pool_path,
                                health_poll_s=0.2)
        self.selector, _ = self.loop.call(create_server(f"127.0.0.1:{self.selector_port}", config=config))
        self.loop.call(self.selector.start())

    def stop_selector(self) -> None:
        self.loop.call(self.selector.stop(0))

    def start_gateway(self, **overrides) -> GatewayServer:
        settings = dict(port=0, selector_address=f"127.0.0.1:{self.selector_port}", pool_path=self.pool_path,
                        api_key_env=CLIENT_KEY_ENV, upstream_timeout_s=UPSTREAM_TIMEOUT_S, max_body_bytes=256 * 1024)
        config = GatewayConfig(**{**settings, **overrides})

        async def start():
            server = GatewayServer(config)
            await server.start()
            return server
        return self.loop.call(start())

    def client(self, **kwargs) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.url + "/v1", api_key=CLIENT_KEY, max_retries=0, timeout=30, **kwargs)

    def route(self, content: str, **body) -> dict:
        """The decision-only endpoint's answer for this user message."""
        r = httpx.post(self.url + "/v1/routoo/route", json={"prompt": content, **body},
                       headers={"authorization": f"Bearer {CLIENT_KEY}"}, timeout=30)
        assert r.status_code == 200, r.text
        return r.json()

    def reset(self) -> None:
        for upstream in self.upstreams.values():
            upstream.reset()

    def received(self) -> dict[str, list[dict]]:
        return {name: u.received for name, u in self.upstreams.items() if u.received}

    def metrics(self) -> str:
        return httpx.get(self.url + "/metrics", timeout=10).text

    def close(self) -> None:
        self.loop.call(self.gateway.stop())
        self.stop_selector()
        self.loop.close()
        for upstream in self.upstreams.values():
            upstream.stop()


@pytest.fixture(scope="module")
def stack(triton_server, tmp_path_factory):
    base = load_pool()
    upstreams = {m.name: FakeUpstream(m.name) for m in base.models}
    models = []
    for i, m in enumerate(base.models):
        os.environ[f"ROUTOO_TEST_UPSTREAM_KEY_{i}"] = upstream_key(i)
        models.append(type(m)(m.name, m.input_usd_per_mtok, m.output_usd_per_mtok, m.p95_latency_ms, m.enabled,
                              base_url=upstreams[m.name].base_url, upstream_model=f"upstream-model-{i}",
                              api_key_env=f"ROUTOO_TEST_UPSTREAM_KEY_{i}"))
    os.environ[CLIENT_KEY_ENV] = CLIENT_KEY
    pool = Pool(tuple(models))
    pool_path = tmp_path_factory.mktemp("gateway") / "pool.toml"
    pool_path.write_text(pool_toml(pool), encoding="utf-8")
    running = Stack(triton_server.grpc_url, pool_path, pool, upstreams)
    yield running
    running.close()


@pytest.fixture
def fresh(stack):
    stack.reset()
    yield stack
    stack.reset()


def chat(content: str) -> list[dict]:
    return [{"role": "system", "content": "Answer with one letter."}, {"role": "user", "content": content}]


def metric(text: str, name: str, **labels) -> float:
    """The value of one sample in Prometheus text format (0 when absent)."""
    label_text = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    pattern = re.escape(name) + (r"\{" + re.escape(label_text) + r"\}" if labels else "") + r" (\S+)"
    for line in text.splitlines():
        if not line.startswith("#"):
            found = re.fullmatch(pattern, line)
            if found:
                return float(found.group(1))
    return 0.0


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


def test_streaming_passes_every_event_through_with_usage(fresh):
    chosen = fresh.route(QUESTION)["model"]
    stream = fresh.client().chat.completions.create(model="routoo", messages=chat(QUESTION), stream=True,
                                                    stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == f"answer from {chosen}"
    assert {c.model for c in chunks} == {chosen}
    assert chunks[-1].usage.completion_tokens == COMPLETION_TOKENS
    assert list(fresh.received()) == [chosen]


def test_async_client_streaming_and_not(fresh):
    async def run():
        async with openai.AsyncOpenAI(base_url=fresh.url + "/v1", api_key=CLIENT_KEY, max_retries=0) as client:
            completions = await asyncio.gather(*[
                client.chat.completions.create(model="routoo", messages=chat(f"{QUESTION}\nVariant {i}"))
                for i in range(8)])
            stream = await client.chat.completions.create(model="routoo", messages=chat(QUESTION), stream=True)
            text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
        return completions, text
    completions, text = asyncio.run(run())
    assert all(c.choices[0].message.content == f"answer from {c.model}" for c in completions)
    assert text == f"answer from {fresh.route(QUESTION)['model']}"
    assert sum(len(r) for r in fresh.received().values()) == 9


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


# --- bad requests ------------------------------------------------------------------------------------------

def error_of(response: httpx.Response) -> dict:
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return error


def test_bad_requests_get_openai_errors_and_reach_no_upstream(fresh):
    auth = {"authorization": f"Bearer {CLIENT_KEY}"}
    post = lambda **kw: httpx.post(fresh.url + "/v1/chat/completions", timeout=30, **kw)  # noqa: E731
    r = post(content=b'{"model": "routoo", "messages": [', headers={**auth, "content-type": "application/json"})
    assert r.status_code == 400 and error_of(r)["code"] == "invalid_json"
    r = post(json={"model": "routoo"}, headers=auth)
    assert r.status_code == 400 and error_of(r)["param"] == "messages"
    r = post(json={"model": "routoo", "messages": [{"role": "system", "content": "hi"}]}, headers=auth)
    assert r.status_code == 400 and "role 'user'" in error_of(r)["message"]
    r = post(json={"model": "routoo:tradeoff=lots", "messages": chat("x")}, headers=auth)
    assert r.status_code == 400 and error_of(r)["param"] == "model"
    r = post(json={"model": "routoo", "messages": chat("x"), "routoo": {"allow": ["gpt-5"]}}, headers=auth)
    assert r.status_code == 400 and "gpt-5" in error_of(r)["message"]
    r = post(json={"model": "routoo", "messages": chat("x"), "routoo": {"max_cost_usd": 0}}, headers=auth)
    assert r.status_code == 400 and error_of(r)["code"] == "no_eligible_model"
    r = post(content=b"x" * (300 * 1024), headers={**auth, "content-type": "application/json"})
    assert r.status_code == 413 and error_of(r)["code"] == "request_too_large"
    with pytest.raises(openai.BadRequestError) as e:
        fresh.client().chat.completions.create(model="gpt-5", messages=chat(QUESTION))
    assert e.value.code == "model_not_found" and "gpt-5" in e.value.message
    assert fresh.received() == {}


def test_wrong_or_missing_key_is_401(fresh):
    for key in ("wrong-key", CLIENT_KEY + "x"):
        with pytest.raises(openai.AuthenticationError) as e:
            openai.OpenAI(base_url=fresh.url + "/v1", api_key=key, max_retries=0).chat.completions.create(
                model="routoo", messages=chat(QUESTION))
        assert e.value.code == "invalid_api_key" and key not in e.value.message
    r = httpx.post(fresh.url + "/v1/routoo/route", json={"prompt": QUESTION}, timeout=10)
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    assert fresh.received() == {}


# --- upstream faults ---------------------------------------------------------------------------------------

def first_two(stack, content: str) -> tuple[str, str]:
    decision = stack.route(content)
    return decision["model"], decision["runners_up"][0]["model"]


@pytest.mark.parametrize("fault", ["down", "status_500", "slow"])
def test_a_failing_upstream_before_the_first_byte_falls_back_to_the_runner_up(fresh, fault):
    chosen, runner_up = first_two(fresh, QUESTION)
    upstream = fresh.upstreams[chosen]
    if fault == "down":
        upstream.stop()
    else:
        upstream.mode, upstream.delay_s = fault, UPSTREAM_TIMEOUT_S + 1.0
    try:
        for stream in (False, True):
            raw = fresh.client().chat.completions.with_raw_response.create(
                model="routoo", messages=chat(QUESTION), stream=stream)
            assert raw.headers["x-routoo-model"] == runner_up and raw.headers["x-routoo-attempts"] == "2"
            parsed = raw.parse()
            text = (parsed.choices[0].message.content if not stream else
                    "".join(c.choices[0].delta.content or "" for c in parsed if c.choices))
            assert text == f"answer from {runner_up}"
    finally:
        if fault == "down":
            upstream.start()
    assert len(fresh.upstreams[runner_up].received) == 2
    assert len(upstream.received) == (0 if fault == "down" else 2)
    failures = fresh.metrics()
    kind = {"down": "unreachable", "status_500": "status_5xx", "slow": "timeout"}[fault]
    assert metric(failures, "routoo_gateway_upstream_failures_total", model=chosen, reason=kind) >= 2


def test_when_every_attempt_fails_the_client_gets_502_or_504(fresh):
    chosen, runner_up = first_two(fresh, QUESTION)
    for name in (chosen, runner_up):
        fresh.upstreams[name].mode = "status_500"
    with pytest.raises(openai.APIStatusError) as e:
        fresh.client().chat.completions.create(model="routoo", messages=chat(QUESTION))
    assert e.value.status_code == 502 and chosen in e.value.message and runner_up in e.value.message
    for name in (chosen, runner_up):
        fresh.upstreams[name].mode, fresh.upstreams[name].delay_s = "slow", UPSTREAM_TIMEOUT_S + 1.0
    with pytest.raises(openai.APIStatusError) as e:
        fresh.client().chat.completions.create(model="routoo", messages=chat(QUESTION))
    assert e.value.status_code == 504 and e.value.code == "upstream_timeout"
    # Bounded: max_attempts (2) upstreams were asked, never a third.
    assert set(fresh.received()) == {chosen, runner_up}


def test_an_upstream_4xx_passes_through_unretried(fresh):
    chosen, _ = first_two(fresh, QUESTION)
    fresh.upstreams[chosen].mode = "status_400"
    with pytest.raises(openai.BadRequestError) as e:
        fresh.client().chat.completions.create(model="routoo", messages=chat(QUESTION))
    assert e.value.body["message"] == f"{chosen} says 400" and e.value.code == "fake_400"
    assert e.value.response.headers["x-routoo-model"] == chosen
    assert list(fresh.received()) == [chosen]


def test_a_stream_that_breaks_off_ends_in_an_error_for_the_client(fresh):
    chosen, _ = first_two(fresh, QUESTION)
    fresh.upstreams[chosen].mode = "break_mid_stream"
    stream = fresh.client().chat.completions.create(model="routoo", messages=chat(QUESTION), stream=True)
    first = next(iter(stream))
    assert first.choices[0].delta.content == "answer"
    with pytest.raises(openai.APIError, match="mid-stream"):
        list(stream)
    assert list(fresh.received()) == [chosen]       # after the first byte there is no retry


def test_a_client_that_leaves_mid_stream_cancels_the_upstream(fresh):
    chosen, _ = first_two(fresh, QUESTION)
    upstream = fresh.upstreams[chosen]
    upstream.mode = "endless_stream"
    stream = fresh.client().chat.completions.create(model="routoo", messages=chat(QUESTION), stream=True)
    iterator = iter(stream)
    next(iterator), next(iterator)
    stream.close()
    assert upstream.disconnected.wait(10), "the upstream kept streaming after the client left"
    deadline = time.monotonic() + 10
    while metric(fresh.metrics(), "routoo_gateway_requests_in_flight") > 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert metric(fresh.metrics(), "routoo_gateway_requests_in_flight") == 0


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


# --- the selector stopped and started again ----------------------------------------------------------------

def test_selector_outage_is_503_or_the_fallback_and_recovery_is_automatic(fresh, caplog):
    fallback = fresh.start_gateway(fallback_model="Yi-6B")
    fallback_client = openai.OpenAI(base_url=f"http://127.0.0.1:{fallback.port}/v1", api_key=CLIENT_KEY,
                                    max_retries=0)
    fresh.stop_selector()
    try:
        with pytest.raises(openai.APIStatusError) as e:
            fresh.client().chat.completions.create(model="routoo", messages=chat(CANARY))
        assert e.value.status_code == 503 and e.value.code == "selector_unavailable"
        assert httpx.get(fresh.url + "/health", timeout=10).status_code == 503
        raw = fallback_client.chat.completions.with_raw_response.create(model="routoo", messages=chat(CANARY))
        assert raw.headers["x-routoo-model"] == "Yi-6B" and raw.headers["x-routoo-fallback"] == "true"
        # A concrete model needs no selector.
        assert fresh.client().chat.completions.create(model="Yi-6B", messages=chat(CANARY)).model == "Yi-6B"
    finally:
        fresh.start_selector()
        fresh.loop.call(fallback.stop())
    deadline = time.monotonic() + 15
    while True:
        try:
            raw = fresh.client().chat.completions.with_raw_response.create(model="routoo", messages=chat(QUESTION))
            break
        except openai.APIStatusError as e:
            assert e.status_code == 503 and time.monotonic() < deadline, "the gateway did not recover"
            time.sleep(0.2)
    assert raw.headers["x-routoo-model"] == fresh.route(QUESTION)["model"]
    assert httpx.get(fresh.url + "/health", timeout=10).json()["selector_serving"] is True
    assert CANARY not in caplog.text and CLIENT_KEY not in caplog.text


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


def test_requests_beyond_the_concurrency_bound_get_429_at_once(fresh):
    small = fresh.start_gateway(max_concurrent_requests=1)
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{small.port}/v1", api_key=CLIENT_KEY, max_retries=0)
    fresh.upstreams["Yi-6B"].mode = "endless_stream"
    try:
        stream = client.chat.completions.create(model="Yi-6B", messages=chat(QUESTION), stream=True)
        next(iter(stream))                                 # the one slot is held by a live stream
        with pytest.raises(openai.RateLimitError) as e:
            client.chat.completions.create(model="Yi-6B", messages=chat(QUESTION))
        assert e.value.code == "gateway_overloaded"
        stream.close()
        assert fresh.upstreams["Yi-6B"].disconnected.wait(10)
        fresh.upstreams["Yi-6B"].mode = "ok"
        deadline = time.monotonic() + 10
        while True:                                        # the slot comes back once the relay has ended
            try:
                assert client.chat.completions.create(model="Yi-6B", messages=chat(QUESTION)).model == "Yi-6B"
                break
            except openai.RateLimitError:
                assert time.monotonic() < deadline, "the stream's slot was never released"
                time.sleep(0.05)
    finally:
        fresh.loop.call(small.stop())


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
