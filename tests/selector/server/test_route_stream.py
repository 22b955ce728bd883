"""RouteStream end to end: the real tritonserver and selector of this folder's conftest.py, spoken to with
the generated stub and `SelectorClient.route_stream`.

A stream's messages get the decisions unary Route calls get, each answered once under its id; a bad message
gets its own error and the stream and the other messages go on; big messages pass the same gate as big
unary requests; a cancelled stream leaves nothing in flight.
"""

import logging
import math
import os
import signal
import threading
import time

import grpc
import pytest

from selector.client import SelectorClient, make_route_request
from selector.config import SelectorConfig
from selector.proto import selector_pb2 as pb
from selector.proto.selector_pb2_grpc import SelectorStub
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


def assert_same_decision(streamed: pb.RouteDecision, called: pb.RouteDecision) -> None:
    """Equal decisions; scores to float32 precision (a coalesced batch and a lone call may differ there)."""
    assert (streamed.model, streamed.policy) == (called.model, called.policy)
    assert [r.model for r in streamed.runners_up] == [r.model for r in called.runners_up]
    assert [s.model for s in streamed.scores] == [s.model for s in called.scores]
    for a, b in zip([streamed, *streamed.scores], [called, *called.scores]):
        assert math.isclose(a.quality, b.quality, rel_tol=1e-6)
        assert math.isclose(a.expected_cost_usd, b.expected_cost_usd, rel_tol=1e-6)


def test_every_message_gets_the_decision_a_route_call_gets(selector):
    requests = requests_with_policies()
    with SelectorClient(selector.address) as client:
        answers = by_id(client.route_stream(requests))
    assert sorted(answers, key=int) == [str(i) for i in range(len(requests))]
    for i, request in enumerate(requests):
        answer = answers[str(i)]
        assert answer.WhichOneof("result") == "decision", answer.error
        assert_same_decision(answer.decision, selector.stub.Route(request, timeout=30))
    assert selector.metric("routoo_selector_triton_call_seconds_count", {"method": "RouteStream"}) > 0


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


def test_a_small_message_that_does_not_decode_keeps_its_id(selector):
    """As a big one does (below): answers come in any order, so an error without its id could not be matched."""
    data = bytearray(pb.RouteStreamRequest(id="bad-utf8", route=make_route_request("ab-x-cd")).SerializeToString())
    data[data.index(b"-x-") + 1] = 0xFF                # inside the prompt: valid wire format, not UTF-8
    good = pb.RouteStreamRequest(id="good", route=make_route_request(PROMPTS[0])).SerializeToString()
    call = selector.channel.stream_stream(METHOD, request_serializer=lambda b: b,
                                          response_deserializer=pb.RouteStreamResponse.FromString)
    answers = {a.id: a for a in call(iter([bytes(data), good]), timeout=60)}
    assert set(answers) == {"bad-utf8", "good"}
    assert answers["bad-utf8"].error.code == "INVALID_ARGUMENT" and answers["good"].decision.model


def test_a_big_message_that_does_not_decode_keeps_its_id(one_at_a_time):
    """one_at_a_time takes messages over 1 KiB as big: decoded behind the gate, after their id was read."""
    data = bytearray(pb.RouteStreamRequest(id="big", route=make_route_request("x" * 2000)).SerializeToString())
    data[-10] = 0xFF                      # inside the prompt: valid wire format, not UTF-8
    call = one_at_a_time.channel.stream_stream(METHOD, request_serializer=lambda b: b,
                                               response_deserializer=pb.RouteStreamResponse.FromString)
    [answer] = list(call(iter([bytes(data)]), timeout=60))
    assert answer.id == "big" and answer.error.code == "INVALID_ARGUMENT"


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
    assert_same_decision(answers["0"].decision, one_at_a_time.stub.Route(requests[0], timeout=30))
    assert answers["1"].error.code == grpc.StatusCode.RESOURCE_EXHAUSTED.name
    # Larger than the whole budget: refused as never admissible, not "retry with backoff".
    assert "over the selector's whole budget of 8192 bytes" in answers["1"].error.message
    assert "can never be admitted" in answers["1"].error.message
    assert answers["2"].decision.model
    assert one_at_a_time.metric("routoo_selector_rejected_total",
                                {"method": "RouteStream", "reason": "over_budget"}) == 1


def decided(selector) -> float:
    """RouteStream messages the selector has decided so far."""
    return selector.metric("routoo_selector_request_seconds_count", {"method": "RouteStream"})


def settled_decided(selector) -> float:
    """decided() once it holds still over half a second; fails if it keeps growing for 20 s."""
    counts = []

    def settled() -> bool:
        counts.append(decided(selector))
        return len(counts) > 1 and counts[-1] == counts[-2]

    assert wait_for(settled, attempts=40, pause_s=0.5), f"still deciding unread messages: {counts}"
    return counts[-1]


def test_a_caller_that_does_not_read_its_answers_is_not_read_further(one_at_a_time):
    """Answers not yet written hold their slots: once the caller's flow-control window is full, the
    selector stops reading instead of deciding and queueing answers nobody reads. (BDP probing off, so
    the window stays at gRPC's initial 64 KiB: ~50 answers with their scores.)"""
    sent = 5_000
    requests = (pb.RouteStreamRequest(id=str(i), route=make_route_request(PROMPTS[i % len(PROMPTS)]))
                for i in range(sent))
    before = decided(one_at_a_time)
    with grpc.insecure_channel(one_at_a_time.address, options=[("grpc.http2.bdp_probe", 0)]) as channel:
        responses = SelectorStub(channel).RouteStream(requests, timeout=300)
        assert 0 < settled_decided(one_at_a_time) - before < 500
        assert len(by_id(responses)) == sent


@pytest.fixture(scope="module")
def small_slots(triton_server):
    """A selector whose streams hold at most 4 messages each and 6 over all streams."""
    running = SelectorThread(SelectorConfig(port=0, triton_url=triton_server.grpc_url, stream_max_in_flight=4,
                                            max_concurrent_stream_messages=6))
    yield running
    running.close()


class FrozenPredictor:
    """tritonserver stopped (SIGSTOP) for the block: calls wait on it. Kept well under the selector's 10 s
    Triton deadline."""

    def __init__(self, triton_server):
        self.pid = triton_server.pid

    def __enter__(self):
        os.kill(self.pid, signal.SIGSTOP)
        return self

    def __exit__(self, *exc):
        os.kill(self.pid, signal.SIGCONT)


def stream_of(n: int, tag: str):
    return (pb.RouteStreamRequest(id=f"{tag}{i}", route=make_route_request(PROMPTS[i % len(PROMPTS)]))
            for i in range(n))


def in_flight(selector) -> float:
    return selector.metric("routoo_selector_stream_messages_in_flight")


def test_streams_wait_for_the_servers_slots_and_leave_unary_calls_theirs(small_slots, triton_server):
    calls = [small_slots.stub.RouteStream(stream_of(10, tag), timeout=120) for tag in "abc"]
    with FrozenPredictor(triton_server):
        assert wait_for(lambda: in_flight(small_slots) == 6, attempts=50, pause_s=0.05)
        route = small_slots.stub.Route.future(make_route_request(PROMPTS[0]), timeout=60)
        assert wait_for(lambda: small_slots.metric("routoo_selector_requests_in_flight") == 1, attempts=50,
                        pause_s=0.05)            # admitted beside the six, not refused
        assert in_flight(small_slots) == 6
    answers = [answer for call in calls for answer in call]
    assert len(answers) == 30 and all(a.WhichOneof("result") == "decision" for a in answers)
    assert route.result().model


def test_callers_that_do_not_read_hold_only_their_own_slots(small_slots):
    """Two streams whose answers nobody reads fill their own 4 slots each (8 > the server's 6), and a third
    stream is still answered: unwritten answers hold no server slot."""
    with grpc.insecure_channel(small_slots.address, options=[("grpc.http2.bdp_probe", 0)]) as channel:
        stalled = [SelectorStub(channel).RouteStream(stream_of(2000, tag), timeout=120) for tag in "pq"]
        settled_decided(small_slots)
        assert in_flight(small_slots) == 0
        answers = list(small_slots.stub.RouteStream(stream_of(20, "r"), timeout=60))
        assert len(answers) == 20 and all(a.decision.model for a in answers)
        assert all(len(list(call)) == 2000 for call in stalled)


def test_a_cancelled_stream_gives_its_slots_back(small_slots, triton_server):
    with FrozenPredictor(triton_server):
        call = small_slots.stub.RouteStream(stream_of(10, "x"), timeout=120)
        assert wait_for(lambda: in_flight(small_slots) == 4, attempts=50, pause_s=0.05)
        call.cancel()
    assert wait_for(lambda: in_flight(small_slots) == 0)
    with FrozenPredictor(triton_server):          # all six server slots are free again
        calls = [small_slots.stub.RouteStream(stream_of(5, tag), timeout=120) for tag in "yz"]
        assert wait_for(lambda: in_flight(small_slots) == 6, attempts=50, pause_s=0.05)
    assert sum(1 for call in calls for answer in call if answer.decision.model) == 10


def test_a_stream_that_starts_once_the_selector_drains_ends_at_once(triton_server):
    running = SelectorThread(SelectorConfig(port=0, triton_url=triton_server.grpc_url))
    try:
        running.loop.call_soon_threadsafe(running.server.service.drain)
        with pytest.raises(grpc.RpcError) as error:
            list(running.stub.RouteStream(stream_of(3, "d"), timeout=30))
        assert error.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "shutting down" in error.value.details()
        assert running.stub.Route(make_route_request(PROMPTS[0]), timeout=30).model    # unary calls go on
    finally:
        running.close()


def test_stopping_the_selector_answers_what_each_stream_read_then_ends_it(triton_server):
    running = SelectorThread(SelectorConfig(port=0, triton_url=triton_server.grpc_url))
    answers, ended = [], {}

    def slowly():
        for i in range(5000):
            yield pb.RouteStreamRequest(id=str(i), route=make_route_request(PROMPTS[i % len(PROMPTS)]))
            time.sleep(0.002)

    def consume():
        try:
            for answer in running.stub.RouteStream(slowly(), timeout=120):
                answers.append(answer)
        except grpc.RpcError as e:
            ended["code"], ended["details"] = e.code(), e.details()

    reader = threading.Thread(target=consume)
    reader.start()
    try:
        assert wait_for(lambda: len(answers) >= 20, attempts=100, pause_s=0.05)
        running.call(running.server.stop(30))
        reader.join(60)
    finally:
        running.close()
    assert ended.get("code") == grpc.StatusCode.UNAVAILABLE
    assert "every message it read was answered" in ended["details"]
    ids = sorted(int(a.id) for a in answers)
    assert ids == list(range(len(ids))) and all(a.decision.model for a in answers)
