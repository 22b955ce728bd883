"""Cases the kernel tests share (tests/kernels/): backends, tolerances, random heads and ragged prompts."""

import pytest
import torch

import kernels

# Largest error allowed, per input dtype: absolute on quality and on the unit-norm embeddings, relative on
# expected_cost_usd (it spans 1e-6..1 USD). A logit error e moves quality by <= e/4 and cost by ~e, so one
# number serves all three. fp32: seen <= 1.1e-6. Half dtypes: the kernels round h (and the pooled
# embedding) to the input dtype for tensor-core dots; emulating exactly that rounding on the CPU at
# batch 129, dim 384, hidden 256, 33 models gave worst errors 5e-4 (fp16) and 4e-3 (bf16).
TOLERANCE = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}

VOCAB = 30522  # bert-base-uncased, the static encoder's tokenizer
PROMPT_LENGTHS = (200, 0, 3, 1)  # cycled then shuffled: long, empty and tiny prompts in one batch
INV_TEMPERATURE = 1.5

HAS_CUDA = torch.cuda.is_available()
NOT_INTERPRETED = "kernels were compiled: TRITON_INTERPRET=1 must be set before `kernels` is imported"
NO_COMPILED_CUDA = "needs a CUDA device and compiled (not interpreted) kernels"
BACKENDS = [
    pytest.param("cpu", torch.float32, id="interpret-fp32",
                 marks=pytest.mark.skipif(not kernels.INTERPRET, reason=NOT_INTERPRETED)),
    *[pytest.param("cuda", dtype, id=f"cuda-{name}",
                   marks=pytest.mark.skipif(not HAS_CUDA or kernels.INTERPRET, reason=NO_COMPILED_CUDA))
      for name, dtype in (("fp32", torch.float32), ("fp16", torch.float16), ("bf16", torch.bfloat16))],
]


def make_head_params(dim, hidden, n_models, dtype=torch.float32, device="cpu"):
    """Scales that give trained-looking outputs: quality across (0, 1), expected cost 1e-6..1 USD."""
    params = dict(
        w1=torch.randn(dim, hidden),
        b1=0.1 * torch.randn(hidden),
        quality_emb=1.5 * torch.randn(n_models, hidden) / hidden ** 0.5,
        quality_bias=0.5 * torch.randn(n_models),
        cost_emb=0.5 * torch.randn(n_models, hidden) / hidden ** 0.5,
        cost_bias=-9.0 - 4.0 * torch.rand(n_models),
        cost_len_coef=0.5 + 0.5 * torch.rand(n_models),
    )
    return {name: t.to(device=device, dtype=dtype) for name, t in params.items()}


def make_prompts(batch, index_dtype=torch.int64, device="cpu"):
    """Ragged token ids + offsets + log_len for `batch` prompts of PROMPT_LENGTHS, mixed."""
    lengths = torch.tensor(PROMPT_LENGTHS).repeat(batch // len(PROMPT_LENGTHS) + 1)[:batch]
    lengths = lengths[torch.randperm(batch)]
    offsets = torch.zeros(batch + 1, dtype=torch.int64)
    offsets[1:] = lengths.cumsum(0)
    token_ids = torch.randint(0, VOCAB, (int(offsets[-1]),))
    log_len = torch.log1p(4.5 * lengths.float())  # ~4.5 characters per token
    return (token_ids.to(device=device, dtype=index_dtype), offsets.to(device=device, dtype=index_dtype),
            log_len.to(device))


def to_cpu(tensors: dict) -> dict:
    return {name: t.cpu() for name, t in tensors.items()}


def assert_head_close(got, want, dtype):
    (quality, cost), (want_quality, want_cost) = got, want
    assert quality.dtype == cost.dtype == torch.float32
    assert torch.isfinite(quality).all() and torch.isfinite(cost).all()
    tol = TOLERANCE[dtype]
    torch.testing.assert_close(quality.cpu(), want_quality, rtol=0, atol=tol)
    torch.testing.assert_close(cost.cpu(), want_cost, rtol=tol, atol=0)
