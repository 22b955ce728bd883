"""The gateway end to end, errors and faults, made for real: bad requests and keys, an upstream port closed, a
500, an answer slower than the timeout, a 4xx, and the selector stopped and started again on its port. The
stack (fake upstreams, selector, gateway) is conftest.py's, shared by the folder.
"""

import time

import httpx
import openai
import pytest

from tests.support.gateway_stack import (CANARY, CLIENT_KEY, QUESTION, UPSTREAM_TIMEOUT_S, chat, error_of, first_two,
                                         metric)


# --- bad requests ------------------------------------------------------------------------------------------

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
        assert httpx.get(fresh.url + "/livez", timeout=10).json() == {"status": "live"}    # liveness holds
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
