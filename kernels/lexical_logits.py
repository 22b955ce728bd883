"""The lexical part's logits: per prompt, the mean of weight rows over its lexical feature ids.

    lexical_logit[b] = mean(weights[feature_ids[offsets[b]:offsets[b+1]]])              # (batch, n_models)

The same gather + mean as the static embedding (kernels/static_embed.py, run with normalize=False): a wide
linear part beside the deep head, added to each model's quality logit after the temperature. A prompt with
no features gives zero logits.

Feature ids of a prompt (lexical_features): the static tokenizer's ids as the encoder reads them (same
window), then one id per pair of consecutive ids, hashed into 2^bigram_bits buckets after the vocabulary:

    token t             -> t                                            (t < vocab)
    bigram (t[i], t[i+1]) -> vocab + bigram_bucket(t[i], t[i+1], bigram_bits)

bigram_bucket is integer arithmetic on values below 2^63 (ids < 2^31), so the same function gives the same
bucket in Python, on numpy int64 arrays and compiled by numba (kernels/cpu_lexical.py), on any machine.
"""

import numpy as np
import torch
import torch.nn.functional as F

from ._triton_utils import check_tensor, resolve_impl
from .static_embed import check_token_inputs, static_embed_forward

# 32-bit golden-ratio multiplier (Knuth) to combine the pair, then the murmur-style 32-bit finaliser with
# multiplier 0x45D9F3B (< 2^27, so every product of a 32-bit value stays below 2^59: no int64 overflow).
_PAIR_MULT = 0x9E3779B1
_MIX_MULT = 0x45D9F3B
_MASK32 = 0xFFFFFFFF
MAX_BIGRAM_BITS = 24


def bigram_bucket(first, second, bigram_bits):
    """Bucket in [0, 2^bigram_bits) of the id pair (first, second); ints or int64 numpy arrays."""
    h = (first * _PAIR_MULT + second) & _MASK32
    h = (((h >> 16) ^ h) * _MIX_MULT) & _MASK32
    h = (((h >> 16) ^ h) * _MIX_MULT) & _MASK32
    h = (h >> 16) ^ h
    return h & ((1 << bigram_bits) - 1)


def bigram_bucket_exportable(first, second, bigram_bits: int):
    """bigram_bucket on int64 torch tensors of ids in [0, 2^31), in ops torch.onnx exports and ONNX runs on
    int64 (predictor_service/onnx_lexical.py): `x >> 16` is a truncating division by 2^16 (exact, every
    hashed value is in [0, 2^32)), `a ^ b` is `a + b - 2 * (a & b)` (the exporter refuses integer xor at
    every opset, ONNX's BitShift takes unsigned types only; `&` is BitwiseAnd, opset 18)."""
    def mix(h):   # (h >> 16) ^ h
        high = torch.div(h, 1 << 16, rounding_mode="trunc")
        return high + h - 2 * (high & h)

    h = (first * _PAIR_MULT + second) & _MASK32
    h = (mix(h) * _MIX_MULT) & _MASK32
    h = (mix(h) * _MIX_MULT) & _MASK32
    return mix(h) & ((1 << bigram_bits) - 1)


def lexical_features(token_ids: np.ndarray, offsets: np.ndarray, vocab: int,
                     bigram_bits: int) -> tuple[np.ndarray, np.ndarray]:
    """(feature_ids int64, feature_offsets int64 (batch + 1,)) of ragged token ids: each prompt's n tokens
    then its n - 1 hashed bigrams, in order."""
    token_ids = np.asarray(token_ids, dtype=np.int64)
    offsets = np.asarray(offsets, dtype=np.int64)
    lengths = np.diff(offsets)                                        # (batch,)
    pairs = np.maximum(lengths - 1, 0)
    feature_offsets = np.zeros(len(offsets), np.int64)
    np.cumsum(lengths + pairs, out=feature_offsets[1:])
    out = np.empty(int(feature_offsets[-1]), np.int64)
    prompt = np.repeat(np.arange(len(lengths)), lengths)              # (n_tokens,) prompt of each token
    position = np.arange(len(token_ids)) - offsets[:-1][prompt]       # index inside its prompt
    out[feature_offsets[:-1][prompt] + position] = token_ids
    # Pair (i, i + 1) lies inside one prompt unless i is its last token.
    inside = position[:-1] < lengths[prompt[:-1]] - 1 if len(token_ids) else np.zeros(0, bool)
    first = np.flatnonzero(inside)
    buckets = bigram_bucket(token_ids[first], token_ids[first + 1], bigram_bits)
    out[feature_offsets[:-1][prompt[first]] + lengths[prompt[first]] + position[first]] = vocab + buckets
    return out, feature_offsets


def lexical_logits_forward(feature_ids, offsets, weights):
    """The static embedding's kernel without its normalisation, on validated inputs: (batch, n_models) fp32."""
    return static_embed_forward(feature_ids, offsets, weights, normalize=False)


def lexical_logits_reference(feature_ids, offsets, weights):
    """Eager PyTorch in fp32: embedding_bag's mean, 0 for an empty bag."""
    return F.embedding_bag(feature_ids.long(), weights.float(), offsets.long(), mode="mean",
                           include_last_offset=True)  # (batch, n_models)


def lexical_logits(feature_ids, offsets, weights, impl: str = "auto"):
    """(batch, n_models) fp32 mean of weights' rows over each prompt's feature ids.

    impl: "auto" (the kernel for CUDA tensors it supports, else the reference), "triton" or "reference".
    Raises ValueError for a wrong shape, dtype or device, or offsets/feature ids out of range.
    """
    check_tensor("lexical_logits", "weights", weights, (None, None), "float")
    check_token_inputs("lexical_logits", feature_ids, offsets, weights)
    chosen = resolve_impl("lexical_logits", impl, weights.device, (weights.dtype,))
    fn = lexical_logits_forward if chosen == "triton" else lexical_logits_reference
    return fn(feature_ids, offsets, weights)


def check_bigram_bits(bigram_bits: int) -> None:
    if not isinstance(bigram_bits, int) or not 1 <= bigram_bits <= MAX_BIGRAM_BITS:
        raise ValueError(f"bigram_bits must be an int in [1, {MAX_BIGRAM_BITS}], got {bigram_bits!r}")


__all__ = ["bigram_bucket", "bigram_bucket_exportable", "lexical_features", "lexical_logits",
           "lexical_logits_forward", "lexical_logits_reference"]
