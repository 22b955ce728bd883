"""The fused kernels against their eager references: under TRITON_INTERPRET=1 on the CPU (set by
tests/conftest.py before `kernels` is imported), compiled with fp32/fp16/bf16 inputs where CUDA exists."""

import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import kernels
from kernels import (
    scoring_head, scoring_head_reference, static_embed, static_embed_reference, static_predictor,
    static_predictor_reference,
)
from kernels.cpu_static_predictor import FoldedStaticPredictor

from tests.support.kernel_cases import (BACKENDS, INV_TEMPERATURE, TOLERANCE, VOCAB, HAS_CUDA,
                                       NO_COMPILED_CUDA, NOT_INTERPRETED, assert_head_close, make_head_params,
                                       make_prompts, to_cpu)

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("device, dtype", BACKENDS)
@pytest.mark.parametrize("dim, hidden", [(256, 64), (384, 96), (384, 256), (300, 512)])
@pytest.mark.parametrize("n_models", [1, 3, 32, 33])
@pytest.mark.parametrize("batch", [1, 7, 129])
def test_scoring_head_matches_reference(batch, n_models, dim, hidden, device, dtype):
    x = torch.nn.functional.normalize(torch.randn(batch, dim), dim=1).to(device=device, dtype=dtype)
    head = make_head_params(dim, hidden, n_models, dtype, device)
    log_len = torch.log1p(4000 * torch.rand(batch)).to(device)

    got = scoring_head(x, **head, log_len=log_len, inv_temperature=INV_TEMPERATURE, impl="triton")
    want = scoring_head_reference(x.cpu(), **to_cpu(head), log_len=log_len.cpu(),
                                  inv_temperature=INV_TEMPERATURE)
    assert got[0].shape == got[1].shape == (batch, n_models)
    assert_head_close(got, want, dtype)


@pytest.mark.parametrize("device, dtype", BACKENDS)
@pytest.mark.parametrize("index_dtype", [torch.int32, torch.int64], ids=["int32", "int64"])
@pytest.mark.parametrize("dim", [256, 384])
@pytest.mark.parametrize("batch", [1, 7, 129])
def test_static_embed_matches_reference(batch, dim, index_dtype, device, dtype):
    token_ids, offsets, _ = make_prompts(batch, index_dtype, device)
    table = torch.randn(VOCAB, dim).to(device=device, dtype=dtype)

    got = static_embed(token_ids, offsets, table, impl="triton")
    want = static_embed_reference(token_ids.cpu(), offsets.cpu(), table.cpu())
    assert got.dtype == torch.float32 and got.shape == (batch, dim)
    torch.testing.assert_close(got.cpu(), want, rtol=0, atol=TOLERANCE[dtype])
    # Empty prompts are exactly zero (no NaN from 0/0); the rest are unit vectors.
    empty = (offsets[1:] == offsets[:-1]).cpu()
    assert (got.cpu()[empty] == 0).all()
    torch.testing.assert_close(got.cpu()[~empty].norm(dim=1), torch.ones(int((~empty).sum())))


@pytest.mark.skipif(not kernels.INTERPRET, reason=NOT_INTERPRETED)
@settings(max_examples=15, deadline=None)
@given(lengths=st.lists(st.integers(0, 40), min_size=1, max_size=12), dim=st.integers(1, 300),
       seed=st.integers(0, 2**31 - 1))
def test_static_embed_any_ragged_batch(lengths, dim, seed):
    """Any lengths and any dim (tails of every size): equal to the reference, each row unit norm or zero."""
    generator = torch.Generator().manual_seed(seed)
    offsets = torch.zeros(len(lengths) + 1, dtype=torch.int64)
    offsets[1:] = torch.tensor(lengths).cumsum(0)
    vocab = 97
    token_ids = torch.randint(0, vocab, (int(offsets[-1]),), generator=generator)
    table = torch.randn(vocab, dim, generator=generator)

    got = static_embed(token_ids, offsets, table, impl="triton")
    torch.testing.assert_close(got, static_embed_reference(token_ids, offsets, table), rtol=0,
                               atol=TOLERANCE[torch.float32])
    norms = got.norm(dim=1)
    assert torch.all((norms == 0) | ((norms - 1).abs() < 1e-5))
    assert torch.equal(norms == 0, torch.tensor(lengths) == 0)


@pytest.mark.parametrize("device, dtype", BACKENDS)
@pytest.mark.parametrize("dim, hidden", [(256, 64), (384, 96)])
@pytest.mark.parametrize("n_models", [1, 33])
@pytest.mark.parametrize("batch", [1, 7, 129])
def test_static_predictor_matches_reference(batch, n_models, dim, hidden, device, dtype):
    token_ids, offsets, log_len = make_prompts(batch, torch.int32, device)
    table = (0.1 * torch.randn(VOCAB, dim)).to(device=device, dtype=dtype)
    head = make_head_params(dim, hidden, n_models, dtype, device)

    got = static_predictor(token_ids, offsets, table, log_len, **head, inv_temperature=INV_TEMPERATURE,
                           impl="triton")
    want = static_predictor_reference(token_ids.cpu(), offsets.cpu(), table.cpu(), log_len.cpu(),
                                      **to_cpu(head), inv_temperature=INV_TEMPERATURE)
    assert got[0].shape == got[1].shape == (batch, n_models)
    assert_head_close(got, want, dtype)


@pytest.mark.parametrize("dim, hidden", [(256, 64), (256, 256), (384, 96)])
@pytest.mark.parametrize("n_models", [1, 33])
@pytest.mark.parametrize("batch", [1, 7, 129])
def test_folded_cpu_predictor_matches_reference(batch, n_models, dim, hidden):
    """The CPU serving path (the compiled loop, over an fp32 table here) against the same reference; empty and
    one-token prompts included."""
    token_ids, offsets, log_len = make_prompts(batch)
    table = 0.1 * torch.randn(VOCAB, dim)
    head = make_head_params(dim, hidden, n_models)
    got = FoldedStaticPredictor(table, **head, inv_temperature=INV_TEMPERATURE)(token_ids, offsets, log_len)
    want = static_predictor_reference(token_ids, offsets, table, log_len, **head,
                                      inv_temperature=INV_TEMPERATURE)
    assert got[0].shape == got[1].shape == (batch, n_models)
    assert_head_close(got, want, torch.float32)


def _call_args(op, device="cpu", dtype=torch.float32):
    """Positional/keyword arguments for a small valid call of `op`."""
    token_ids, offsets, log_len = make_prompts(5, torch.int64, device)
    table = torch.randn(VOCAB, 256).to(device=device, dtype=dtype)
    head = make_head_params(256, 64, 3, dtype, device)
    if op == "scoring_head":
        x = torch.randn(5, 256).to(device=device, dtype=dtype)
        return (x,), dict(**head, log_len=log_len, inv_temperature=1.0)
    if op == "static_embed":
        return (token_ids, offsets, table), {}
    return (token_ids, offsets, table, log_len), dict(**head, inv_temperature=1.0)


@pytest.mark.parametrize("op", ["scoring_head", "static_embed", "static_predictor"])
def test_dispatch_picks_reference_for_cpu_tensors(op, monkeypatch):
    # importlib, not `import kernels.<op>`: the package re-exports each op function under its module's name.
    module = importlib.import_module(f"kernels.{op}")
    calls = []
    monkeypatch.setattr(module, f"{op}_forward", lambda *a: calls.append("triton"))
    monkeypatch.setattr(module, f"{op}_reference", lambda *a: calls.append("reference"))
    args, kwargs = _call_args(op)
    dispatcher = getattr(module, op)

    dispatcher(*args, **kwargs, impl="auto")
    dispatcher(*args, **kwargs, impl="reference")
    assert calls == ["reference", "reference"]
    if kernels.INTERPRET:
        dispatcher(*args, **kwargs, impl="triton")
        assert calls[-1] == "triton"
    else:
        with pytest.raises(ValueError, match="needs CUDA tensors"):
            dispatcher(*args, **kwargs, impl="triton")


@pytest.mark.skipif(not HAS_CUDA or kernels.INTERPRET, reason=NO_COMPILED_CUDA)
@pytest.mark.parametrize("op", ["scoring_head", "static_embed", "static_predictor"])
def test_dispatch_picks_kernel_for_cuda_tensors(op, monkeypatch):
    module = importlib.import_module(f"kernels.{op}")
    calls = []
    monkeypatch.setattr(module, f"{op}_forward", lambda *a: calls.append("triton"))
    monkeypatch.setattr(module, f"{op}_reference", lambda *a: calls.append("reference"))
    args, kwargs = _call_args(op, "cuda")
    getattr(module, op)(*args, **kwargs, impl="auto")
    args, kwargs = _call_args(op, "cuda", torch.float64)  # no float64 tl.dot: back to the reference
    getattr(module, op)(*args, **kwargs, impl="auto")
    assert calls == ["triton", "reference"]


def test_a_kernel_that_does_not_fit_the_gpu_falls_back_to_the_reference_under_auto():
    """triton raises OutOfResources at a kernel's first launch when it needs more shared memory than the GPU
    has; under impl="auto" that shape runs on the reference from then on, under "triton" it is an error."""
    from triton.runtime.errors import OutOfResources

    from kernels._triton_utils import run_kernel_or_reference
    launches = []

    def too_big(x):
        launches.append(x)
        raise OutOfResources(270_336, 232_448, "shared memory")

    key = ("test-shape", len(launches))
    assert run_kernel_or_reference("op", "auto", "triton", key, too_big, lambda x: x + 1, 1) == 2
    assert run_kernel_or_reference("op", "auto", "triton", key, too_big, lambda x: x + 1, 2) == 3
    assert launches == [1]                              # the second call went straight to the reference
    with pytest.raises(OutOfResources):
        run_kernel_or_reference("op", "triton", "triton", key, too_big, lambda x: x + 1, 3)
    with pytest.raises(ZeroDivisionError):              # any other failure is the kernel's own
        run_kernel_or_reference("op", "auto", "triton", ("other",), lambda x: 1 / 0, lambda x: x, 4)


def _replace(op, name, value):
    """A valid call of `op` with one argument replaced (or transformed, if `value` is callable)."""
    args, kwargs = _call_args(op)
    names = {"scoring_head": ["x"], "static_embed": ["token_ids", "offsets", "table"],
             "static_predictor": ["token_ids", "offsets", "table", "log_len"]}[op]
    args = dict(zip(names, args))
    bucket = args if name in args else kwargs
    bucket[name] = value(bucket[name]) if callable(value) else value
    return [args[n] for n in names], kwargs


def _swap_two_offsets(offsets):
    bad = offsets.clone()
    bad[1], bad[2] = offsets[2] + 1, offsets[1]
    return bad


BAD_INPUTS = [
    ("scoring_head", "w1", lambda w: w[:200], "w1 has shape"),
    ("scoring_head", "quality_bias", lambda b: b[:2], "quality_bias has shape"),
    ("scoring_head", "log_len", lambda t: t[:4], "log_len has shape"),
    ("scoring_head", "x", lambda x: x.long(), "x has dtype"),
    ("scoring_head", "x", lambda x: x.half(), "w1 dtype"),
    ("scoring_head", "cost_emb", lambda e: e.double(), "cost_emb dtype"),
    ("static_embed", "offsets", _swap_two_offsets, "non-decreasing"),
    ("static_embed", "offsets", lambda o: o[:-1], "offsets must run from 0"),
    ("static_embed", "token_ids", lambda t: t.float(), "token_ids has dtype"),
    ("static_embed", "token_ids", lambda t: t + VOCAB, r"token_ids must lie in \[0, 30522\)"),
    ("static_embed", "table", lambda t: t[0], "table has shape"),
    ("static_predictor", "offsets", _swap_two_offsets, "non-decreasing"),
    ("static_predictor", "w1", lambda w: w[:128], "w1 has shape"),
    ("static_predictor", "log_len", lambda t: t[:1], "log_len has shape"),
    ("static_predictor", "cost_len_coef", lambda c: c.int(), "cost_len_coef has dtype"),
]


@pytest.mark.parametrize("op, name, value, message", BAD_INPUTS,
                         ids=[f"{op}-{name}-{i}" for i, (op, name, _, _) in enumerate(BAD_INPUTS)])
def test_bad_inputs_raise_value_error(op, name, value, message):
    args, kwargs = _replace(op, name, value)
    with pytest.raises(ValueError, match=message):
        getattr(kernels, op)(*args, **kwargs)


@pytest.mark.parametrize("op", ["scoring_head", "static_embed", "static_predictor"])
def test_bad_impl_raises_value_error(op):
    args, kwargs = _call_args(op)
    with pytest.raises(ValueError, match=r"impl='cuda' is not one of"):
        getattr(kernels, op)(*args, **kwargs, impl="cuda")
    args, kwargs = _call_args(op, dtype=torch.float64)
    # float64 is fine for the reference but has no kernel; the message says which capability is missing.
    with pytest.raises(ValueError, match="does not support dtype torch.float64" if kernels.INTERPRET
                       else "needs CUDA tensors"):
        getattr(kernels, op)(*args, **kwargs, impl="triton")


def test_gpu_check_skips_cleanly_without_cuda(tmp_path):
    out = tmp_path / "gpu_check.json"
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}  # also forces the skip path on a GPU machine
    proc = subprocess.run([sys.executable, "-m", "bench.gpu_check", "--out", str(out)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "no CUDA device; skipping" in proc.stdout
    assert not out.exists()
