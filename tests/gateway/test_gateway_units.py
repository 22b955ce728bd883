"""The gateway's pure pieces: the pool file's upstream fields, the prompt rule, the model-name syntax, the
SSE rewriter and the last-resort error middleware. No servers: these are the rules the end-to-end tests
(tests/gateway/test_gateway_*.py) rely on."""

import json
import logging

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.prompt import BadMessages, scored_text
from gateway.routing import parse_policy
from gateway.errors import ContainFailures
from gateway.stream import MAX_LINE_BYTES, EventRewriter, EventTooLarge
from gateway.upstream import UpstreamConfigError, load_upstreams
from selector.pool import Pool, PoolError, PoolModel, load_pool, pool_toml


def write_pool(tmp_path, extra: str):
    path = tmp_path / "pool.toml"
    path.write_text('[[models]]\nname = "a"\ninput_usd_per_mtok = 1\noutput_usd_per_mtok = 2\n'
                    f'p95_latency_ms = 100\n{extra}\n', encoding="utf-8")
    return path


def test_upstream_fields_round_trip_through_the_pool_file(tmp_path):
    model = PoolModel("a", 1.0, 2.0, 100.0, True, base_url="http://127.0.0.1:8000/v1", upstream_model="m/a",
                      api_key_env="A_KEY")
    path = tmp_path / "pool.toml"
    path.write_text(pool_toml(Pool((model,))), encoding="utf-8")
    assert load_pool(path).models == (model,)
    assert load_pool().models[0].base_url is None          # the default pool has no upstreams


@pytest.mark.parametrize("extra, problem", [
    ('base_url = "ftp://host/v1"', "http:// or https://"),
    ('base_url = "http://host/v1 x"', "http:// or https://"),
    ('base_url = ""', "non-empty string"),
    ('base_url = "http://h/v1"\napi_key_env = "sk-live-123456"', "name of an environment variable"),
    ('api_key_env = "A_KEY"', "need a 'base_url'"),
    ('base_url = "http://h/v1"\nupstream_model = 3', "non-empty string"),
    ('base_url = "http://h/v1"\napi_base = "x"', "unknown keys ['api_base']"),
])
def test_bad_upstream_fields_are_refused_by_name(tmp_path, extra, problem):
    with pytest.raises(PoolError, match="models\\[0\\] \\('a'\\)") as e:
        load_pool(write_pool(tmp_path, extra))
    assert problem in str(e.value)
    assert "sk-live-123456" not in str(e.value)             # a pasted key is never echoed


def test_upstream_keys_come_from_the_environment_only(tmp_path):
    pool = load_pool(write_pool(tmp_path, 'base_url = "http://h:1/v1/"\napi_key_env = "A_KEY"'))
    upstream = load_upstreams(pool, {"A_KEY": "secret"})["a"]
    assert upstream.url == "http://h:1/v1/chat/completions" and upstream.upstream_model == "a"
    assert upstream.headers == {"authorization": "Bearer secret"} and "secret" not in repr(upstream)
    assert upstream.cost_usd({"prompt_tokens": 1000, "completion_tokens": 500}) == pytest.approx(2e-3)
    with pytest.raises(UpstreamConfigError, match="'A_KEY' is not set"):
        load_upstreams(pool, {})
    from gateway.app import Gateway
    from gateway.config import GatewayConfig

    path = tmp_path / "pool.toml"
    with pytest.raises(UpstreamConfigError, match=f"^{path}: pool model 'a': its api_key_env 'A_KEY' is not set"):
        Gateway(GatewayConfig(pool_path=path), environ={})


def test_keys_lose_the_whitespace_at_their_ends_and_refuse_what_a_header_cannot_carry(tmp_path):
    # A secret made from a file, or a .env with CRLF line ends, ends in a newline: aiohttp refused the
    # header on every request (a 500, no failover), and as a client key it locked every client out.
    from gateway.app import Gateway
    from gateway.config import GatewayConfig

    pool = load_pool(write_pool(tmp_path, 'base_url = "http://h:1/v1/"\napi_key_env = "A_KEY"'))
    assert load_upstreams(pool, {"A_KEY": " secret\r\n"})["a"].headers == {"authorization": "Bearer secret"}
    for bad in ("sec\nret", "sec\x00ret", "s\u00e9cret", "\t\n"):
        with pytest.raises(UpstreamConfigError, match="'A_KEY' holds a character an HTTP header cannot carry") as e:
            load_upstreams(pool, {"A_KEY": bad})
        assert bad not in str(e.value)
    assert Gateway(GatewayConfig(api_key_env="K"), environ={"K": "gateway-key\n"}).client_key == b"gateway-key"
    with pytest.raises(ValueError, match="--api-key-env 'K': its value holds a character") as e:
        Gateway(GatewayConfig(api_key_env="K"), environ={"K": "gate\u00e9way"})
    assert "gate\u00e9way" not in str(e.value)


def test_a_disabled_model_is_refused_by_name_and_as_the_fallback(tmp_path):
    # It was left out of /v1/models and of routing, but a request naming it was forwarded to it.
    import asyncio

    from gateway.app import Gateway
    from gateway.config import GatewayConfig
    from gateway.errors import GatewayError

    path = tmp_path / "pool.toml"
    path.write_text(pool_toml(Pool((PoolModel("a", 1.0, 2.0, 100.0, False, base_url="http://127.0.0.1:1/v1"),
                                    PoolModel("b", 1.0, 2.0, 100.0, True, base_url="http://127.0.0.1:1/v1")))),
                    encoding="utf-8")
    gateway = Gateway(GatewayConfig(pool_path=path), environ={})
    assert gateway.callable_models == ["b"]
    body = {"model": "a", "messages": [{"role": "user", "content": "hi"}]}
    with pytest.raises(GatewayError, match="pool model 'a' is disabled in the pool file"):
        asyncio.run(gateway._decide(body))
    with pytest.raises(ValueError, match="fallback model 'a' has no upstream in the pool file, or is disabled"):
        Gateway(GatewayConfig(pool_path=path, fallback_model="a"), environ={})


def test_a_model_name_goes_into_its_header_as_latin_1_text():
    # x-routoo-model held the name as it is: a name outside Latin-1 made every answer of its model a 500.
    from urllib.parse import unquote

    from gateway.app import header_text

    assert header_text("gpt-4o@2024-05 (eu) [x]") == "gpt-4o@2024-05 (eu) [x]"      # printable ASCII as it is
    for name in ("Qwen\u20117B-\u4e2d\u6587", "a%b", "caf\u00e9"):
        text = header_text(name)
        assert text.isascii() and text.isprintable() and unquote(text) == name
        text.encode("latin-1")


def test_a_client_key_passed_where_its_variables_name_belongs_is_not_printed_back():
    from gateway.app import Gateway
    from gateway.config import GatewayConfig

    with pytest.raises(ValueError, match="a 17-character value that is not a variable name") as e:
        Gateway(GatewayConfig(api_key_env="sk-live-SECRET123"), environ={})
    assert "SECRET123" not in str(e.value)
    with pytest.raises(ValueError, match="--api-key-env 'ROUTOO_CLIENT_KEY': that environment variable is not set"):
        Gateway(GatewayConfig(api_key_env="ROUTOO_CLIENT_KEY"), environ={})


def test_the_prompt_rule_scores_the_last_user_message_or_the_system_prompt_too():
    messages = [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "first"},
                {"role": "assistant", "content": "ok"},
                {"role": "user", "content": [{"type": "text", "text": "second"},
                                             {"type": "image_url", "image_url": {"url": "x"}},
                                             {"type": "text", "text": "part"}]}]
    assert scored_text(messages) == "second\npart"
    assert scored_text(messages, "system_and_last_user") == "Be terse.\n\nsecond\npart"
    assert scored_text([{"role": "user", "content": "é" * 10}], max_bytes=7) == "ééé"   # cut at a character
    # Whitespace before the question is not what the cut keeps.
    assert scored_text([{"role": "user", "content": " " * 300_000 + "What is 2+2?\n"}]) == "What is 2+2?"
    for bad, problem in (([], "non-empty list"), ([{"content": "x"}], "string 'role'"),
                         ([{"role": "assistant", "content": "x"}], "no message with role 'user'"),
                         ([{"role": "user", "content": "  "}], "no text"),
                         ([{"role": "user", "content": 5}], "string or a list")):
        with pytest.raises(BadMessages, match=problem):
            scored_text(bad)


def test_model_names_select_the_policy():
    assert parse_policy("routoo") is None
    assert parse_policy("routoo:tradeoff=2000") == ("tradeoff", 2000.0)
    assert parse_policy("routoo:quality_target=0.8") == ("quality_target", 0.8)
    assert parse_policy("routoo:cost_cap=1e-3") == ("cost_cap", 0.001)
    for bad in ("routoo:", "routoo:greedy=1", "routoo:tradeoff", "routoo:tradeoff=x", "routoo:cost_cap=inf"):
        with pytest.raises(Exception) as e:
            parse_policy(bad)
        assert e.value.status == 400 and e.value.param == "model"


def test_the_sse_rewriter_renames_the_model_notes_usage_and_holds_back_only_a_partial_line():
    rewriter = EventRewriter("pool-model")
    event = {"id": "x", "model": "upstream-name", "choices": [], "usage": {"prompt_tokens": 3}}
    wire = b"data: " + json.dumps(event).encode() + b"\n\ndata: [DONE]\n\n"
    out = rewriter.feed(wire[:20]) + rewriter.feed(wire[20:])
    assert rewriter.feed(b"") == b"" and rewriter.flush() == b""
    lines = out.split(b"\n")
    assert json.loads(lines[0][len(b"data: "):])["model"] == "pool-model"
    assert lines[1:] == [b"", b"data: [DONE]", b"", b""]
    assert rewriter.usage == {"prompt_tokens": 3}
    assert rewriter.feed(b": keep-alive\n") == b": keep-alive\n"


@given(cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=12))
@settings(max_examples=150, deadline=None)
def test_the_sse_rewriter_gives_the_same_bytes_however_the_stream_is_cut(cuts):
    events = [{"id": "x", "model": "up", "choices": [{"index": 0, "delta": {"content": f"é{i}\n"}}]} for i in range(4)]
    events.append({"id": "x", "model": "up", "choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 2}})
    wire = b"".join(b"data: " + json.dumps(e, ensure_ascii=False).encode() + b"\n\n" for e in events)
    wire += b": comment\n\ndata: [DONE]\n\n"
    whole = EventRewriter("pool")
    expected = whole.feed(wire) + whole.flush()
    pieces, rewriter, start = [], EventRewriter("pool"), 0
    for cut in sorted(c for c in cuts if c < len(wire)) + [len(wire)]:
        pieces.append(rewriter.feed(wire[start:cut]))
        start = cut
    assert b"".join(pieces) + rewriter.flush() == expected
    assert rewriter.usage == {"prompt_tokens": 9, "completion_tokens": 2}
    assert [json.loads(line[6:])["model"] for line in expected.split(b"\n") if line.startswith(b"data: {")] == \
        ["pool"] * 5


def test_the_sse_rewriter_knows_when_the_upstream_marked_its_end():
    def ended(*events) -> bool:
        rewriter = EventRewriter("pool")
        for e in events:
            rewriter.feed(b"data: " + (e if isinstance(e, bytes) else json.dumps(e).encode()) + b"\n\n")
        return rewriter.ended

    delta = {"choices": [{"index": 0, "delta": {"content": "a"}, "finish_reason": None}]}
    assert not ended() and not ended(delta) and not ended(delta, {"choices": []}, b"[DON", b"{not json")
    assert not ended(delta, {"choices": "stop"}, {"choices": [None, "stop"]}, [1, 2])
    assert ended(delta, b"[DONE]")
    assert ended(delta, {"choices": [{"index": 0, "delta": {}, "finish_reason": "length"}]})
    assert ended({"error": {"message": "overloaded"}})


def test_the_sse_rewriter_holds_at_most_max_line_bytes_of_an_unended_line():
    rewriter = EventRewriter("pool")
    piece = b"x" * 4096
    for _ in range(MAX_LINE_BYTES // len(piece)):
        assert rewriter.feed(piece) == b""
    with pytest.raises(EventTooLarge, match="without ending a line"):
        rewriter.feed(b"x")
    # Up to the cap, the held pieces are one line when it ends.
    rewriter = EventRewriter("pool")
    assert rewriter.feed(b"data: [DO") == b"" and rewriter.feed(b"NE]") == b""
    assert rewriter.feed(b"\n\n") == b"data: [DONE]\n\n"


def test_an_unexpected_exception_is_an_openai_500_logged_once_without_its_message(caplog):
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.routing import Route
    from starlette.testclient import TestClient

    from selector.log_limits import AggregatedLog

    async def broken(request):
        raise RuntimeError("marmoset-canary-8812 was in the prompt")

    log = AggregatedLog(logging.getLogger("routoo.gateway"))
    app = Starlette(routes=[Route("/x", broken)], middleware=[Middleware(ContainFailures, log=log)])
    with caplog.at_level(logging.WARNING), TestClient(app, raise_server_exceptions=False) as client:
        answers = [client.get("/x") for _ in range(20)]
    assert {r.status_code for r in answers} == {500}
    assert answers[0].json()["error"]["code"] == "internal_error"
    assert "RuntimeError" in answers[0].json()["error"]["message"]
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and "RuntimeError at test_gateway_units.py" in lines[0]
    assert "marmoset" not in caplog.text and "marmoset" not in answers[0].text


def test_lines_ended_in_the_chunk_that_overflows_are_returned_before_the_error():
    rewriter = EventRewriter("pool")
    out = rewriter.feed(b"data: [DONE]\n" + b"x" * (MAX_LINE_BYTES + 1))
    assert out == b"data: [DONE]\n"
    with pytest.raises(EventTooLarge):
        rewriter.feed(b"more")
