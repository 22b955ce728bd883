"""The lexical part's kernels: the bigram hash the same in Python, numpy, numba and its exportable torch
form; the gather + mean (the static embedding's kernel without its norm) under TRITON_INTERPRET=1 against
the reference, compiled where CUDA exists; the fused predictor's quality_offset and the compiled CPU loop
with a lexical part."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import kernels
from kernels.cpu_lexical import bigram_bucket as compiled_bucket
from kernels.cpu_static_predictor import FoldedStaticPredictor
from kernels.lexical_logits import (bigram_bucket, bigram_bucket_exportable, lexical_features, lexical_logits,
                                    lexical_logits_reference)
from kernels.scoring_head import scoring_head_forward, scoring_head_reference
from kernels.static_embed import static_embed_forward
from kernels.static_predictor import static_predictor, static_predictor_reference
from tests.support.kernel_cases import (BACKENDS, INV_TEMPERATURE, TOLERANCE, VOCAB, assert_head_close, make_head_params,
                                       make_prompts, to_cpu)

BITS = 16
N_FEATURES = VOCAB + (1 << BITS)


def features_by_loop(token_ids, offsets, vocab, bits):
    """lexical_features written the plain way: per prompt, its ids, then its consecutive pairs' buckets."""
    ids, out_offsets = [], [0]
    for b in range(len(offsets) - 1):
        prompt = [int(t) for t in token_ids[offsets[b]:offsets[b + 1]]]
        ids += prompt + [vocab + bigram_bucket(x, y, bits) for x, y in zip(prompt, prompt[1:])]
        out_offsets.append(len(ids))
    return np.array(ids, np.int64), np.array(out_offsets, np.int64)


def test_bigram_bucket_is_one_function_in_python_numpy_and_numba():
    rng = np.random.default_rng(0)
    first, second = rng.integers(0, 2**31, 500), rng.integers(0, 2**31, 500)
    for bits in (1, 16, 18, 24):
        vectorised = bigram_bucket(first, second, bits)
        assert vectorised.dtype == np.int64 and ((vectorised >= 0) & (vectorised < 1 << bits)).all()
        assert [bigram_bucket(int(a), int(b), bits) for a, b in zip(first, second)] == vectorised.tolist()
        assert [compiled_bucket(a, b, bits) for a, b in zip(first, second)] == vectorised.tolist()
        exportable = bigram_bucket_exportable(torch.from_numpy(first), torch.from_numpy(second), bits)
        assert exportable.tolist() == vectorised.tolist()   # the ONNX graph's form (no xor, no shift)
    # Fixed by the documented arithmetic, not by the machine or the process (no Python hash()).
    assert [bigram_bucket(101, 2054, 16), bigram_bucket(2054, 101, 16), bigram_bucket(0, 0, 16)] == [62846, 7846, 0]


def test_bigram_buckets_spread_evenly():
    rng = np.random.default_rng(1)
    buckets = bigram_bucket(rng.integers(0, VOCAB, 200_000), rng.integers(0, VOCAB, 200_000), 10)
    counts = np.bincount(buckets, minlength=1024)
    # Uniform buckets give multinomial counts, variance ~ mean; a biased hash inflates it (+-3.4 standard errors).
    assert 0.85 < counts.var() / counts.mean() < 1.15


@settings(max_examples=30, deadline=None)
@given(lengths=st.lists(st.integers(0, 9), min_size=1, max_size=10), seed=st.integers(0, 2**31 - 1))
def test_features_are_tokens_then_bigrams_per_prompt(lengths, seed):
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    token_ids = np.random.default_rng(seed).integers(0, VOCAB, int(offsets[-1]))
    ids, feature_offsets = lexical_features(token_ids, offsets, VOCAB, BITS)
    want_ids, want_offsets = features_by_loop(token_ids, offsets, VOCAB, BITS)
    np.testing.assert_array_equal(feature_offsets, want_offsets)
    np.testing.assert_array_equal(ids, want_ids)


@pytest.mark.parametrize("device, dtype", BACKENDS)
@pytest.mark.parametrize("index_dtype", [torch.int32, torch.int64], ids=["int32", "int64"])
@pytest.mark.parametrize("n_models", [1, 32, 33])
@pytest.mark.parametrize("batch", [1, 7, 129])
def test_lexical_logits_match_reference(batch, n_models, index_dtype, device, dtype):
    token_ids, offsets, _ = make_prompts(batch)
    ids, feature_offsets = lexical_features(token_ids.numpy(), offsets.numpy(), VOCAB, BITS)
    weights = torch.randn(N_FEATURES, n_models)
    args = (torch.from_numpy(ids).to(device=device, dtype=index_dtype),
            torch.from_numpy(feature_offsets).to(device=device, dtype=index_dtype))

    got = lexical_logits(*args, weights.to(device=device, dtype=dtype), impl="triton")
    want = lexical_logits_reference(torch.from_numpy(ids), torch.from_numpy(feature_offsets),
                                    weights.to(dtype).float())
    assert got.dtype == torch.float32 and got.shape == (batch, n_models)
    torch.testing.assert_close(got.cpu(), want, rtol=0, atol=TOLERANCE[dtype])
    empty = torch.from_numpy(feature_offsets[1:] == feature_offsets[:-1])
    assert (got.cpu()[empty] == 0).all()


@pytest.mark.skipif(not kernels.INTERPRET, reason="needs TRITON_INTERPRET=1")
def test_static_embed_without_norm_is_the_plain_mean():
    token_ids, offsets, _ = make_prompts(7)
    table = torch.randn(VOCAB, 48)
    got = static_embed_forward(token_ids, offsets, table, normalize=False)
    want = torch.nn.functional.embedding_bag(token_ids, table, offsets, mode="mean", include_last_offset=True)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    assert (got.norm(dim=1) != 1).any()


def test_lexical_logits_refuse_ids_past_the_weights():
    weights = torch.zeros(10, 2)
    with pytest.raises(ValueError, match=r"token_ids must lie in \[0, 10\)"):
        lexical_logits(torch.tensor([3, 10]), torch.tensor([0, 2]), weights)
    with pytest.raises(ValueError, match="weights has shape"):
        lexical_logits(torch.tensor([3]), torch.tensor([0, 1]), torch.zeros(10))


@pytest.mark.parametrize("device, dtype", BACKENDS)
@pytest.mark.parametrize("n_models", [1, 33])
@pytest.mark.parametrize("batch", [1, 7, 129])
def test_fused_kernels_add_the_quality_offset_after_the_temperature(batch, n_models, device, dtype):
    token_ids, offsets, log_len = make_prompts(batch, torch.int32, device)
    table = (0.1 * torch.randn(VOCAB, 256)).to(device=device, dtype=dtype)
    head = make_head_params(256, 64, n_models, dtype, device)
    offset = torch.randn(batch, n_models)

    got = static_predictor(token_ids, offsets, table, log_len, **head, inv_temperature=INV_TEMPERATURE,
                           impl="triton", quality_offset=offset.to(device))
    want = static_predictor_reference(token_ids.cpu(), offsets.cpu(), table.cpu(), log_len.cpu(), **to_cpu(head),
                                      inv_temperature=INV_TEMPERATURE, quality_offset=offset)
    assert_head_close(got, want, dtype)
    without = static_predictor_reference(token_ids.cpu(), offsets.cpu(), table.cpu(), log_len.cpu(), **to_cpu(head),
                                         inv_temperature=INV_TEMPERATURE)
    # The offset moves quality as sigmoid(logit + offset) does, and leaves the costs alone.
    torch.testing.assert_close(want[0], torch.sigmoid(torch.logit(without[0].double()) + offset).float(),
                               rtol=0, atol=1e-4)
    torch.testing.assert_close(want[1], without[1], rtol=0, atol=0)

    x = torch.nn.functional.normalize(torch.randn(batch, 256), dim=1).to(device=device, dtype=dtype)
    got = scoring_head_forward(x, *head.values(), log_len, INV_TEMPERATURE, quality_offset=offset.to(device))
    want = scoring_head_reference(x.cpu(), *to_cpu(head).values(), log_len.cpu(), INV_TEMPERATURE, offset)
    assert_head_close(got, want, dtype)


class _Part:
    """What FoldedStaticPredictor reads of a LexicalPart."""

    def __init__(self, weights):
        self.weights, self.vocab, self.bigram_bits = weights, VOCAB, BITS


@pytest.mark.parametrize("n_models", [1, 33])
@pytest.mark.parametrize("batch", [1, 7, 129])
def test_folded_cpu_predictor_adds_the_lexical_logits(batch, n_models):
    """The compiled loop hashes bigrams on the fly: the same as the features' reference, empty and one-token
    prompts included; without a part it is unchanged to the bit."""
    token_ids, offsets, log_len = make_prompts(batch)
    table = 0.1 * torch.randn(VOCAB, 256)
    head = make_head_params(256, 64, n_models)
    weights = torch.randn(N_FEATURES, n_models)
    ids, feature_offsets = lexical_features(token_ids.numpy(), offsets.numpy(), VOCAB, BITS)
    offset = lexical_logits_reference(torch.from_numpy(ids), torch.from_numpy(feature_offsets), weights)

    got = FoldedStaticPredictor(table, **head, inv_temperature=INV_TEMPERATURE, lexical=_Part(weights))(
        token_ids, offsets, log_len)
    want = static_predictor_reference(token_ids, offsets, table, log_len, **head, inv_temperature=INV_TEMPERATURE,
                                      quality_offset=offset)
    assert_head_close(got, want, torch.float32)
    plain = FoldedStaticPredictor(table, **head, inv_temperature=INV_TEMPERATURE)(token_ids, offsets, log_len)
    zero = FoldedStaticPredictor(table, **head, inv_temperature=INV_TEMPERATURE,
                                 lexical=_Part(torch.zeros(N_FEATURES, n_models)))(token_ids, offsets, log_len)
    assert torch.equal(plain[0], zero[0]) and torch.equal(plain[1], zero[1])
