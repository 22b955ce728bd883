"""bert_rewrite: text that is not plain ASCII, rewritten for the compiled WordPiece, against the Hugging Face
tokenizer: the same ids on every character and on any text, or no rewrite at all."""

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from predictor_service import bert_rewrite
from training.data import read_prompts


def _tokenizer_ids(encoder, text):
    return [t for t in encoder.tokenizer.encode(text, add_special_tokens=False).ids if t != encoder._unk_id]


def _rewritten_ids(encoder, text):
    data = encoder.rewritten(text)
    return None if data is None else encoder.plain_tokenizer.ids(data).tolist()


def test_every_character_inside_a_word_and_alone_gives_the_tokenizers_ids(static_encoder):
    """All 1,111,936 code points past ASCII (surrogates aside), ~15 s: a rewrite, where there is one, reads
    to the tokenizer's ids. The few left to the tokenizer are those whose normal form keeps a combining
    character."""
    chars = [chr(c) for c in range(0x80, 0x110000) if not 0xD800 <= c < 0xE000]
    texts = [f"ab{c}cd {c}x" for c in chars]
    encodings = static_encoder.tokenizer.encode_batch_fast(texts, add_special_tokens=False)
    wrong, left = [], 0
    for c, text, encoding in zip(chars, texts, encodings):
        ids = _rewritten_ids(static_encoder, text)
        if ids is None:
            left += 1
        elif ids != [t for t in encoding.ids if t != static_encoder._unk_id]:
            wrong.append(hex(ord(c)))
    assert wrong == []
    assert left < 1000


# Letters that decompose, marks, CJK, punctuation and whitespace outside ASCII, controls, emoji, a character
# whose normal form keeps a combining one (U+0344 -> U+0308 U+0301, both stripped; U+1D15E keeps U+1D165),
# characters Python's tables and the tokenizer's disagree on, the tokenizer's added tokens.
PIECES = [*"abcXYZ019 .,-\n\t", *"éÉßİΣσж東京×°—’“”…\u00a0\u3000\u2028\u200b\x0b\x1c\x85\x7f\x00\u0301\u0344",
          "\U0001f642", "\U0001d15e", "\u037e", "\u1fef", "\u166d", "\u0898", "\U000111c9", "ж" * 60, "é" * 120,
          "[UNK]", "[PAD]", "##", "un"]


@settings(max_examples=400, deadline=None, derandomize=True)
@given(st.lists(st.sampled_from(PIECES), max_size=300).map("".join))
def test_any_text_gets_the_tokenizers_ids(static_encoder, text):
    ids = None if static_encoder.holds_added_token(text) else _rewritten_ids(static_encoder, text)
    expected = _tokenizer_ids(static_encoder, text)
    if ids is not None:
        assert ids == expected[:static_encoder.max_tokens]
    assert static_encoder._token_ids(text) == expected[:static_encoder.max_tokens]


@settings(max_examples=200, deadline=None, derandomize=True)
@given(st.text(max_size=200))
def test_arbitrary_unicode_gets_the_tokenizers_ids(static_encoder, text):
    assert static_encoder._token_ids(text) == _tokenizer_ids(static_encoder, text)[:static_encoder.max_tokens]


def test_a_word_of_many_bytes_is_counted_in_characters(static_encoder):
    """WordPiece makes one [UNK] of a word over 100 characters: 60 "ж" are 120 bytes and still pieces."""
    assert len(_rewritten_ids(static_encoder, "ж" * 60)) > 1
    assert _rewritten_ids(static_encoder, "ж" * 101) == []          # one [UNK], dropped
    assert _rewritten_ids(static_encoder, "ж" * 60) == _tokenizer_ids(static_encoder, "ж" * 60)


def test_what_the_rewrite_leaves_to_the_tokenizer(static_encoder, monkeypatch):
    encoder = static_encoder
    assert encoder.rewritten("\U0001d15e keeps a combining character") is None
    assert encoder.rewritten("×" * (bert_rewrite.MAX_REWRITES + 1)) is None
    assert encoder.rewritten("×" * bert_rewrite.MAX_REWRITES) is not None
    many_new = "".join(chr(0x0400 + i) for i in range(bert_rewrite.MAX_NEW_CHARS + 1))
    monkeypatch.setattr(encoder, "_rewrite", bert_rewrite.BertRewrite(encoder.tokenizer))   # an empty cache
    assert encoder.rewritten(many_new) is None
    assert len(encoder._rewrite._rewrites) == bert_rewrite.MAX_NEW_CHARS      # what was asked is kept
    assert encoder._cached_token_ids(many_new) == _tokenizer_ids(encoder, many_new)   # the chunk path
    assert encoder.rewritten(many_new) is not None                             # so the next time, covered


def test_a_full_cache_starts_again_and_stays_exact(static_encoder, monkeypatch):
    monkeypatch.setattr(bert_rewrite, "MAX_CACHED_CHARS", 8)
    rewrite = bert_rewrite.BertRewrite(static_encoder.tokenizer)
    texts = ["dé × ° ’", "東京 — …", "naïve “x”", "dé × ° ’"]
    for text in texts:
        data = rewrite(text)
        assert static_encoder.plain_tokenizer.ids(data).tolist() == _tokenizer_ids(static_encoder, text)
        assert len(rewrite._rewrites) <= 8


MMLU_PRO = Path(__file__).resolve().parents[3] / "shared" / "data" / "mmlu-pro"


@pytest.mark.skipif(not (MMLU_PRO / "dev" / "prompts.jsonl").is_file(), reason="needs ../shared/data")
def test_every_dev_prompt_takes_the_compiled_wordpiece(static_encoder):
    texts = [p.text for p in read_prompts(MMLU_PRO / "dev" / "prompts.jsonl")]
    assert sum(not t.isascii() for t in texts) > 300
    assert all(static_encoder._plain_bytes(t) is not None for t in texts)
