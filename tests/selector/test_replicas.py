"""Several predictor replicas behind one selector (selector/replicas.py), for real: two `tritonserver`
processes on loopback ports, the real selector in a thread of its own, a closed-loop Route load from a
grpc.aio client. One replica is SIGKILLed mid-load and later restarted on the same ports: no Route may fail
(calls in flight on the dead one are retried on the other), and the load must come back to it.
"""

import asyncio
import logging
import os
import signal
import socket
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from predictor_service.contract import PREDICTOR_MODEL, TRITON_GRPC_ADDRESS
from predictor_service.triton_server import TritonServer, free_port
from selector.config import SelectorConfig
from selector.proto import selector_pb2 as pb
from selector.proto import selector_pb2_grpc as pb_grpc
from selector.replicas import ReplicaSet, scores_from_config
from selector.targets import Target, parse_targets
from selector.triton_scores import PredictorUnavailable, TritonScores
from tests.support import selector_harness

PROMPTS = [f"Question {i}: how does {topic} relate to {other}?"
           for i, (topic, other) in enumerate(zip(["entropy", "tort law", "heaps", "Kant"] * 4,
                                                  ["heat", "contracts", "sorting", "duty"] * 4))]
# Quick probing so the test sees a replica rejoin within a second of being ready again.
FAST = dict(metrics_port=0, health_poll_s=0.2, replica_health_interval_s=0.2, replica_backoff_min_s=0.1,
            replica_backoff_max_s=0.5, replica_resolve_interval_s=0.2)


@pytest.fixture(scope="module")
def tritons():
    servers = [TritonServer(models=(PREDICTOR_MODEL,)), TritonServer(models=(PREDICTOR_MODEL,))]
    try:
        with ThreadPoolExecutor(2) as pool:           # both start at once: ~10-20 s each on 2 cores
            list(pool.map(TritonServer.start, servers))
        yield servers
    finally:
        for server in servers:
            server.stop()
            server.cleanup()


class SelectorThread(selector_harness.SelectorThread):
    """The shared harness, plus the ReplicaSet it serves from and its /metrics page."""

    def __init__(self, config: SelectorConfig):
        super().__init__(config)
        scores = self.server._scores
        # The ReplicaSet create_server built, under the coalescer that wraps it by default.
        self.replicas = getattr(scores, "inner", scores)

    def metrics(self) -> dict[tuple, float]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.server.metrics_port}/metrics", timeout=5) as r:
            return _samples(r.read().decode())


def _samples(text: str) -> dict[tuple, float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def triton_successes(server: TritonServer) -> float:
    """nv_inference_request_success of routoo_predictor: requests the replica itself answered (0 after a restart)."""
    with urllib.request.urlopen(server.metrics_url, timeout=5) as response:
        samples = _samples(response.read().decode())
    # Triton's counters carry no _total suffix; prometheus_client's parser adds one.
    return sum(v for (name, labels), v in samples.items()
               if name == "nv_inference_request_success_total" and ("model", PREDICTOR_MODEL) in labels)


def test_parse_targets_accepts_lists_names_and_ipv6():
    assert parse_targets("10.0.0.7:8001, triton.routoo.svc:8001,[::1]:9001") == (
        Target("10.0.0.7", 8001), Target("triton.routoo.svc", 8001), Target("::1", 9001))
    assert [t.is_literal for t in parse_targets("10.0.0.7:1,name:1,[::1]:1")] == [True, False, True]
    assert str(Target("::1", 9001)) == "[::1]:9001"


@pytest.mark.parametrize("bad, named", [("", "no empty entry"), ("a:1,,b:2", "no empty entry"),
                                        ("triton", "HOST:PORT"), ("triton:http", "port must be"),
                                        ("a:0", "port must be"), ("::1:8001", "brackets"),
                                        ("grpc://a:1", "scheme"), ("a:1,a:1", "twice")])
def test_bad_predictor_url_is_refused_naming_it(bad, named):
    with pytest.raises(ValueError, match=named):
        SelectorConfig(triton_url=bad)


def test_one_literal_address_keeps_the_plain_client():
    async def build():
        scores = scores_from_config(SelectorConfig(triton_url=TRITON_GRPC_ADDRESS))
        await scores.close()
        return scores
    assert isinstance(asyncio.run(build()), TritonScores)


def test_no_replica_answering_is_unavailable_naming_them():
    dead = [free_port(), free_port()]

    async def ask():
        replicas = ReplicaSet.from_config(SelectorConfig(triton_url=",".join(f"127.0.0.1:{p}" for p in dead)))
        try:
            with pytest.raises(PredictorUnavailable, match=f"127.0.0.1:{dead[0]}, 127.0.0.1:{dead[1]}"):
                await replicas.served_pool(timeout_s=1.0)
            assert not await replicas.ready()
        finally:
            await replicas.close()
    asyncio.run(ask())


def test_dns_name_resolves_and_follows_its_answers(tritons):
    a, b = tritons

    async def run():
        # The system resolver: localhost is one replica at 127.0.0.1.
        by_name = scores_from_config(SelectorConfig(triton_url=f"localhost:{a.ports['grpc']}"))
        assert isinstance(by_name, ReplicaSet)
        try:
            await by_name.served_pool()
            quality, _ = await by_name.score(PROMPTS[:3], timeout_s=10)
            assert quality.shape[0] == 3
            assert by_name.snapshot()[a.grpc_url]["calls"]["ok"] == 1
        finally:
            await by_name.close()

        # A headless Service's answers as pods come and go (a real DNS server with several records cannot run
        # here): the resolver answers a, then a and b, then b alone.
        answers = [[a.grpc_url], [a.grpc_url, b.grpc_url], [b.grpc_url]]

        async def resolver(host, port):
            return answers[0]
        config = SelectorConfig(triton_url="triton.routoo.svc:8001")
        scaling = ReplicaSet(parse_targets(config.triton_url), lambda address: TritonScores.from_config(
            SelectorConfig(triton_url=address)), resolver=resolver, resolve_interval_s=0.1, health_interval_s=0.1,
            backoff_min_s=0.1, backoff_max_s=0.2)
        try:
            await scaling.served_pool()
            assert list(scaling.snapshot()) == [a.grpc_url]
            for expected in answers[1:]:
                answers.pop(0)
                await _until(lambda: sorted(a for a, s in scaling.snapshot().items() if s["healthy"]) == sorted(
                    expected), timeout_s=10)
            await scaling.score(PROMPTS[:1], timeout_s=10)
            assert scaling.snapshot()[b.grpc_url]["calls"]["ok"] == 1
        finally:
            await scaling.close()
    asyncio.run(run())


def test_a_name_without_records_waits_for_them_logging_once(tritons, caplog):
    """A headless Service before its first pod is ready has no records: start-up keeps trying, says so once."""
    a, _ = tritons
    answers: list = [socket.gaierror(socket.EAI_NONAME, "Name or service not known")]

    async def resolver(host, port):
        if isinstance(answers[0], Exception):
            raise answers[0]
        return answers[0]

    async def run():
        replicas = ReplicaSet(parse_targets("routoo-triton:8001"), lambda address: TritonScores.from_config(
            SelectorConfig(triton_url=address)), resolver=resolver, resolve_interval_s=0.1, health_interval_s=0.1,
            backoff_min_s=0.1, backoff_max_s=0.2)
        try:
            for _ in range(5):
                with pytest.raises(PredictorUnavailable, match="0 known"):
                    await replicas.served_pool()
            answers[0] = [a.grpc_url]
            pool = await replicas.served_pool()
            assert pool.names and await replicas.ready()
        finally:
            await replicas.close()

    with caplog.at_level(logging.WARNING, logger="routoo.selector.replicas"):
        asyncio.run(run())
    assert sum("cannot resolve predictor name routoo-triton" in r.getMessage() for r in caplog.records) == 1


async def _until(condition, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


class ClosedLoop:
    """`clients` grpc.aio clients sending Route back to back; counts by the phase each call started in."""

    def __init__(self, address: str, clients: int = 4, timeout_s: float = 10.0):
        self.address, self.clients, self.timeout_s = address, clients, timeout_s
        self.phase = "both up"
        self.done: dict[str, int] = {}
        self.failures: list[tuple[str, str, str]] = []     # (phase at start, status code, details)

    async def __aenter__(self) -> "ClosedLoop":
        self._stop = asyncio.Event()
        self._channel = grpc.aio.insecure_channel(self.address)
        stub = pb_grpc.SelectorStub(self._channel)

        async def client(i: int) -> None:
            n = i
            while not self._stop.is_set():
                phase = self.phase
                try:
                    await stub.Route(pb.RouteRequest(prompt=PROMPTS[n % len(PROMPTS)]), timeout=self.timeout_s)
                    self.done[phase] = self.done.get(phase, 0) + 1
                except grpc.aio.AioRpcError as e:
                    self.failures.append((phase, e.code().name, (e.details() or "")[:200]))
                n += 1

        self._tasks = [asyncio.create_task(client(i)) for i in range(self.clients)]
        return self

    async def until_done(self, count: int, timeout_s: float = 30.0) -> None:
        phase = self.phase
        await _until(lambda: self.done.get(phase, 0) >= count, timeout_s=timeout_s)

    async def __aexit__(self, *exc) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)
        await self._channel.close()


def test_sigkill_and_restart_under_load_loses_no_route(tritons):
    a, b = tritons
    selector = SelectorThread(SelectorConfig(port=0, triton_url=f"{a.grpc_url},{b.grpc_url}", **FAST))
    healthy = lambda server: selector.replicas.snapshot()[server.grpc_url]["healthy"]   # noqa: E731

    async def run(load: ClosedLoop) -> dict:
        async with load:
            await load.until_done(200)
            both = {r: s["calls"]["ok"] for r, s in selector.replicas.snapshot().items()}

            load.phase = "a killed"
            os.killpg(a._process.pid, signal.SIGKILL)   # the server and its Python stubs: a node dying
            await _until(lambda: not healthy(a), timeout_s=5)
            await load.until_done(200)

            load.phase = "a restarting"
            await asyncio.to_thread(a.restart)         # same ports, same repository
            await _until(lambda: healthy(a), timeout_s=10)

            load.phase = "a back"
            a0, b0 = await asyncio.to_thread(lambda: (triton_successes(a), triton_successes(b)))
            await load.until_done(400)
            a1, b1 = await asyncio.to_thread(lambda: (triton_successes(a), triton_successes(b)))
        return {"ok calls per replica with both up": both, "triton successes after restart": {
            "a": a1 - a0, "b": b1 - b0}}

    load = ClosedLoop(selector.address)
    try:
        seen = asyncio.run(run(load))
        metrics = selector.metrics()
    finally:
        selector.close()
    calls = {(dict(labels)["replica"], dict(labels)["outcome"]): v for (name, labels), v in metrics.items()
             if name == "routoo_selector_replica_calls_total"}
    retries = metrics[("routoo_selector_predictor_retries_total", ())]
    print(f"\nfailover: routes done per phase {load.done}; failed {len(load.failures)}; retried {retries:g}; "
          f"selector calls per (replica, outcome) {calls}; {seen}")
    assert load.failures == [], load.failures[:5]
    both = seen["ok calls per replica with both up"]
    assert min(both.values()) >= 0.2 * sum(both.values()), f"load not spread over both replicas: {both}"
    # Every call that met the dead replica was retried, and no retry failed.
    assert retries == calls.get((a.grpc_url, "unavailable"), 0) + calls.get((b.grpc_url, "unavailable"), 0)
    back = seen["triton successes after restart"]
    assert back["a"] >= 0.2 * (back["a"] + back["b"]), f"load did not move back to the restarted replica: {back}"


def test_a_replica_that_stops_answering_is_taken_out_and_rejoins(tritons):
    """SIGSTOP: connections stay open and calls hang. Its readiness check (1 s timeout) takes it out; only
    the calls already waiting on it miss their deadline (a timeout is not retried: the deadline is spent)."""
    a, b = tritons
    selector = SelectorThread(SelectorConfig(port=0, triton_url=f"{a.grpc_url},{b.grpc_url}",
                                             triton_timeout_s=2.0, **FAST))
    healthy = lambda server: selector.replicas.snapshot()[server.grpc_url]["healthy"]   # noqa: E731
    b_ok = lambda: selector.replicas.snapshot()[b.grpc_url]["calls"]["ok"]                # noqa: E731
    clients = 4
    exited: list[int | None] = []       # b's exit status, where it exited after the stop and was restarted

    async def run(load: ClosedLoop) -> float:
        async with load:
            await load.until_done(200)
            load.phase = "b stopping"
            os.killpg(b._process.pid, signal.SIGSTOP)
            try:
                await _until(lambda: not healthy(b), timeout_s=5)
                load.phase = "b out"
                await load.until_done(200)
            finally:
                os.killpg(b._process.pid, signal.SIGCONT)
            await _until(lambda: healthy(b), timeout_s=10)
            load.phase, back = "b back", b_ok()
            # A long stop (a loaded machine stretches the "b out" phase) can make tritonserver restart its
            # Python stub once it runs again, so b may drop out once more: it must rejoin within 30 s...
            # In full-suite runs b sometimes dropped out for good ('Socket closed'): tritonserver had died of
            # SIGSEGV (exit -11, seen 2026-12-01) after the stop. Like a pod's restart policy, the test
            # starts it again, and the selector must take it back.
            rejoined = lambda: b_ok() - back >= 20 and healthy(b)                      # noqa: E731
            try:
                await _until(lambda: rejoined() or not b.running(), timeout_s=30)
                if not b.running():
                    exited.append(b.exit_status())
                    await asyncio.to_thread(b.restart)
                    await _until(rejoined, timeout_s=30)
            except AssertionError:
                raise AssertionError(f"b did not rejoin within 30 s: running {b.running()}, exit status "
                                     f"{b.exit_status()}, log tail:\n{b.log_tail(15)}") from None
            # ...and then take its share of the next 200 routes.
            load.phase, before = "b rejoined", b_ok()
            await load.until_done(200)
            return b_ok() - before

    load = ClosedLoop(selector.address, clients=clients)
    try:
        b_calls_back = asyncio.run(run(load))
    finally:
        selector.close()
    failed = [f[:2] for f in load.failures]
    print(f"\nstopped replica: routes done per phase {load.done}; failed {failed}; calls to it once back "
          f"{b_calls_back}; exited after the stop and restarted: {exited or 'no'}")
    assert all(phase != "b out" and code == "DEADLINE_EXCEEDED" for phase, code, _ in load.failures), load.failures
    assert len(load.failures) <= clients                  # at most the calls waiting on it when it stopped
    assert b_calls_back >= 0.2 * load.done["b rejoined"]


def test_sigterm_drains_a_replica_without_failing_a_route(tritons):
    """A rolling update's pod deletion: tritonserver SIGTERMed unloads its model ('unknown model', which is
    UNAVAILABLE to the selector) and exits; calls caught in between are retried on the other replica.
    Last in the module: the replica stays down."""
    a, b = tritons
    selector = SelectorThread(SelectorConfig(port=0, triton_url=f"{a.grpc_url},{b.grpc_url}", **FAST))

    async def run(load: ClosedLoop) -> None:
        # b must be serving first: the stopped-replica test before may have left its Python stub restarting
        if not b.running():
            await asyncio.to_thread(b.restart)
        await _until(lambda: selector.replicas.snapshot()[b.grpc_url]["healthy"], timeout_s=30)
        async with load:
            await load.until_done(200)
            load.phase = "a terminating"
            await asyncio.to_thread(a.stop)             # SIGTERM, then waits for the exit
            load.phase = "a gone"
            await load.until_done(200)

    load = ClosedLoop(selector.address)
    try:
        asyncio.run(run(load))
        state = selector.replicas.snapshot()
    finally:
        selector.close()
    print(f"\nSIGTERM: routes done per phase {load.done}; failed {len(load.failures)}; replicas {state}")
    assert load.failures == [], load.failures[:5]
    assert not state[a.grpc_url]["healthy"] and state[b.grpc_url]["healthy"]
