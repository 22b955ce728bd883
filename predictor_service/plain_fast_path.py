"""The CPU serving path for a prompt: its bytes -> its score vector in one compiled call.

Plain ASCII bytes go in as they are; other text first takes bert_rewrite's rewrite (a regex substitution,
~8 us for a prompt with a few non-ASCII characters), and what that leaves to the tokenizer takes the
step-by-step path.

Why one call: inside Triton's stub the core has gone idle between requests, and each Python or numpy step of
a request then runs with cold caches, ~15-45 us instead of ~1 us warm (the regex that spots plain text, the
encoding, the tokenizer's call, the arrays between tokenizer and predictor, the predictor's call). Those
steps, not the arithmetic, were most of the ~0.4 ms the predictor added to Triton's own round trip. Here the
plainness check, the WordPiece, the log length and the scoring run in one compiled function that writes the
prompt's row of a preallocated output; the answer is the same as the step-by-step path's (tested).
"""

from __future__ import annotations

import math

import numpy as np

from kernels import cpu_lexical, cpu_static_predictor, lexical_logits, static_embed
from kernels.cpu_jit import compiled
from kernels.cpu_static_predictor import FoldedStaticPredictor, score_tokens
from predictor_service import ascii_wordpiece
from predictor_service.ascii_wordpiece import is_plain_ascii, plain_ascii_window_into, window_buffer_size


@compiled(boundscheck=False,
          depends_on=(cpu_static_predictor, static_embed, cpu_lexical, lexical_logits, ascii_wordpiece))
def _score_covered(data, n_chars, row, out, max_tokens, tail_tokens, unk_id, max_word, slots, keys, longest,
                   rows, row_scale, w1, b1, out_wt, out_b, cost_len_coef, lex_weights, lex_vocab,
                   lex_bigram_bits):
    """Scores the bytes `data` the compiled WordPiece covers (plain ASCII, or bert_rewrite's rewrite of a
    text of n_chars characters) into out[0, row] (quality) and out[1, row] (expected cost)."""
    if tail_tokens == 0:
        tokens = np.empty(max_tokens + 128, np.int64)
    else:
        tokens = np.empty(window_buffer_size(len(data), max_tokens), np.int64)
    n = plain_ascii_window_into(data, tokens, max_tokens, tail_tokens, True, unk_id, max_word, slots, keys,
                                longest)
    log_len = np.float32(math.log1p(n_chars))   # as head.log_lengths_numpy: the prompt's characters
    score_tokens(tokens, 0, n, log_len, rows, row_scale, w1, b1, out_wt, out_b, cost_len_coef, lex_weights,
                 lex_vocab, lex_bigram_bits, out[0, row], out[1, row])


@compiled(boundscheck=False,
          depends_on=(cpu_static_predictor, static_embed, cpu_lexical, lexical_logits, ascii_wordpiece))
def _score_plain_ascii(data, row, out, max_tokens, tail_tokens, unk_id, max_word, slots, keys, longest,
                       rows, row_scale, w1, b1, out_wt, out_b, cost_len_coef, lex_weights, lex_vocab,
                       lex_bigram_bits):
    """_score_covered if `data` (bytes) is plain ASCII (one byte a character); returns whether it was."""
    if not is_plain_ascii(data):
        return False
    _score_covered(data, len(data), row, out, max_tokens, tail_tokens, unk_id, max_word, slots, keys, longest,
                   rows, row_scale, w1, b1, out_wt, out_b, cost_len_coef, lex_weights, lex_vocab,
                   lex_bigram_bits)
    return True


class PlainFastPath:
    """The static encoder's compiled tokenizer and the folded predictor, called as one."""

    def __init__(self, encoder, predictor: FoldedStaticPredictor):
        self._encoder = encoder
        plain = encoder.plain_tokenizer
        self._args = (plain.max_tokens, plain.tail_tokens, plain.unk_id, plain.max_word_chars, *plain.table,
                      predictor.rows, predictor.row_scale, predictor.w1, predictor.b1, predictor.out_wt,
                      predictor.out_b, predictor.cost_len_coef, predictor.lex_weights, predictor.lex_vocab, predictor.lex_bigram_bits)
        self.score("warm up", np.empty((2, 1, predictor.n_models), np.float32), 0)   # compile or load now

    def score(self, text: str, out: np.ndarray, row: int) -> bool:
        """Writes text's quality and expected cost to out[0, row] and out[1, row], out (2, batch, n_models)
        fp32; False (nothing written) for text this path does not cover: an added token such as "[UNK]" in
        it, or text bert_rewrite leaves to the tokenizer. out and row are trusted: the compiled call writes without bounds checks."""
        if self._encoder.holds_added_token(text):
            return False
        if _score_plain_ascii(text.encode(), row, out, *self._args):
            return True
        data = self._encoder.rewritten(text)
        if data is None:
            return False
        _score_covered(data, len(text), row, out, *self._args)
        return True


__all__ = ["PlainFastPath"]
