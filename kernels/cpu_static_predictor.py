"""The static predictor for CPU serving: token ids -> (quality, expected_cost_usd), compiled with numba.

Same maths as static_predictor_reference: the table rows of a prompt's tokens summed (the mean's token
count cancels in the normalisation), the norm, m @ w1 / |m| + b1, relu, both outputs, in one compiled loop
per prompt. The rows are gathered as the artifact stores them: int8 with one fp32 scale a row (row * scale
in fp32 is exactly the decoded table's value), or fp32 with scales of 1.

Why compiled: at batch 1 the PyTorch version of this (seven ops) cost ~120 us on 2 cores, nearly all of
it per-op dispatch, and twice that inside Triton's Python stub, where the core has gone idle between
requests; this loop takes ~10 us. Each prompt is computed on its own, in one fixed order, so its answer
never depends on the other prompts of a dynamic batch (a batched BLAS call did: 1.3e-5 apart).

Why int8 rows and w1 after the sum: the loop is bound by memory. A 160-token prompt read 160 rows of 2 KB
from a 60 MB table when w1 was folded into it ([table @ w1 | table], fp32); int8 rows are 256 bytes of a
7.5 MB table, and w1 (256 KB) is read once. 12.2 -> 8.7 us a dev prompt warm, 59 -> 45 us with the caches
flushed (as they are in the stub between requests); the scores moved by at most 6e-8. And no BLAS call at
load any more: the fold's matmul took the CPU's own kernels, so its bits depended on the machine.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from . import cpu_lexical, lexical_logits, static_embed
from ._numba import compiled
from .cpu_lexical import add_lexical_logits
from .static_embed import NORM_EPS


# NORM_EPS is compiled in, and so are the lexical part's loop and hash.
@compiled(boundscheck=False, depends_on=(static_embed, cpu_lexical, lexical_logits))
def score_tokens(token_ids, start, end, log_len, rows, row_scale, w1, b1, out_wt, out_b, cost_len_coef, lex_weights,
                 lex_vocab, lex_bigram_bits, quality, cost):
    """One prompt, token_ids[start:end] -> its quality and cost rows, (m,) each. rows (vocab, dim) int8 or
    fp32 and row_scale (vocab,) fp32: the table; w1 (dim, hidden); out_wt (hidden, 2 m): quality columns
    (inv_temperature folded in) then cost columns. lex_weights: the lexical part's (vocab + 2^bits, m) rows,
    added to the quality logits after the temperature, or (0, m) for an artifact without one."""
    dim, hidden, m = rows.shape[1], b1.shape[0], cost_len_coef.shape[0]
    sums = np.zeros(dim, np.float32)
    for t in range(start, end):                       # fp32 running sum, as embedding_bag does
        token = token_ids[t]
        row, scale = rows[token], row_scale[token]
        for j in range(dim):
            sums[j] += np.float32(row[j]) * scale
    square = 0.0
    for j in range(dim):
        square += np.float64(sums[j]) * sums[j]
    norm = max(math.sqrt(square), NORM_EPS)
    pre = np.zeros(hidden, np.float32)                # m @ w1, a row of w1 at a time
    for j in range(dim):
        x, w = sums[j], w1[j]
        for i in range(hidden):
            pre[i] += x * w[i]
    logits = out_b.copy()
    for j in range(hidden):
        h = pre[j] / norm + b1[j]
        if h > 0.0:                                   # relu: an inactive unit adds nothing
            w = out_wt[j]
            for k in range(2 * m):
                logits[k] += h * w[k]
    if lex_weights.shape[0] > 0:
        add_lexical_logits(token_ids, start, end, lex_weights, lex_vocab, lex_bigram_bits, logits)
    for k in range(m):
        quality[k] = 1.0 / (1.0 + math.exp(-logits[k]))
        cost[k] = math.exp(logits[m + k] + np.float64(log_len) * cost_len_coef[k])


@compiled(boundscheck=False, depends_on=(static_embed, cpu_lexical, lexical_logits))
def _folded_predictor(token_ids, offsets, log_len, rows, row_scale, w1, b1, out_wt, out_b, cost_len_coef,
                      lex_weights, lex_vocab, lex_bigram_bits, quality, cost):
    """Every prompt of a batch, each on its own; writes quality and cost, (batch, m) each."""
    for b in range(offsets.shape[0] - 1):
        score_tokens(token_ids, offsets[b], offsets[b + 1], log_len[b], rows, row_scale, w1, b1, out_wt, out_b,
                     cost_len_coef, lex_weights, lex_vocab, lex_bigram_bits, quality[b], cost[b])


class FoldedStaticPredictor:
    """The static predictor on the CPU: the temperature folded into the output rows once at load, one
    compiled call per batch."""

    def __init__(self, table, w1, b1, quality_emb, quality_bias, cost_emb, cost_bias, cost_len_coef,
                 inv_temperature: float, lexical=None, stored_rows=None):
        """lexical: the artifact's lexical part (predictor_service.lexical.LexicalPart) or None. stored_rows:
        (int8 rows, fp32 row scales) the table was decoded from (encoder_files), gathered as they are; None
        gathers the fp32 table with scales of 1."""
        if stored_rows is None:
            stored_rows = (table.float().contiguous().numpy(), np.ones(table.shape[0], np.float32))
        self.rows = np.ascontiguousarray(stored_rows[0])
        self.row_scale = np.ascontiguousarray(stored_rows[1], dtype=np.float32)
        self.w1 = w1.float().contiguous().numpy()
        with torch.no_grad():
            # inv_temperature scales the quality logits, so it folds into their rows and biases.
            out_w = torch.cat([quality_emb.float() * inv_temperature, cost_emb.float()])  # (2 m, hidden)
            out_b = torch.cat([quality_bias.float() * inv_temperature, cost_bias.float()])
        self.b1 = b1.float().numpy().copy()
        self.out_wt = out_w.T.contiguous().numpy()
        self.out_b = out_b.double().numpy()
        self.cost_len_coef = cost_len_coef.float().numpy().copy()
        self.n_models = int(out_w.shape[0]) // 2
        if lexical is None:
            self.lex_weights, self.lex_vocab, self.lex_bigram_bits = np.zeros((0, self.n_models), np.float32), 0, 1
        else:
            self.lex_weights = np.ascontiguousarray(lexical.weights.float().numpy())   # (n_features, m)
            self.lex_vocab, self.lex_bigram_bits = int(lexical.vocab), int(lexical.bigram_bits)
        self.predict(np.zeros(1, np.int64), np.array([0, 1]), np.zeros(1, np.float32))  # compile or load now

    def predict(self, token_ids: np.ndarray, offsets: np.ndarray, log_len: np.ndarray):
        """numpy in (int64 ids, int64 offsets of batch + 1, fp32 log_len), numpy out: (quality,
        expected_cost_usd), each (batch, n_models) fp32.

        Trusted inputs only: nothing is checked, and the loop reads the rows without bounds checks, so ids
        must be < vocab (StaticEncoder guarantees it for its own tokenizer) and offsets non-decreasing.
        """
        batch = offsets.shape[0] - 1
        quality = np.empty((batch, self.n_models), np.float32)
        cost = np.empty((batch, self.n_models), np.float32)
        _folded_predictor(token_ids, offsets, log_len, self.rows, self.row_scale, self.w1, self.b1, self.out_wt,
                          self.out_b, self.cost_len_coef, self.lex_weights, self.lex_vocab, self.lex_bigram_bits,
                          quality, cost)
        return quality, cost

    def __call__(self, token_ids, offsets, log_len):
        """The same on torch CPU tensors, as the other kernels' dispatchers take them."""
        quality, cost = self.predict(token_ids.to(torch.int64).numpy(), offsets.to(torch.int64).numpy(),
                                     log_len.float().numpy())
        return torch.from_numpy(quality), torch.from_numpy(cost)


__all__ = ["FoldedStaticPredictor", "score_tokens"]
