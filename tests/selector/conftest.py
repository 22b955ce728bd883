"""Fixtures the selector's test modules share. The root conftest's tritonserver is module-scoped; here it is
one for the whole folder, because test_selector_server.py (the RPCs) and test_selector_lifecycle.py (start-up,
overload, the command line, Triton restarted) route through one selector over it, and every start costs ~10 s
on 2 cores. A test that stops or freezes Triton starts it again in a `finally`, on the same ports
(TritonServer.start keeps them on a restart), so the modules after it find it serving."""

import pytest

from selector.config import SelectorConfig
from tests.support.selector_harness import SelectorThread


@pytest.fixture(scope="package")
def triton_server():
    """A real `tritonserver` on free loopback ports, for every test module of tests/selector."""
    from predictor_service.triton_server import TritonServer

    with TritonServer() as server:
        yield server


@pytest.fixture(scope="package")
def selector(triton_server):
    """The real selector over `triton_server` with the default pool, its metrics on a free port.
    test_admission.py has a `selector` of its own (other limits), which wins there."""
    running = SelectorThread(SelectorConfig(port=0, triton_url=triton_server.grpc_url, metrics_port=0,
                                            health_poll_s=0.2))
    yield running
    running.close()
