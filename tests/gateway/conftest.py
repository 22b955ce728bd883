"""Fixtures the gateway's end-to-end modules share: one tritonserver and one stack (fake upstreams, selector,
gateway) for the whole folder, not one per module. test_gateway_routing.py, test_gateway_streaming.py and
test_gateway_errors.py were one module with one start of each; split, they would start Triton three times
(~10-20 s each on 2 cores). Tests that stop an upstream or the selector start it again before they end,
and `fresh` resets every upstream's mode and log around each test."""

import os

import pytest

from selector.pool import Pool, load_pool, pool_toml
from tests.support.gateway_stack import CLIENT_KEY, CLIENT_KEY_ENV, Stack, upstream_key
from tests.support.upstreams import FakeUpstream


@pytest.fixture(scope="package")
def triton_server():
    """A real `tritonserver` on free loopback ports, for every test module of tests/gateway."""
    from predictor_service.triton_server import TritonServer

    with TritonServer() as server:
        yield server


@pytest.fixture(scope="package")
def stack(triton_server, tmp_path_factory):
    """The default pool's models, each with a fake upstream of its own and its key in the environment."""
    base = load_pool()
    upstreams = {m.name: FakeUpstream(m.name) for m in base.models}
    models = []
    for i, m in enumerate(base.models):
        os.environ[f"ROUTOO_TEST_UPSTREAM_KEY_{i}"] = upstream_key(i)
        models.append(type(m)(m.name, m.input_usd_per_mtok, m.output_usd_per_mtok, m.p95_latency_ms, m.enabled,
                              base_url=upstreams[m.name].base_url, upstream_model=f"upstream-model-{i}",
                              api_key_env=f"ROUTOO_TEST_UPSTREAM_KEY_{i}"))
    os.environ[CLIENT_KEY_ENV] = CLIENT_KEY
    pool = Pool(tuple(models))
    pool_path = tmp_path_factory.mktemp("gateway") / "pool.toml"
    pool_path.write_text(pool_toml(pool), encoding="utf-8")
    running = Stack(triton_server.grpc_url, pool_path, pool, upstreams)
    yield running
    running.close()


@pytest.fixture
def fresh(stack):
    """The shared stack with every upstream answering normally and nothing received, before and after."""
    stack.reset()
    yield stack
    stack.reset()
