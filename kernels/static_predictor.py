"""Token ids -> (quality, expected_cost_usd) in one launch: static_embed then scoring_head, fused.

    x = static_embed(token_ids, offsets, table)                                   # (batch, dim)
    quality, expected_cost_usd = scoring_head(x, w1, ..., log_len, inv_temperature)   # (batch, n_models)

Neither the embedding nor the hidden layer reaches global memory. Normalisation is linear, so the kernel
pools each 64-wide slice of the embedding, feeds it straight into x @ w1 and divides the (batch, hidden)
pre-activation by the embedding norm at the end: (m / |m|) @ w1 == (m @ w1) / |m|.
"""

import torch

from ._triton_utils import (INTERPRETER_TILE_SCALE, check_tensor, next_power_of_2, on_device, resolve_impl,
                            run_kernel_or_reference, tl, triton)
from .scoring_head import (
    _head_epilogue, check_head_inputs, head_block_sizes, head_shape_ok, scoring_head_reference,
)
from .static_embed import NORM_EPS, check_token_inputs, static_embed_reference

# fp32 elements of the (rows, tokens, dims) gather tile per program: 4 tokens for 32 rows x 64 dims.
_GATHER_ELEMENTS = 8192


@triton.jit
def _static_predictor_kernel(token_ids_ptr, offsets_ptr, table_ptr, w1_ptr, b1_ptr, quality_emb_ptr,
                             quality_bias_ptr, cost_emb_ptr, cost_bias_ptr, cost_len_coef_ptr,
                             log_len_ptr, quality_offset_ptr, quality_ptr, cost_ptr,
                             B, D, H, M, inv_temperature,
                             EPS: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_T: tl.constexpr,
                             BLOCK_D: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_M: tl.constexpr,
                             HAS_OFFSET: tl.constexpr):
    pid = tl.program_id(0)
    rows = (pid * BLOCK_B + tl.arange(0, BLOCK_B)).to(tl.int64)
    row_mask = rows < B
    start = tl.load(offsets_ptr + rows, mask=row_mask, other=0).to(tl.int64)
    n_tokens = tl.load(offsets_ptr + rows + 1, mask=row_mask, other=0).to(tl.int64) - start
    # Rows of a block share the token loop, so it runs to the longest prompt and masks the rest: callers
    # that sort prompts by length waste less.
    longest = tl.max(n_tokens, axis=0)
    inv_count = 1.0 / tl.maximum(n_tokens.to(tl.float32), 1.0)  # (BLOCK_B,); empty prompts pool to 0
    hid = tl.arange(0, BLOCK_H)
    hid_mask = hid < H

    acc_h = tl.zeros((BLOCK_B, BLOCK_H), dtype=tl.float32)  # mean @ w1, before normalising
    sum_sq = tl.zeros((BLOCK_B,), dtype=tl.float32)          # |mean|^2, slice by slice
    for d0 in range(0, D, BLOCK_D):
        dims = d0 + tl.arange(0, BLOCK_D)
        dim_mask = dims < D
        pooled = tl.zeros((BLOCK_B, BLOCK_D), dtype=tl.float32)
        for t0 in range(0, longest, BLOCK_T):
            t = t0 + tl.arange(0, BLOCK_T)
            t_mask = t[None, :] < n_tokens[:, None]  # (BLOCK_B, BLOCK_T)
            token = tl.load(token_ids_ptr + start[:, None] + t[None, :], mask=t_mask, other=0).to(tl.int64)
            vals = tl.load(table_ptr + token[:, :, None] * D + dims[None, None, :],
                           mask=t_mask[:, :, None] & dim_mask[None, None, :], other=0.0)
            pooled += tl.sum(vals.to(tl.float32), axis=1)
        mean = pooled * inv_count[:, None]  # (BLOCK_B, BLOCK_D)
        sum_sq += tl.sum(mean * mean, axis=1)
        w1 = tl.load(w1_ptr + dims[:, None] * H + hid[None, :],
                     mask=dim_mask[:, None] & hid_mask[None, :], other=0.0)  # (BLOCK_D, BLOCK_H)
        acc_h = tl.dot(mean.to(w1.dtype), w1, acc_h, input_precision="ieee")
    acc_h = acc_h / tl.maximum(tl.sqrt(sum_sq), EPS)[:, None]

    _head_epilogue(acc_h, rows, row_mask, b1_ptr, quality_emb_ptr, quality_bias_ptr, cost_emb_ptr,
                   cost_bias_ptr, cost_len_coef_ptr, log_len_ptr, quality_offset_ptr, quality_ptr, cost_ptr,
                   H, M, inv_temperature, BLOCK_H, BLOCK_M, HAS_OFFSET)


def static_predictor_forward(token_ids, offsets, table, log_len, w1, b1, quality_emb, quality_bias,
                             cost_emb, cost_bias, cost_len_coef, inv_temperature: float, quality_offset=None):
    """Launch the fused kernel on validated inputs; returns fp32 (quality, expected_cost_usd)."""
    batch, dim = offsets.shape[0] - 1, table.shape[1]
    hidden, n_models = w1.shape[1], quality_emb.shape[0]
    quality = torch.empty((batch, n_models), device=table.device, dtype=torch.float32)
    expected_cost_usd = torch.empty_like(quality)
    if batch == 0:
        return quality, expected_cost_usd
    blocks = head_block_sizes(batch, hidden, n_models)
    # The gather tile is 3-D, so rows are capped lower than in scoring_head.
    blocks["BLOCK_B"] = min(blocks["BLOCK_B"], 32)
    block_d = max(16, min(64, next_power_of_2(dim)))
    block_t = max(1, _GATHER_ELEMENTS // (blocks["BLOCK_B"] * block_d)) * INTERPRETER_TILE_SCALE
    grid = (triton.cdiv(batch, blocks["BLOCK_B"]),)
    with on_device(table.device):
        _static_predictor_kernel[grid](
            token_ids.contiguous(), offsets.contiguous(), table.contiguous(), w1.contiguous(),
            b1.contiguous(), quality_emb.contiguous(), quality_bias.contiguous(), cost_emb.contiguous(),
            cost_bias.contiguous(), cost_len_coef.contiguous(), log_len.contiguous(),
            quality if quality_offset is None else quality_offset.contiguous(),
            quality, expected_cost_usd, batch, dim, hidden, n_models, float(inv_temperature),
            EPS=NORM_EPS, BLOCK_T=block_t, BLOCK_D=block_d, HAS_OFFSET=quality_offset is not None, **blocks,
        )
    return quality, expected_cost_usd


def static_predictor_reference(token_ids, offsets, table, log_len, w1, b1, quality_emb, quality_bias,
                               cost_emb, cost_bias, cost_len_coef, inv_temperature: float, quality_offset=None):
    """The composition of the two references, in fp32."""
    prompt_embedding = static_embed_reference(token_ids, offsets, table)  # (batch, dim)
    return scoring_head_reference(prompt_embedding, w1, b1, quality_emb, quality_bias, cost_emb,
                                  cost_bias, cost_len_coef, log_len, inv_temperature, quality_offset)


def static_predictor(token_ids, offsets, table, log_len, w1, b1, quality_emb, quality_bias, cost_emb,
                     cost_bias, cost_len_coef, inv_temperature: float, impl: str = "auto",
                     trusted: bool = False, quality_offset=None):
    """(quality, expected_cost_usd), each (batch, n_models) fp32, straight from ragged token ids.

    impl: "auto" (the kernel for CUDA tensors it supports, else the reference), "triton" or "reference".
    Raises ValueError for a wrong shape, dtype or device, or offsets/token ids out of range. `trusted`
    skips those checks for inputs that `Predictor` builds itself (weights checked when the artifact loaded,
    ids from the table's own tokenizer): on the CPU they cost ~40 us at batch 1, more than a GPU launch.
    quality_offset: optional (batch, n_models) logits added after the temperature (the lexical part's).
    """
    op = "static_predictor"
    if not trusted:
        batch = check_token_inputs(op, token_ids, offsets, table)
        check_head_inputs(op, batch, table.shape[1], table.device, w1, b1, quality_emb, quality_bias,
                          cost_emb, cost_bias, cost_len_coef, log_len)
        if quality_offset is not None:
            check_tensor(op, "quality_offset", quality_offset, (batch, quality_emb.shape[0]), "float", table.device)
    shape_ok, reason = head_shape_ok(w1.shape[1], quality_emb.shape[0])
    chosen = resolve_impl(op, impl, table.device, (table.dtype, w1.dtype, quality_emb.dtype), shape_ok,
                          reason)
    key = (w1.shape[1], quality_emb.shape[0], table.dtype, w1.dtype, quality_emb.dtype)
    return run_kernel_or_reference(op, impl, chosen, key, static_predictor_forward, static_predictor_reference,
                                   token_ids, offsets, table, log_len, w1, b1, quality_emb, quality_bias, cost_emb,
                                   cost_bias, cost_len_coef, inv_temperature, quality_offset)


__all__ = ["static_predictor", "static_predictor_forward", "static_predictor_reference"]
