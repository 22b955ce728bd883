"""A predictor whose Python-backend stub died, for real: a `tritonserver` on loopback ports, the real
selector beside it, the routoo_predictor stub SIGKILLed (as the OOM killer would pick it: it is the largest
process). This Triton keeps running and reads ready, and answers every request INTERNAL "Stub process ... is
not healthy." (predictor_service/backend_stubs.py). The selector must answer UNAVAILABLE (so clients retry and
a fallback model applies), report NOT_SERVING until the model scores again, and come back once it does.
"""

import os
import signal

import grpc
import pytest
from grpc_health.v1 import health_pb2

from predictor_service.backend_stubs import stub_pids
from predictor_service.contract import PREDICTOR_MODEL
from predictor_service.supervision import UNSERVING, describe_exit
from predictor_service.triton_server import TritonServer
from selector.client import make_route_request
from selector.config import SelectorConfig
from tests.support.selector_harness import PROMPTS, SelectorThread, rpc_error, wait_for


@pytest.fixture(scope="module")
def triton():
    server = TritonServer(models=(PREDICTOR_MODEL,))
    try:
        yield server.start()
    finally:
        server.stop()
        server.cleanup()


@pytest.mark.timeout(240)
def test_a_dead_stub_is_unavailable_not_serving_and_recovers(triton):
    selector = SelectorThread(SelectorConfig(triton_url=triton.grpc_url, metrics_port=0, health_poll_s=0.2))
    try:
        request = make_route_request(PROMPTS[0])
        assert selector.stub.Route(request, timeout=30).model
        stubs = stub_pids(triton.pid)
        assert len(stubs) == 1 and triton.exit_status() is None
        os.kill(next(iter(stubs)), signal.SIGKILL)
        assert wait_for(lambda: triton.exit_status() == UNSERVING)     # what supervision restarts on
        assert describe_exit(UNSERVING) == "running but unable to serve"

        error = rpc_error(selector.stub.Route, request)
        assert error.code() == grpc.StatusCode.UNAVAILABLE, error.details()
        assert "model process is down" in error.details()
        # The model still reads ready; the selector's readiness check scores a prompt to tell.
        assert wait_for(lambda: selector.health() == health_pb2.HealthCheckResponse.NOT_SERVING)
        assert rpc_error(selector.stub.Route, request).code() == grpc.StatusCode.UNAVAILABLE

        triton.restart()                  # what `routoo serve`'s supervisor does (tests/predictor_service)
        assert triton.exit_status() is None
        assert wait_for(lambda: selector.health() == health_pb2.HealthCheckResponse.SERVING)
        assert selector.stub.Route(request, timeout=30).model
    finally:
        selector.close()
