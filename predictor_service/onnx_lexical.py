"""The lexical part as exportable PyTorch, for the `static` ONNX graph (predictor_service/onnx_export.py):
the bigram hash and the ragged mean of weight rows over each prompt's features, computed from the same
TOKEN_IDS / OFFSETS the table's gather reads, so the graph keeps its three inputs.

The hash is kernels.lexical_logits.bigram_bucket_exportable: bigram_bucket's shifts, xors and masks as
int64 Div / Add / Sub / Mul / BitwiseAnd (opset 18), bit for bit the same buckets: ~20 elementwise int64
ops on n_tokens - 1 values, nothing next to the (batch, n_tokens) x (n_tokens, dim) gather + matmul
beside it.
"""

from __future__ import annotations

import torch
from torch import nn

from kernels.lexical_logits import bigram_bucket_exportable
from predictor_service.lexical import LexicalPart

LEXICAL_OPSET = 18   # BitwiseAnd on int64; onnxruntime >= 1.14 runs opset 18


class LexicalGraph(nn.Module):
    """(token_ids, offsets) -> (batch, n_models) lexical logits: the mean of weight rows over each prompt's
    n tokens and n - 1 hashed bigrams (kernels.lexical_logits.lexical_features), 0 for an empty prompt.

    The ragged sums are 0/1 membership matrices times the gathered rows, like the table's mean in
    StaticPredictorGraph: pair (i, i + 1) belongs to prompt b when start_b <= i and i + 1 < end_b.
    """

    def __init__(self, part: LexicalPart):
        super().__init__()
        self.register_buffer("weights", part.weights.float().contiguous())   # (vocab + 2^bits, n_models)
        self.vocab, self.bigram_bits = int(part.vocab), int(part.bigram_bits)

    def forward(self, token_ids: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(token_ids.shape[0], dtype=offsets.dtype)              # (n_tokens,)
        starts, ends = offsets[:-1, None], offsets[1:, None]                            # (batch, 1)
        member = (positions[None, :] >= starts) & (positions[None, :] < ends)           # (batch, n_tokens)
        pair_member = (positions[None, :-1] >= starts) & (positions[None, 1:] < ends)   # (batch, n_tokens - 1)
        buckets = self.vocab + bigram_bucket_exportable(token_ids[:-1], token_ids[1:], self.bigram_bits)
        summed = (member.to(torch.float32) @ self.weights[token_ids]
                  + pair_member.to(torch.float32) @ self.weights[buckets])              # (batch, n_models)
        lengths = (ends - starts)[:, 0]
        count = lengths + (lengths - 1).clamp(min=0)                                    # tokens + bigrams
        return summed / count.clamp(min=1).to(torch.float32)[:, None]


__all__ = ["LEXICAL_OPSET", "LexicalGraph"]
