"""Static (model2vec-style) prompt embedding: mean of table rows over a prompt's tokens, L2-normalised.

    out[b] = v / max(||v||, 1e-12),  v = mean(table[token_ids[offsets[b]:offsets[b+1]]])    # (batch, dim)

With normalize=False the launcher returns v itself: the lexical part's per-model logits
(kernels/lexical_logits.py) are that mean over its weight rows.

Prompts arrive ragged, as one flat token_ids plus batch + 1 offsets, so no padding is gathered; a prompt
with no tokens gives the zero vector.
"""

import torch
import torch.nn.functional as F

from ._triton_utils import (
    INDEX_DTYPES, INTERPRETER_TILE_SCALE, check_tensor, next_power_of_2, on_device, resolve_impl, tl, triton,
)

NORM_EPS = 1e-12
# fp32 elements of the (tokens, dim) gather tile per program: 16 tokens at dim 384 (padded to 512).
_TILE_ELEMENTS = 8192


@triton.jit
def _static_embed_kernel(token_ids_ptr, offsets_ptr, table_ptr, out_ptr, D,
                         EPS: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr,
                         NORMALIZE: tl.constexpr):
    prompt = tl.program_id(0).to(tl.int64)
    start = tl.load(offsets_ptr + prompt).to(tl.int64)
    end = tl.load(offsets_ptr + prompt + 1).to(tl.int64)
    dims = tl.arange(0, BLOCK_D)
    dim_mask = dims < D

    # Sum whole tiles and reduce over tokens once at the end, instead of one reduction per tile.
    acc = tl.zeros((BLOCK_T, BLOCK_D), dtype=tl.float32)
    for t0 in range(start, end, BLOCK_T):
        t = t0 + tl.arange(0, BLOCK_T)
        t_mask = t < end
        token = tl.load(token_ids_ptr + t, mask=t_mask, other=0).to(tl.int64)
        rows = tl.load(table_ptr + token[:, None] * D + dims[None, :],
                       mask=t_mask[:, None] & dim_mask[None, :], other=0.0)  # (BLOCK_T, BLOCK_D)
        acc += rows.to(tl.float32)

    n_tokens = (end - start).to(tl.float32)
    mean = tl.sum(acc, axis=0) / tl.maximum(n_tokens, 1.0)  # (BLOCK_D,); zero for an empty prompt
    if NORMALIZE:
        norm = tl.sqrt(tl.sum(mean * mean, axis=0))
        mean = mean / tl.maximum(norm, EPS)
    tl.store(out_ptr + prompt * D + dims, mean, mask=dim_mask)


def static_embed_forward(token_ids, offsets, table, normalize: bool = True):
    """Launch one program per prompt on validated inputs; returns (batch, dim) fp32, the rows' mean
    L2-normalised, or the plain mean with normalize=False."""
    batch, dim = offsets.shape[0] - 1, table.shape[1]
    out = torch.empty((batch, dim), device=table.device, dtype=torch.float32)
    if batch == 0:
        return out
    # The whole (padded) embedding row stays in registers, so the norm needs no second pass.
    block_d = max(16, next_power_of_2(dim))
    block_t = max(1, min(16, _TILE_ELEMENTS // block_d)) * INTERPRETER_TILE_SCALE
    with on_device(table.device):
        _static_embed_kernel[(batch,)](
            token_ids.contiguous(), offsets.contiguous(), table.contiguous(), out, dim, EPS=NORM_EPS,
            BLOCK_T=block_t, BLOCK_D=block_d, NORMALIZE=bool(normalize), num_warps=4 if block_d <= 512 else 8,
        )
    return out


def static_embed_reference(token_ids, offsets, table):
    """Eager PyTorch in fp32: embedding_bag's mean is 0 for an empty bag, and F.normalize divides by
    max(||v||, eps), which is the contract."""
    pooled = F.embedding_bag(token_ids.long(), table.float(), offsets.long(), mode="mean",
                             include_last_offset=True)  # (batch, dim)
    return F.normalize(pooled, dim=1, eps=NORM_EPS)


def check_token_inputs(op: str, token_ids, offsets, table) -> int:
    """ValueError naming the bad input; returns the batch size.

    The value checks (offsets from 0 to len(token_ids) without decreasing, token ids inside the table)
    cost one host sync; an out-of-range id would otherwise make the kernel read outside the table.
    """
    check_tensor(op, "table", table, (None, None), "float")
    check_tensor(op, "token_ids", token_ids, (None,), INDEX_DTYPES, table.device)
    check_tensor(op, "offsets", offsets, (None,), INDEX_DTYPES, table.device)
    if offsets.shape[0] < 1:
        raise ValueError(f"{op}: offsets must have batch + 1 >= 1 entries, got 0")
    n_tokens, vocab = token_ids.shape[0], table.shape[0]
    steps = offsets[1:] - offsets[:-1]
    flags = torch.stack([
        offsets[0] != 0, offsets[-1] != n_tokens, (steps < 0).any(),
        ((token_ids < 0) | (token_ids >= vocab)).any(),
    ]).tolist()
    if flags[0] or flags[1]:
        raise ValueError(f"{op}: offsets must run from 0 to len(token_ids)={n_tokens}, "
                         f"got {int(offsets[0])} .. {int(offsets[-1])}")
    if flags[2]:
        b = int(torch.nonzero(steps < 0)[0, 0])
        raise ValueError(f"{op}: offsets must be non-decreasing, but offsets[{b}]={int(offsets[b])} > "
                         f"offsets[{b + 1}]={int(offsets[b + 1])}")
    if flags[3]:
        raise ValueError(f"{op}: token_ids must lie in [0, {vocab}) (the table's rows), got "
                         f"min {int(token_ids.min())}, max {int(token_ids.max())}")
    return offsets.shape[0] - 1


def static_embed(token_ids, offsets, table, impl: str = "auto"):
    """(batch, dim) fp32 L2-normalised mean embeddings; prompt b is token_ids[offsets[b]:offsets[b+1]].

    impl: "auto" (the kernel for CUDA tensors it supports, else the reference), "triton" or "reference".
    Raises ValueError for a wrong shape, dtype or device, or offsets/token ids out of range.
    """
    check_token_inputs("static_embed", token_ids, offsets, table)
    chosen = resolve_impl("static_embed", impl, table.device, (table.dtype,))
    fn = static_embed_forward if chosen == "triton" else static_embed_reference
    return fn(token_ids, offsets, table)


__all__ = ["static_embed", "static_embed_forward", "static_embed_reference"]
