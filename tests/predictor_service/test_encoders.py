"""The prompt encoders: the static table's embeddings and MiniLM's, offline, batched like one at a time."""

import numpy as np
import pytest

from predictor_service.artifact import static_encoder_from
from predictor_service.encoders import MiniLMEncoder, StaticEncoder


def test_static_encoder_is_deterministic_and_normalised():
    encoder = static_encoder_from()
    texts = ["What is 2 + 2?", "Explain the tort of negligence.", "x"]
    first, second = encoder.encode(texts), encoder.encode(list(reversed(texts)))[::-1]
    np.testing.assert_allclose(first, second, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(first, axis=1), 1.0, atol=1e-5)
    assert first.shape == (3, 256)


def test_minilm_encoder_loads_offline_and_pools(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    encoder = MiniLMEncoder(max_tokens=32)
    emb = encoder.encode(["a cat sits on the mat", "a kitten is on the rug", "quarterly tax filing"])
    assert emb.shape == (3, 384)
    similar, unrelated = emb[0] @ emb[1], emb[0] @ emb[2]
    assert similar > unrelated + 0.2


def test_minilm_batches_give_each_prompt_its_own_embedding():
    """Length-sorted sub-batches under the token budget, padding masked: a batch's rows equal the prompts
    encoded one at a time, in the caller's order."""
    encoder = MiniLMEncoder(max_tokens=64)
    texts = ["short", "word " * 60, "a medium length question about torts and contracts", "x y", "z " * 20]
    encoder.token_budget = 96    # several sub-batches of different widths
    batched = encoder.encode(texts)
    single = np.concatenate([encoder.encode([t]) for t in texts])
    np.testing.assert_allclose(batched, single, atol=2e-5)


def test_static_encoder_refuses_a_table_smaller_than_its_vocabulary(static_encoder):
    """The CPU path reads table rows by token id without bounds checks."""
    with pytest.raises(ValueError, match="rows"):
        StaticEncoder(static_encoder.table.numpy()[:1000], static_encoder.tokenizer)
