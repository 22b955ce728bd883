"""The static encoder's tokenizer paths (chunk cache, own WordPiece, compiled plain ASCII) against the
Hugging Face tokenizer: the same ids on every text."""

import string
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from training.data import read_prompts


def _tokenizer_ids(encoder, text):
    return [t for t in encoder.tokenizer.encode(text, add_special_tokens=False).ids if t != encoder._unk_id]


@pytest.mark.parametrize("text", [
    "Which of these is a prime? A. 4 B. 7\nC. 9", "naïve café 東京タワー (Tokyo)", "tab\tsep\nnew\rline",
    "a\x1cb c", "x\u2028y", "\x00nul\x00 bytes", "nbsp\u00a0and\u3000ideographic", "zero\u200bwidth",
    "supercalifragilistic" * 8, "", "   ", "word " * 400, "a." * 20_000, "(x+1)^2=" * 5_000 + " tail",
    "[UNK]", "see[PAD]here [unk] [UNK]x", "split\x0bby\x0ccontrols\x85and\u2029separators " * 300,
])
def test_static_chunk_cache_tokenizes_exactly_like_the_tokenizer(static_encoder, text):
    static_encoder.clear_caches()
    expected = _tokenizer_ids(static_encoder, text)
    assert static_encoder._token_ids(text) == expected
    assert static_encoder._token_ids(text) == expected          # second time from the cache


# Characters, plus the tokenizer's added tokens, which it matches in the raw text before normalising.
TEXT_PIECES = [*string.printable, *"éß×–“”πΩ東\u00a0\x1c\x1d\x1e\x1f\x85\u2028\u2029", "[UNK]", "[PAD]", "[unk]"]


@settings(max_examples=300, deadline=None, derandomize=True)  # the same examples on every CI run
@given(st.lists(st.sampled_from(TEXT_PIECES), max_size=300).map("".join))
def test_static_tokenizer_matches_on_any_text(static_encoder, text):
    """Printable-ASCII chunks take the encoder's own WordPiece, the rest the tokenizer: both must give
    exactly the tokenizer's ids, cold and from the cache."""
    static_encoder.clear_caches()
    expected = _tokenizer_ids(static_encoder, text)
    assert static_encoder._token_ids(text) == expected
    assert static_encoder._token_ids(text) == expected


@settings(max_examples=300, deadline=None, derandomize=True)
@given(st.lists(st.sampled_from([*string.ascii_letters, *string.digits, *string.punctuation, " ", "\n", "\t",
                                 "un", "##", "able", "ing", "x" * 101, "é"]), max_size=400).map("".join))
def test_compiled_plain_ascii_tokenizer_matches(static_encoder, text):
    """Plain ASCII text takes the compiled WordPiece: words of any length, '##' in the text, more than
    max_tokens ids (the "é" sends some examples down the other path, for comparison)."""
    assert static_encoder._token_ids(text) == _tokenizer_ids(static_encoder, text)


MMLU_PRO = Path(__file__).resolve().parents[3] / "shared" / "data" / "mmlu-pro"


@pytest.mark.skipif(not (MMLU_PRO / "dev" / "prompts.jsonl").is_file(), reason="needs ../shared/data")
def test_static_tokenizer_matches_on_every_dev_prompt(static_encoder):
    static_encoder.clear_caches()
    texts = [p.text for p in read_prompts(MMLU_PRO / "dev" / "prompts.jsonl")]
    assert [static_encoder._token_ids(t) for t in texts] == [_tokenizer_ids(static_encoder, t) for t in texts]


def test_static_chunk_cache_stays_exact_when_it_fills(static_encoder, monkeypatch):
    """A full cache is cleared mid-prompt; the chunks of that prompt seen before the clear must come back."""
    import predictor_service.encoders as encoders

    monkeypatch.setattr(encoders, "CHUNK_CACHE_SIZE", 8)
    static_encoder.clear_caches()
    # "é" keeps these texts off the compiled plain-ASCII path, which has no cache.
    texts = ["alpha beta gamma délta", "alpha beta epsilon zeta eta théta iota", "kappa alpha lambda mu nu é"]
    try:
        for text in texts * 2:
            assert static_encoder._token_ids(text) == _tokenizer_ids(static_encoder, text)
            assert len(static_encoder._chunk_ids) <= 8
    finally:
        static_encoder.clear_caches()


def test_static_tokenizer_caches_only_short_chunks(static_encoder):
    """Long chunks (URLs, formulas) are tokenized each time, so no traffic can fill the cache with them."""
    import predictor_service.encoders as encoders

    static_encoder.clear_caches()
    long_chunk = "https://example.org/" + "x" * encoders.CACHED_CHUNK_CHARS
    text = f"see {long_chunk} and {long_chunk.upper()}日本"
    for _ in range(2):
        assert static_encoder._token_ids(text) == _tokenizer_ids(static_encoder, text)
    assert "see" in static_encoder._chunk_ids
    assert all(len(chunk) <= encoders.CACHED_CHUNK_CHARS for chunk in static_encoder._chunk_ids)
