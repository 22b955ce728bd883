"""Fused scoring head: prompt embedding -> (quality, expected_cost_usd) for every model, one launch.

    h = relu(x @ w1 + b1)                                                          # (batch, hidden)
    quality = sigmoid((h @ quality_emb.T + quality_bias) * inv_temperature [+ quality_offset])  # (batch, n_models)
    expected_cost_usd = exp(h @ cost_emb.T + cost_bias + log_len[:, None] * cost_len_coef)

quality_offset (batch, n_models), optional: logits added after the temperature (the lexical part's,
kernels/lexical_logits.py).

The hidden layer never reaches global memory: each program keeps its rows' h in registers and feeds both
heads from there, so a call reads x once and writes only the two (batch, n_models) outputs.
"""

import torch

from ._triton_utils import check_tensor, next_power_of_2, on_device, resolve_impl, run_kernel_or_reference, tl, triton

# Limits of the register-resident design: h is (BLOCK_B, next_pow2(hidden)) and each head's embedding
# tile is (next_pow2(n_models), next_pow2(hidden)); past these the kernel would spill, so "auto" uses the
# reference.
MAX_HIDDEN = 1024
MAX_MODELS = 128
# fp32 elements of the h accumulator per program (64 KB): 64 rows at hidden 256, 16 rows at hidden 1024.
_ACC_ELEMENTS = 16384


@triton.jit
def _head_epilogue(acc_h, rows, row_mask, b1_ptr, quality_emb_ptr, quality_bias_ptr, cost_emb_ptr,
                   cost_bias_ptr, cost_len_coef_ptr, log_len_ptr, quality_offset_ptr, quality_ptr, cost_ptr,
                   H, M, inv_temperature,
                   BLOCK_H: tl.constexpr, BLOCK_M: tl.constexpr, HAS_OFFSET: tl.constexpr):
    """From the pre-activation x @ w1 of a block of rows (fp32, in registers) to both stored outputs."""
    hid = tl.arange(0, BLOCK_H)
    hid_mask = hid < H
    models = tl.arange(0, BLOCK_M)
    model_mask = models < M

    b1 = tl.load(b1_ptr + hid, mask=hid_mask, other=0.0).to(tl.float32)
    # Padded hidden units have zero pre-activation and zero bias, so relu leaves them 0 and they add
    # nothing to the head dots below.
    h = tl.maximum(acc_h + b1[None, :], 0.0)  # (BLOCK_B, BLOCK_H)

    emb_offsets = models[:, None] * H + hid[None, :]  # (BLOCK_M, BLOCK_H)
    emb_mask = model_mask[:, None] & hid_mask[None, :]
    quality_emb = tl.load(quality_emb_ptr + emb_offsets, mask=emb_mask, other=0.0)
    cost_emb = tl.load(cost_emb_ptr + emb_offsets, mask=emb_mask, other=0.0)
    # Half-precision weights run the head on tensor cores with fp32 accumulation; that rounds h to the
    # weight dtype, which the test tolerances account for. fp32 stays exact ("ieee", not tf32).
    h_op = h.to(quality_emb.dtype)
    quality_logit = tl.dot(h_op, tl.trans(quality_emb), input_precision="ieee")  # (BLOCK_B, BLOCK_M)
    cost_logit = tl.dot(h_op, tl.trans(cost_emb), input_precision="ieee")

    quality_bias = tl.load(quality_bias_ptr + models, mask=model_mask, other=0.0).to(tl.float32)
    cost_bias = tl.load(cost_bias_ptr + models, mask=model_mask, other=0.0).to(tl.float32)
    cost_len_coef = tl.load(cost_len_coef_ptr + models, mask=model_mask, other=0.0).to(tl.float32)
    log_len = tl.load(log_len_ptr + rows, mask=row_mask, other=0.0).to(tl.float32)

    out_offsets = rows[:, None] * M + models[None, :]
    out_mask = row_mask[:, None] & model_mask[None, :]
    quality_logit = (quality_logit + quality_bias[None, :]) * inv_temperature
    if HAS_OFFSET:
        quality_logit += tl.load(quality_offset_ptr + out_offsets, mask=out_mask, other=0.0).to(tl.float32)
    quality = tl.sigmoid(quality_logit)
    expected_cost = tl.exp(cost_logit + cost_bias[None, :] + log_len[:, None] * cost_len_coef[None, :])

    tl.store(quality_ptr + out_offsets, quality, mask=out_mask)
    tl.store(cost_ptr + out_offsets, expected_cost, mask=out_mask)


@triton.jit
def _scoring_head_kernel(x_ptr, w1_ptr, b1_ptr, quality_emb_ptr, quality_bias_ptr, cost_emb_ptr,
                         cost_bias_ptr, cost_len_coef_ptr, log_len_ptr, quality_offset_ptr, quality_ptr, cost_ptr,
                         B, D, H, M, inv_temperature,
                         BLOCK_B: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_H: tl.constexpr,
                         BLOCK_M: tl.constexpr, HAS_OFFSET: tl.constexpr):
    pid = tl.program_id(0)
    # int64 rows so that row * D cannot overflow int32 for very large batches; the cast costs nothing.
    rows = (pid * BLOCK_B + tl.arange(0, BLOCK_B)).to(tl.int64)
    row_mask = rows < B
    hid = tl.arange(0, BLOCK_H)
    hid_mask = hid < H

    acc_h = tl.zeros((BLOCK_B, BLOCK_H), dtype=tl.float32)
    for d0 in range(0, D, BLOCK_D):
        dims = d0 + tl.arange(0, BLOCK_D)
        dim_mask = dims < D
        x = tl.load(x_ptr + rows[:, None] * D + dims[None, :],
                    mask=row_mask[:, None] & dim_mask[None, :], other=0.0)  # (BLOCK_B, BLOCK_D)
        w1 = tl.load(w1_ptr + dims[:, None] * H + hid[None, :],
                     mask=dim_mask[:, None] & hid_mask[None, :], other=0.0)  # (BLOCK_D, BLOCK_H)
        acc_h = tl.dot(x, w1, acc_h, input_precision="ieee")

    _head_epilogue(acc_h, rows, row_mask, b1_ptr, quality_emb_ptr, quality_bias_ptr, cost_emb_ptr,
                   cost_bias_ptr, cost_len_coef_ptr, log_len_ptr, quality_offset_ptr, quality_ptr, cost_ptr,
                   H, M, inv_temperature, BLOCK_H, BLOCK_M, HAS_OFFSET)


def head_block_sizes(batch: int, hidden: int, n_models: int) -> dict:
    """Block sizes shared by every kernel that ends in the head. tl.dot needs each extent >= 16."""
    block_h = max(16, next_power_of_2(hidden))
    block_m = max(16, next_power_of_2(n_models))
    block_b = max(16, min(64, _ACC_ELEMENTS // block_h, next_power_of_2(batch)))
    return dict(BLOCK_B=block_b, BLOCK_H=block_h, BLOCK_M=block_m,
                num_warps=8 if block_b * block_h >= _ACC_ELEMENTS else 4)


def scoring_head_forward(x, w1, b1, quality_emb, quality_bias, cost_emb, cost_bias, cost_len_coef,
                         log_len, inv_temperature: float, quality_offset=None):
    """Launch the fused kernel on validated inputs; returns fp32 (quality, expected_cost_usd)."""
    batch, dim = x.shape
    hidden, n_models = w1.shape[1], quality_emb.shape[0]
    quality = torch.empty((batch, n_models), device=x.device, dtype=torch.float32)
    expected_cost_usd = torch.empty_like(quality)
    if batch == 0:
        return quality, expected_cost_usd
    blocks = head_block_sizes(batch, hidden, n_models)
    # 64-wide slices of D keep the x and w1 tiles small; 256 and 384 split without a tail.
    block_d = max(16, min(64, next_power_of_2(dim)))
    grid = (triton.cdiv(batch, blocks["BLOCK_B"]),)
    with on_device(x.device):
        _scoring_head_kernel[grid](
            x.contiguous(), w1.contiguous(), b1.contiguous(), quality_emb.contiguous(),
            quality_bias.contiguous(), cost_emb.contiguous(), cost_bias.contiguous(),
            cost_len_coef.contiguous(), log_len.contiguous(),
            quality if quality_offset is None else quality_offset.contiguous(), quality, expected_cost_usd,
            batch, dim, hidden, n_models, float(inv_temperature), BLOCK_D=block_d,
            HAS_OFFSET=quality_offset is not None, **blocks,
        )
    return quality, expected_cost_usd


def scoring_head_reference(x, w1, b1, quality_emb, quality_bias, cost_emb, cost_bias, cost_len_coef,
                           log_len, inv_temperature: float, quality_offset=None):
    """Eager PyTorch, every input upcast to fp32: the contract the kernel is tested against.

    addmm and in-place epilogues because this is also the minilm head's CPU serving path: 7 ops instead of
    14 take a batch-1 call from ~75 to ~35 us on 2 cores.
    """
    h = torch.addmm(b1.float(), x.float(), w1.float()).relu_()  # (batch, hidden)
    quality = torch.addmm(quality_bias.float(), h, quality_emb.float().T).mul_(inv_temperature)
    if quality_offset is not None:
        quality.add_(quality_offset.float())
    quality.sigmoid_()
    log_cost = torch.addmm(cost_bias.float(), h, cost_emb.float().T)
    expected_cost_usd = log_cost.addcmul_(log_len.float()[:, None], cost_len_coef.float()[None, :]).exp_()
    return quality, expected_cost_usd  # (batch, n_models) each


def check_head_inputs(op: str, batch: int, dim: int, device, w1, b1, quality_emb, quality_bias,
                      cost_emb, cost_bias, cost_len_coef, log_len) -> None:
    """ValueError naming the first head input whose shape, dtype or device is wrong."""
    check_tensor(op, "w1", w1, (dim, None), "float", device)
    hidden = w1.shape[1]
    check_tensor(op, "b1", b1, (hidden,), "float", device)
    check_tensor(op, "quality_emb", quality_emb, (None, hidden), "float", device)
    n_models = quality_emb.shape[0]
    check_tensor(op, "quality_bias", quality_bias, (n_models,), "float", device)
    check_tensor(op, "cost_emb", cost_emb, (n_models, hidden), "float", device)
    check_tensor(op, "cost_bias", cost_bias, (n_models,), "float", device)
    check_tensor(op, "cost_len_coef", cost_len_coef, (n_models,), "float", device)
    check_tensor(op, "log_len", log_len, (batch,), "float", device)
    # Both heads' dots take h in the embedding dtype, so the two embeddings must agree.
    if cost_emb.dtype != quality_emb.dtype:
        raise ValueError(f"{op}: cost_emb dtype {cost_emb.dtype} differs from quality_emb dtype "
                         f"{quality_emb.dtype}")


def head_shape_ok(hidden: int, n_models: int) -> tuple:
    if hidden > MAX_HIDDEN or n_models > MAX_MODELS:
        return False, (f"supports hidden <= {MAX_HIDDEN} and n_models <= {MAX_MODELS}, "
                       f"got hidden={hidden}, n_models={n_models}")
    return True, ""


def scoring_head(x, w1, b1, quality_emb, quality_bias, cost_emb, cost_bias, cost_len_coef, log_len,
                 inv_temperature: float, impl: str = "auto"):
    """(quality, expected_cost_usd), each (batch, n_models) fp32; see the module docstring.

    impl: "auto" (the kernel for CUDA tensors it supports, else the reference), "triton" or "reference".
    Raises ValueError for inputs of the wrong shape, dtype or device.
    """
    op = "scoring_head"
    check_tensor(op, "x", x, (None, None), "float")
    batch, dim = x.shape
    check_head_inputs(op, batch, dim, x.device, w1, b1, quality_emb, quality_bias, cost_emb, cost_bias,
                      cost_len_coef, log_len)
    if w1.dtype != x.dtype:
        raise ValueError(f"{op}: w1 dtype {w1.dtype} differs from x dtype {x.dtype}; x @ w1 needs one dtype")
    shape_ok, reason = head_shape_ok(w1.shape[1], quality_emb.shape[0])
    chosen = resolve_impl(op, impl, x.device, (x.dtype, quality_emb.dtype), shape_ok, reason)
    key = (w1.shape[1], quality_emb.shape[0], x.dtype, quality_emb.dtype)
    return run_kernel_or_reference(op, impl, chosen, key, scoring_head_forward, scoring_head_reference, x, w1, b1,
                                   quality_emb, quality_bias, cost_emb, cost_bias, cost_len_coef, log_len,
                                   inv_temperature)


__all__ = ["scoring_head", "scoring_head_forward", "scoring_head_reference"]
