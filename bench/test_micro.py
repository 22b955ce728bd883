"""pytest-benchmark micro-benchmarks: the pieces one routed prompt is made of, timed alone.

    python -m pytest bench/ --benchmark-only                     # ~1-2 min on 2 cores
    python -m pytest bench/ --benchmark-only --benchmark-json=bench/results/micro.json

Not part of the test suite (its testpaths are tests/ only): these time, they do not pass or fail. Inputs are
real: the committed static artifact's weights and MMLU-Pro dev prompts (synthetic prompts without the data).

- scoring head: the PyTorch reference on the CPU at batch 1/64/1024; the fused Triton kernel where a CUDA
  device is present (skipped otherwise);
- static encoder: tokenise (the Rust tokenizer) and tokenise + gather/mean/normalise, 1 and 64 prompts;
- the in-process predictor end to end (Predictor.predict), 1 and 64 prompts;
- the RouteBatch solver (selector.budget.assign_budget), 10,000 prompts x 32 models at three budgets,
  and the per-prompt policy (TradeoffPolicy.choose) over the same 10,000 rows;
- Route's one-prompt decision (constraints, then the policy's ranking, as SelectorService._route makes it
  below batch_decide_min_rows) for each policy, with and without constraints.
"""

import numpy as np
import pytest
import torch

from kernels import HAS_TRITON, INTERPRET, scoring_head_forward, scoring_head_reference
from predictor_service.artifact import default_artifact_path
from predictor_service.head import log_lengths
from predictor_service.predictor import Predictor

CUDA_KERNEL = torch.cuda.is_available() and HAS_TRITON and not INTERPRET


@pytest.fixture(scope="module")
def predictor():
    return Predictor.load(default_artifact_path(), device="cpu")


@pytest.fixture(scope="module")
def prompts():
    from bench.inputs import load_prompts

    return load_prompts(None, limit=2000)


def head_inputs(predictor, batch, device="cpu"):
    weights = {k: v.to(device) for k, v in predictor.weights.as_dict().items()}
    x = torch.nn.functional.normalize(torch.randn(batch, weights["w1"].shape[0]), dim=1).to(device)
    log_len = torch.log1p(torch.full((batch,), 600.0)).to(device)
    return x, weights, log_len


@pytest.mark.parametrize("batch", [1, 64, 1024])
def test_scoring_head_reference(benchmark, predictor, batch):
    x, weights, log_len = head_inputs(predictor, batch)
    with torch.inference_mode():
        quality, _ = benchmark(scoring_head_reference, x, *weights.values(), log_len, predictor.inv_temperature)
    assert quality.shape == (batch, len(predictor.model_names))


@pytest.mark.skipif(not CUDA_KERNEL, reason="the fused kernel needs a CUDA device (compiled, not interpreted)")
@pytest.mark.parametrize("batch", [1, 64, 1024, 65536])
def test_scoring_head_triton_kernel(benchmark, predictor, batch):
    x, weights, log_len = head_inputs(predictor, batch, device="cuda")

    def run():
        out = scoring_head_forward(x, *weights.values(), log_len, predictor.inv_temperature)
        torch.cuda.synchronize()
        return out

    quality, _ = benchmark(run)
    want, _ = scoring_head_reference(x, *weights.values(), log_len, predictor.inv_temperature)
    torch.testing.assert_close(quality, want, rtol=0, atol=1e-5)


@pytest.mark.parametrize("batch", [1, 64])
def test_static_tokenize(benchmark, predictor, prompts, batch):
    texts = prompts[:batch]
    tokens = benchmark(predictor.encoder.tokenize, texts)
    assert tokens.offsets.shape == (batch + 1,)


@pytest.mark.parametrize("batch", [1, 64])
def test_static_encoder(benchmark, predictor, prompts, batch):
    texts = prompts[:batch]
    embedding = benchmark(predictor.encoder.encode, texts)
    assert embedding.shape == (batch, predictor.encoder.dim)


@pytest.mark.parametrize("batch", [1, 64])
def test_in_process_predict(benchmark, predictor, prompts, batch):
    texts = prompts[:batch]
    quality, cost = benchmark(predictor.predict, texts)
    assert quality.shape == cost.shape == (batch, len(predictor.model_names))


def test_log_lengths(benchmark, prompts):
    benchmark(log_lengths, prompts[:64])


@pytest.fixture(scope="module")
def route_batch(prompts):
    from bench.run import route_batch_case

    return route_batch_case(10_000, prompts)


@pytest.mark.parametrize("budget_share", [0.2, 0.5, 0.8])
def test_route_batch_solver_10k_prompts_x_32_models(benchmark, route_batch, budget_share):
    from selector.budget import assign_budget

    quality, cost, eligible, _ = route_batch
    rows = np.arange(len(quality))
    cheapest, best = cost.min(axis=1).sum(), cost[rows, quality.argmax(axis=1)].sum()
    budget = float(cheapest + budget_share * (best - cheapest))
    result = benchmark(assign_budget, quality, cost, eligible, budget)
    assert result.total_cost_usd <= budget


def test_route_policy_choose_10k_prompts(benchmark, route_batch):
    from selector.policies import TradeoffPolicy

    quality, cost, eligible, _ = route_batch
    choice = benchmark(TradeoffPolicy(100.0).choose, quality, cost, eligible)
    assert choice.shape == (len(quality),)


@pytest.mark.parametrize("path", ["python", "batch_of_one"])
@pytest.mark.parametrize("constrained", [False, True], ids=["no_constraints", "deny_and_max_cost"])
@pytest.mark.parametrize("policy_name", ["tradeoff", "quality_target", "cost_cap"])
def test_route_one_prompt_decision_x64(benchmark, route_batch, policy_name, constrained, path):
    """64 prompts decided one at a time over the 32-model pool (divide by 64 for one decision): Route's
    plain-Python path (exclusions_one, rank), or the array path (rank_rows) on a batch of one row."""
    from selector.constraints import ELIGIBLE, Constraints
    from selector.policies import make_policy, rank_rows
    from selector.pool import DEFAULT_POOL_PATH, load_pool

    quality, cost, _, _ = route_batch
    pool = load_pool(DEFAULT_POOL_PATH)
    median_cost = float(np.median(cost))
    policy = make_policy(policy_name, {"tradeoff": 100.0, "quality_target": 0.6, "cost_cap": median_cost}[policy_name])
    constraints = Constraints(deny=(pool.names[0],), max_cost_usd=2 * median_cost) if constrained else Constraints()
    rows = [(quality[i], cost[i], quality[i].tolist(), cost[i].tolist()) for i in range(64)]

    def one_at_a_time():
        rankings = []
        for _, cost_row, q, c in rows:
            codes = constraints.exclusions_one(pool, cost_row)
            rankings.append(policy.rank(q, c, [j for j, code in enumerate(codes) if code == ELIGIBLE]))
        return rankings

    def batches_of_one():
        return [rank_rows(policy, constraints, pool, q_row[None, :], c_row[None, :])[1][0]
                for q_row, c_row, _, _ in rows]

    rankings = benchmark(one_at_a_time if path == "python" else batches_of_one)
    assert all(ranking for ranking in rankings)
