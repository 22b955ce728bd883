"""pytest-benchmark: what selector/replicas.py adds to each predictor call (pick the least-loaded replica,
count it in flight, record the outcome), timed against calling the replica directly.

    python -m pytest bench/test_micro_replicas.py --benchmark-only

The replicas here answer at once from memory (a stand-in for TritonScores, whose gRPC call takes ~0.8 ms),
so the difference between the two benchmarks is the replica set's own cost. Each round is 1,000 calls on
one event loop: divide the times by 1,000 for one call.
"""

import asyncio

import numpy as np
import pytest

from predictor_service.contract import TRITON_GRPC_PORT, ServedPool
from selector.replicas import ReplicaSet
from selector.targets import parse_targets

CALLS = 1_000
QUALITY = np.zeros((1, 32), dtype=np.float32)
COST = np.zeros((1, 32), dtype=np.float32)
POOL = ServedPool(names=tuple(f"m{i}" for i in range(32)), prices=(None,) * 32)


class InstantReplica:
    async def served_pool(self, *, timeout_s: float = 5.0) -> ServedPool:
        return POOL

    async def ready(self) -> bool:
        return True

    async def score(self, prompts, *, timeout_s):
        return QUALITY, COST

    async def close(self) -> None:
        pass


@pytest.fixture(scope="module")
def loop():
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


async def _calls(source) -> None:
    for _ in range(CALLS):
        await source.score(["a prompt"], timeout_s=1.0)


def test_direct_replica_1000_calls(benchmark, loop):
    replica = InstantReplica()
    benchmark(lambda: loop.run_until_complete(_calls(replica)))


@pytest.mark.parametrize("n_replicas", [2, 8])
def test_replica_set_1000_calls(benchmark, loop, n_replicas):
    targets = parse_targets(",".join(f"10.0.0.{i + 1}:{TRITON_GRPC_PORT}" for i in range(n_replicas)))
    # Maintenance far apart: the timing is the call path, not health checks.
    replicas = ReplicaSet(targets, lambda address: InstantReplica(), resolve_interval_s=600, health_interval_s=600,
                          backoff_min_s=600, backoff_max_s=600)
    loop.run_until_complete(replicas.served_pool())
    assert all(state["healthy"] for state in replicas.snapshot().values())
    benchmark(lambda: loop.run_until_complete(_calls(replicas)))
    loop.run_until_complete(replicas.close())
