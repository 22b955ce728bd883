"""The gateway end to end against input built to break it, from clients and from upstreams: each gets a clear
OpenAI-style error or a good answer, never a text/plain 500, a leaked upstream connection or one log line per
request. Found by a review that reproduced each against the real gateway; the stack is conftest.py's."""

import contextlib
import json
import logging
import socket
import time

import httpx
import openai
import pytest

from tests.support.gateway_stack import CLIENT_KEY, QUESTION, chat, error_of, first_two, metric

AUTH = {"authorization": f"Bearer {CLIENT_KEY}", "content-type": "application/json"}


def _post(stack, raw: bytes, path: str = "/v1/chat/completions") -> httpx.Response:
    return httpx.post(stack.url + path, content=raw, headers=AUTH, timeout=30)


# --- from clients ------------------------------------------------------------------------------------------

def test_bodies_that_crashed_the_parser_get_400s_naming_the_problem(fresh):
    deep = b'{"model": "routoo", "messages": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    r = _post(fresh, deep)
    assert r.status_code == 400 and error_of(r)["code"] == "invalid_json" and "nested" in error_of(r)["message"]
    lone = b'{"model": "%s", "messages": [{"role": "user", "content": "hi \\ud800"}]}'
    for model in (b"routoo", b"Yi-6B"):
        r = _post(fresh, lone % model)
        assert r.status_code == 400 and "surrogate" in error_of(r)["message"], model
        r = _post(fresh, (lone % model).replace(b"\\ud800", "\ud800".encode("utf-8", "surrogatepass")))
        assert r.status_code == 400 and "UTF-8" in error_of(r)["message"], model     # the raw bytes of one
    r = _post(fresh, b'{"prompt": "hi \\ud800"}', "/v1/routoo/route")
    assert r.status_code == 400 and "surrogate" in error_of(r)["message"]
    paired = _post(fresh, b'{"model": "Yi-6B", "messages": [{"role": "user", "content": "hi \\ud83d\\ude00"}]}')
    assert paired.status_code == 200
    assert fresh.upstreams["Yi-6B"].received[-1]["body"]["messages"][0]["content"] == "hi \U0001F600"
    for value in (b"1" + b"0" * 400, b"NaN", b"Infinity"):
        r = _post(fresh, b'{"model": "routoo", "messages": [{"role": "user", "content": "hi"}], '
                         b'"routoo": {"max_cost_usd": %s}}' % value)
        assert r.status_code == 400 and error_of(r)["param"] == "routoo.max_cost_usd", value
    assert [m for m in fresh.received() if m != "Yi-6B"] == []


def test_stream_null_is_not_streaming(fresh):
    r = _post(fresh, json.dumps({"model": "Yi-6B", "messages": chat(QUESTION), "stream": None}).encode())
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == "answer from Yi-6B"


def test_the_route_endpoint_takes_messages(fresh):
    by_messages = httpx.post(fresh.url + "/v1/routoo/route", json={"messages": chat(QUESTION)}, headers=AUTH,
                             timeout=30)
    assert by_messages.status_code == 200, by_messages.text
    assert by_messages.json()["model"] == fresh.route(QUESTION)["model"]      # the last user message is scored


def test_a_trickling_body_gets_408_and_gives_its_slot_back(fresh):
    gateway = fresh.start_gateway(body_timeout_s=2.0, max_concurrent_requests=1)
    url = f"http://127.0.0.1:{gateway.port}"
    try:
        slow = socket.create_connection(("127.0.0.1", gateway.port), timeout=10)
        slow.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                     b"authorization: Bearer " + CLIENT_KEY.encode() + b"\r\ncontent-length: 100\r\n\r\n{")
        sent = time.monotonic()
        while metric(httpx.get(url + "/metrics", timeout=10).text, "routoo_gateway_requests_in_flight") < 1:
            assert time.monotonic() - sent < 1.5, "the gateway did not take the trickler's request"
            time.sleep(0.02)                                   # until the trickler holds its slot
        held = httpx.post(url + "/v1/chat/completions", json={"model": "Yi-6B", "messages": chat("x")},
                          headers=AUTH, timeout=10)
        assert held.status_code == 429                                     # the trickler holds the one slot
        answer = b""
        while chunk := slow.recv(65536):      # the 408 closes the connection: read to its end, not one segment
            answer += chunk
        slow.close()
        assert answer.startswith(b"HTTP/1.1 408") and b"request_timeout" in answer
        after = httpx.post(url + "/v1/chat/completions", json={"model": "Yi-6B", "messages": chat("x")},
                           headers=AUTH, timeout=10)
        assert after.status_code == 200
    finally:
        fresh.loop.call(gateway.stop())


def test_failures_log_a_line_per_kind_not_per_request(fresh, caplog):
    gateway = fresh.start_gateway()            # its own log limits, untouched by the other tests
    fresh.upstreams["Yi-6B"].stop()
    try:
        with caplog.at_level(logging.WARNING, logger="routoo.gateway"):
            for _ in range(30):
                r = httpx.post(f"http://127.0.0.1:{gateway.port}/v1/chat/completions", headers=AUTH, timeout=10,
                               json={"model": "Yi-6B", "messages": chat(QUESTION)})
                assert r.status_code == 502
    finally:
        fresh.upstreams["Yi-6B"].start()
        fresh.loop.call(gateway.stop())
    lines = [r for r in caplog.records if r.name == "routoo.gateway" and "chat completion" in r.getMessage()]
    assert len(lines) == 1 and "502 upstream_failed" in lines[0].getMessage()


# --- from upstreams ----------------------------------------------------------------------------------------

def test_bad_connections_log_a_line_per_kind_not_per_connection(fresh, caplog):
    # uvicorn wrote "Invalid HTTP request received." for each, and two lines per WebSocket upgrade.
    passed = []
    handler = logging.Handler()
    handler.emit = passed.append                   # what still goes out on uvicorn's own logger
    uvicorn_log = logging.getLogger("uvicorn.error")
    uvicorn_log.addHandler(handler)
    try:
        with caplog.at_level(logging.WARNING, logger="routoo.gateway"):
            for raw in [b"GARBAGE\r\n\r\n"] * 30 + [b"GET /v1/models HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                                                      b"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
                                                      b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"] * 30:
                with socket.create_connection(("127.0.0.1", fresh.gateway.port), timeout=10) as conn:
                    conn.sendall(raw)
                    conn.settimeout(10)
                    with contextlib.suppress(OSError):
                        conn.recv(65536)
            assert httpx.get(fresh.url + "/v1/models", headers=AUTH, timeout=30).status_code == 200
    finally:
        uvicorn_log.removeHandler(handler)
    assert not [r for r in passed if r.levelno >= logging.WARNING], [r.getMessage() for r in passed][:5]
    lines = [r.getMessage() for r in caplog.records if r.name == "routoo.gateway" and "uvicorn.error" in r.getMessage()]
    assert any("Invalid HTTP request received." in line for line in lines), lines
    assert 1 <= len(lines) <= 6, lines             # a line per kind, not 90


@pytest.mark.parametrize("stream", [False, True])
def test_odd_but_well_formed_answers_reach_the_client(fresh, stream):
    for mode in ("lone_surrogate", "utf8_header", "huge_usage"):
        fresh.upstreams["Yi-6B"].mode = mode
        spent = metric(fresh.metrics(), "routoo_gateway_spend_usd_total", model="Yi-6B", routed="false")
        raw = fresh.client().chat.completions.with_raw_response.create(
            model="Yi-6B", messages=chat(QUESTION), stream=stream, **({"stream_options": {"include_usage": True}}
                                                                      if stream else {}))
        assert raw.status_code == 200, mode
        parsed = raw.parse()
        text = (parsed.choices[0].message.content if not stream else
                "".join(c.choices[0].delta.content or "" for c in parsed if c.choices))
        assert text.endswith("from Yi-6B"), mode
        assert ("\ud800" in text) == (mode == "lone_surrogate")
        assert "x-request-id" not in raw.headers or mode != "utf8_header"     # dropped, not a 500
        if mode == "huge_usage":        # a count no float holds is not billed
            assert metric(fresh.metrics(), "routoo_gateway_spend_usd_total", model="Yi-6B", routed="false") == spent


def test_an_answer_compressed_against_the_request_is_passed_on_decompressed(fresh):
    fresh.upstreams["Yi-6B"].mode = "gzip"
    spent = metric(fresh.metrics(), "routoo_gateway_spend_usd_total", model="Yi-6B", routed="false")
    answer = fresh.client().chat.completions.create(model="Yi-6B", messages=chat(QUESTION))
    assert answer.choices[0].message.content == "answer from Yi-6B"
    assert metric(fresh.metrics(), "routoo_gateway_spend_usd_total", model="Yi-6B", routed="false") > spent


def test_a_line_that_never_ends_gets_an_error_event_and_the_upstream_is_closed(fresh):
    fresh.upstreams["Yi-6B"].mode = "endless_line"
    with pytest.raises(openai.APIError) as e:
        list(fresh.client().chat.completions.create(model="Yi-6B", messages=chat(QUESTION), stream=True))
    assert "without ending a line" in e.value.message
    assert fresh.upstreams["Yi-6B"].disconnected.wait(10)


def test_a_5xx_with_a_body_nested_past_the_parser_still_fails_over(fresh):
    chosen, runner_up = first_two(fresh, QUESTION)
    fresh.upstreams[chosen].mode = "nested_500"
    raw = fresh.client().chat.completions.with_raw_response.create(model="routoo", messages=chat(QUESTION))
    assert raw.headers["x-routoo-model"] == runner_up


def test_an_upstream_refusing_the_gateways_key_fails_over_and_never_shows_its_body(fresh):
    chosen, runner_up = first_two(fresh, QUESTION)
    fresh.upstreams[chosen].mode = "status_401"
    raw = fresh.client().chat.completions.with_raw_response.create(model="routoo", messages=chat(QUESTION))
    assert raw.headers["x-routoo-model"] == runner_up and raw.headers["x-routoo-attempts"] == "2"
    fresh.upstreams[runner_up].mode = "status_401"
    with pytest.raises(openai.APIStatusError) as e:     # not AuthenticationError: the client's key was fine
        fresh.client().chat.completions.create(model="routoo", messages=chat(QUESTION))
    assert e.value.status_code == 502 and e.value.code == "upstream_key_refused"
    assert "sk-" not in e.value.message and "api_key_env" in e.value.message
    assert metric(fresh.metrics(), "routoo_gateway_upstream_failures_total", model=chosen, reason="key_refused") >= 2


def test_a_client_that_leaves_before_a_non_streamed_answer_stops_its_upstream_call(fresh):
    gateway = fresh.start_gateway(upstream_timeout_s=10.0)
    url = f"http://127.0.0.1:{gateway.port}"
    upstream = fresh.upstreams["Yi-6B"]
    upstream.mode, upstream.delay_s = "slow", 2.0            # generating for 2 s before its first byte
    try:
        started = time.monotonic()
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(url + "/v1/chat/completions", json={"model": "Yi-6B", "messages": chat(QUESTION)},
                       headers=AUTH, timeout=0.5)
        while metric(httpx.get(url + "/metrics", timeout=10).text, "routoo_gateway_requests_total",
                     model="none", status="499") < 1:
            assert time.monotonic() - started < 1.8, "the gateway waited for the upstream's answer"
            time.sleep(0.05)
        assert metric(httpx.get(url + "/metrics", timeout=10).text, "routoo_gateway_requests_in_flight") == 0
        assert len(upstream.received) == 1
        assert upstream.disconnected.wait(5), "the gateway left the upstream's connection open"
    finally:
        fresh.loop.call(gateway.stop())


def test_the_fallback_model_keeps_to_the_requests_allow_and_deny(fresh):
    gateway = fresh.start_gateway(fallback_model="Yi-6B")
    url = f"http://127.0.0.1:{gateway.port}/v1/chat/completions"
    fresh.stop_selector()
    try:
        denied = httpx.post(url, headers=AUTH, timeout=10, json={"model": "routoo", "messages": chat(QUESTION),
                                                                 "routoo": {"deny": ["Yi-6B"]}})
        assert denied.status_code == 503 and error_of(denied)["code"] == "selector_unavailable"
        allowed = httpx.post(url, headers=AUTH, timeout=10, json={"model": "routoo", "messages": chat(QUESTION)})
        assert allowed.status_code == 200 and allowed.headers["x-routoo-fallback"] == "true"
    finally:
        fresh.start_selector()
        fresh.loop.call(gateway.stop())
    assert list(fresh.received()) == ["Yi-6B"]
    deadline = time.monotonic() + 15          # the shared gateway reconnects before the next test routes
    while httpx.post(fresh.url + "/v1/routoo/route", json={"prompt": QUESTION}, headers=AUTH,
                     timeout=10).status_code != 200:
        assert time.monotonic() < deadline, "the gateway did not reconnect to the selector"
        time.sleep(0.1)
