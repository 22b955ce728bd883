"""Fixtures of the selector server's test modules, test_rpcs.py, test_route_stream.py and test_lifecycle.py:
one tritonserver and one selector over it for all three (package scope: this folder only); each
Triton start costs ~5-20 s on 2 busy cores. The rest of tests/selector keeps the root conftest's Triton,
one per module: with one Triton for the whole folder, test_admission.py's cancel test (SIGSTOP) or
test_replicas.py's rejoin share failed in each of 3 folder runs at load 6 (without it: 116 passed).
test_lifecycle.py's Triton-restart test starts it again on the same ports, so test_rpcs.py finds it up."""

import pytest

from selector.config import SelectorConfig
from tests.support.selector_harness import SelectorThread


@pytest.fixture(scope="package")
def triton_server():
    """A real `tritonserver` on free loopback ports, for both modules of this folder."""
    from predictor_service.triton_server import TritonServer

    with TritonServer() as server:
        yield server


@pytest.fixture(scope="package")
def selector(triton_server):
    """The real selector over `triton_server` with the default pool, its metrics on a free port."""
    running = SelectorThread(SelectorConfig(port=0, triton_url=triton_server.grpc_url, metrics_port=0,
                                            health_poll_s=0.2))
    yield running
    running.close()
