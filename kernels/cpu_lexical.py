"""The lexical part on the CPU, compiled with numba: a prompt's token ids -> its lexical logits, added in
place to the head's quality logits (kernels/cpu_static_predictor.score_tokens calls it).

Same maths as kernels.lexical_logits.lexical_logits_reference on lexical_features' ids, with the bigram
ids hashed on the fly (the same bigram_bucket, compiled): no feature array is built per prompt.
"""

from __future__ import annotations

import numpy as np

from . import lexical_logits
from ._numba import compiled

bigram_bucket = compiled(depends_on=(lexical_logits,))(lexical_logits.bigram_bucket)


@compiled(boundscheck=False, depends_on=(lexical_logits,))
def add_lexical_logits(token_ids, start, end, weights, vocab, bigram_bits, logits):
    """logits[:n_models] += mean of weights' rows over the features of token_ids[start:end]: the tokens,
    then the hashed bigrams. weights (vocab + 2^bigram_bits, n_models) fp32; nothing for an empty prompt."""
    m = weights.shape[1]
    sums = np.zeros(m, np.float32)                    # fp32 running sum, as embedding_bag does
    for t in range(start, end):
        row = weights[token_ids[t]]
        for k in range(m):
            sums[k] += row[k]
    for t in range(start, end - 1):
        row = weights[vocab + bigram_bucket(token_ids[t], token_ids[t + 1], bigram_bits)]
        for k in range(m):
            sums[k] += row[k]
    count = (end - start) + max(end - start - 1, 0)
    if count > 0:
        for k in range(m):
            logits[k] += sums[k] / np.float32(count)


__all__ = ["add_lexical_logits", "bigram_bucket"]
