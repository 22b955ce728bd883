"""The real selector for tests, in-process: create_server + start on an event loop of its own, in a daemon
thread, on a free loopback port, with a gRPC channel and stub to it. Each test module builds it with its own
SelectorConfig (and scores, where it stands in for Triton); close() stops the server and the loop. Beside
it, what the selector tests share: their prompts, the error of a failing call, and polling."""

import asyncio
import threading
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from selector.proto import selector_pb2_grpc as pb_grpc
from selector.server import SERVICE_NAME, create_server

PROMPTS = [f"Question {i}: what does {topic} have to do with {other}?"
           for i, (topic, other) in enumerate(zip(["entropy", "tort law", "heaps", "Kant", "mitosis"] * 4,
                                                  ["heat", "contracts", "sorting", "duty", "cancer"] * 4))]


class SelectorThread:
    """A selector (create_server + start) on its own event loop in a daemon thread, on a free port.

    channel_options go to the test's channel, e.g. larger message limits for big RouteBatches."""

    def __init__(self, config, scores=None, channel_options=()):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server, self.port = self.call(create_server("127.0.0.1:0", config=config, scores=scores))
        self.call(self.server.start())
        self.address = f"127.0.0.1:{self.port}"
        self.channel = grpc.insecure_channel(self.address, options=list(channel_options))
        self.stub = pb_grpc.SelectorStub(self.channel)

    def call(self, coroutine, timeout: float = 120.0):
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def health(self, service: str = SERVICE_NAME) -> int:
        return health_pb2_grpc.HealthStub(self.channel).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=5).status

    def metric(self, name: str, labels: dict | None = None) -> float:
        """A sample of the selector's own Prometheus registry (0 when it has none yet)."""
        return self.server.metrics.registry.get_sample_value(name, labels or {}) or 0.0

    def close(self) -> None:
        self.channel.close()
        self.call(self.server.stop(0))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


def rpc_error(call, *args, **kwargs) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as error:
        call(*args, timeout=30, **kwargs)
    return error.value


def wait_for(condition, attempts: int = 150, pause_s: float = 0.2) -> bool:
    """Polls a condition (a state change in another process), up to attempts x pause_s; asserts nothing
    about how long it took."""
    for _ in range(attempts):
        if condition():
            return True
        time.sleep(pause_s)
    return False
