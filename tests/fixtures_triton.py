"""A real `tritonserver` for tests: import the fixture into a test module (`from tests.fixtures_triton import
triton_server`). Module-scoped: one start (~10 s on 2 cores) serves every test of the module; free loopback
ports; stopped and its run directory removed in teardown."""

import pytest

from predictor_service.triton_server import TritonServer


@pytest.fixture(scope="module")
def triton_server():
    with TritonServer() as server:
        yield server
