"""RouteStream end to end: the real tritonserver and selector of this folder's conftest.py, spoken to with
the generated stub and `SelectorClient.route_stream`.

A stream's messages get the decisions unary Route calls get, each answered once under its id; a bad message
gets its own error and the stream and the other messages go on; big messages pass the same gate as big
unary requests; a cancelled stream leaves nothing in flight.
"""

import logging

import grpc
import pytest

from selector.client import SelectorClient, make_route_request
from selector.config import SelectorConfig
from selector.proto import selector_pb2 as pb
from tests.selector.server.test_rpcs import BAD_INPUTS, CANARY
from tests.support.selector_harness import PROMPTS, SelectorThread, wait_for

METHOD = "/routoo.selector.v1.Selector/RouteStream"


def requests_with_policies():
    policies = [{}, {"quality_per_usd": 300.0}, {"quality_target": 0.6}, {"cost_cap_usd": 0.001},
                {"quality_per_usd": 50.0, "deny": ["gpt-4o@2024-05"], "max_latency_ms": 5000}]
    return [make_route_request(prompt, **policies[i % len(policies)]) for i, prompt in enumerate(PROMPTS * 2)]


def by_id(responses) -> dict[str, pb.RouteStreamResponse]:
    out = {}
    for response in responses:
        assert response.id not in out, f"id {response.id!r} answered twice"
        out[response.id] = response
    return out


def test_every_message_gets_the_decision_a_route_call_gets(selector):
    requests = requests_with_policies()
    with SelectorClient(selector.address) as client:
        answers = by_id(client.route_stream(requests))
    assert sorted(answers, key=int) == [str(i) for i in range(len(requests))]
    for i, request in enumerate(requests):
        answer = answers[str(i)]
        assert answer.WhichOneof("result") == "decision", answer.error
        assert answer.decision == selector.stub.Route(request, timeout=30)


def test_a_bad_message_gets_its_own_error_and_the_stream_goes_on(selector):
    bad = [(request, status, text) for method, request, status, text in BAD_INPUTS if method == "Route"]
    requests, expected = [], {}
    for i, (request, status, text) in enumerate(bad):
        expected[str(len(requests))] = (status.name, text)
        requests.append(pb.RouteStreamRequest(id=str(len(requests)), route=request))
        requests.append(pb.RouteStreamRequest(id=str(len(requests)), route=make_route_request(PROMPTS[i % 5])))
    answers = by_id(selector.stub.RouteStream(iter(requests), timeout=120))
    assert len(answers) == len(requests)
    for request in requests:
        answer = answers[request.id]
        if request.id in expected:
            code, text = expected[request.id]
            assert answer.WhichOneof("result") == "error"
            assert answer.error.code == code and text in answer.error.message
        else:
            assert answer.WhichOneof("result") == "decision" and answer.decision.model


def test_an_undecodable_message_is_answered_with_an_empty_id_and_the_next_ones_are_routed(selector):
    good = pb.RouteStreamRequest(id="after", route=make_route_request(PROMPTS[0])).SerializeToString()
    invalid_utf8 = b"\x0a\x01\xff"         # field 1 (id), one byte that is not UTF-8
    call = selector.channel.stream_stream(METHOD, request_serializer=lambda data: data,
                                          response_deserializer=pb.RouteStreamResponse.FromString)
    answers = list(call(iter([invalid_utf8, good]), timeout=60))
    assert len(answers) == 2
    undecodable = next(a for a in answers if a.WhichOneof("result") == "error")
    assert undecodable.id == "" and undecodable.error.code == "INVALID_ARGUMENT"
    assert "not a valid routoo.selector.v1.RouteStreamRequest" in undecodable.error.message
    assert next(a for a in answers if a.id == "after").decision.model


def test_prompt_text_never_reaches_the_log(selector, caplog):
    caplog.set_level(logging.DEBUG)
    requests = [make_route_request(f"Tell me about {CANARY}"), make_route_request(f"{CANARY} " * 20_000),
                make_route_request(CANARY, max_latency_ms=1)]
    with SelectorClient(selector.address) as client:
        answers = list(client.route_stream(requests))
    assert [a.WhichOneof("result") for a in sorted(answers, key=lambda a: a.id)] == ["decision", "error", "error"]
    assert CANARY not in caplog.text


def test_a_cancelled_stream_leaves_nothing_in_flight(selector):
    def endless():
        for i in range(10_000):
            yield pb.RouteStreamRequest(id=str(i), route=make_route_request(PROMPTS[i % len(PROMPTS)]))

    responses = selector.stub.RouteStream(endless())
    assert next(responses).decision.model
    responses.cancel()
    assert wait_for(lambda: selector.metric("routoo_selector_requests_in_flight") == 0)
    assert selector.stub.Route(make_route_request(PROMPTS[3]), timeout=30).model


@pytest.fixture(scope="module")
def one_at_a_time(triton_server):
    """A selector that works on one message of a stream at a time, and takes any message over 1 KiB as a big
    one, with room for one such message of 5 KiB held (not two)."""
    running = SelectorThread(SelectorConfig(port=0, triton_url=triton_server.grpc_url, stream_max_in_flight=1,
                                            big_request_bytes=1024, max_in_flight_bytes=8192))
    yield running
    running.close()


def test_one_message_in_flight_answers_in_request_order(one_at_a_time):
    requests = requests_with_policies()
    with SelectorClient(one_at_a_time.address) as client:
        ids = [answer.id for answer in client.route_stream(requests)]
    assert ids == [str(i) for i in range(len(requests))]


def test_big_messages_pass_the_bytes_budget(one_at_a_time):
    long_prompt = "Summarise the following. " + "The quick brown fox jumps over the lazy dog. " * 120  # ~5.4 KB
    too_big = "Summarise this. " + "word " * 2000                                                  # ~10 KB
    requests = [make_route_request(long_prompt), make_route_request(too_big), make_route_request(PROMPTS[0])]
    with SelectorClient(one_at_a_time.address) as client:
        answers = by_id(client.route_stream(requests))
    assert answers["0"].decision == one_at_a_time.stub.Route(requests[0], timeout=30)
    assert answers["1"].error.code == grpc.StatusCode.RESOURCE_EXHAUSTED.name
    assert "over its budget of 8192" in answers["1"].error.message
    assert answers["2"].decision.model
    assert one_at_a_time.metric("routoo_selector_rejected_total",
                                {"method": "RouteStream", "reason": "bytes_in_flight"}) == 1
