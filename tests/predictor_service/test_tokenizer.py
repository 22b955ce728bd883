"""The static encoder's tokenizer paths (chunk cache, own WordPiece, compiled plain ASCII) against the
Hugging Face tokenizer: the same ids on every text."""

import string
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from predictor_service.windows import _window
from training.data import read_prompts


def _tokenizer_ids(encoder, text):
    return [t for t in encoder.tokenizer.encode(text, add_special_tokens=False).ids if t != encoder._unk_id]


@pytest.mark.parametrize("text", [
    "Which of these is a prime? A. 4 B. 7\nC. 9", "naïve café 東京タワー (Tokyo)", "tab\tsep\nnew\rline",
    "a\x1cb c", "x\u2028y", "\x00nul\x00 bytes", "nbsp\u00a0and\u3000ideographic", "zero\u200bwidth",
    "supercalifragilistic" * 8, "", "   ", "word " * 400, "a." * 20_000, "(x+1)^2=" * 5_000 + " tail",
    "[UNK]", "see[PAD]here [unk] [UNK]x", "split\x0bby\x0ccontrols\x85and\u2029separators " * 300,
    # Long runs with no split point (bert_words.UnknownWords), and characters on which Python's Unicode
    # tables and the tokenizer's disagree (U+166D, U+1734, U+0898, U+111C9, U+11938).
    "é" * 5_000, "ж" * 300 + " ok", "\U0001f642" * 200, "a\u0301" * 400, "\u0130" * 300, "\u1fef" * 300,
    # Stripping a control character that BERT drops must not make an added token: the tokenizer matches
    # those in the raw text only (texts the rewrite refuses, so the chunk path reads them).
    "[UN\x0bK] \U0001d15e", "[UN\x85K] " + "×" * 4097, "[UN\x1cK]x [PAD] \x0c\U0001d15e",
    "[UN\x0bK] " + "é, " * 4100, "[UN\x0bK][PAD]\x0c[SE\x1cP]" + "é," * 4100, "[[UN\x0bK]]x[UN[PA\x1fD]K]\U0001d15e",
    "[UN\x0bK]" * 300 + "[PAD]\x0b[CLS]\u2028[MA\x85SK]\U0001d15e",
    "é" * 300 + "\u2014" + "é" * 300, "\u166d" * 400, "\u1734" * 400, "\u0898" * 400, "\U000111c9" * 400,
    "\U00011938" * 400, "\u0301" * 400 + "é", "é" * 50 + "\u200b" * 300, "ß" * 60 + "é" * 200, "é" * 101 + "[PAD]" * 40,
])
def test_static_chunk_cache_tokenizes_exactly_like_the_tokenizer(static_encoder, text):
    """Both ways in: _token_ids (plain ASCII and rewritten text take the compiled WordPiece) and the chunk
    cache itself, which takes whatever the rewrite leaves."""
    static_encoder.clear_caches()
    expected = _tokenizer_ids(static_encoder, text)
    assert static_encoder._token_ids(text) == expected
    assert static_encoder._cached_token_ids(text) == expected
    assert static_encoder._cached_token_ids(text) == expected   # second time from the cache


# Characters, plus the tokenizer's added tokens, which it matches in the raw text before normalising.
TEXT_PIECES = [*string.printable, *"éß×–“”πΩ東\u00a0\x1c\x1d\x1e\x1f\x85\u2028\u2029", "[UNK]", "[PAD]", "[unk]",
               "[UN", "K]", "[PA", "D]"]   # halves that stripping a control character between them joins


@settings(max_examples=300, deadline=None, derandomize=True)  # the same examples on every CI run
@given(st.lists(st.sampled_from(TEXT_PIECES), max_size=300).map("".join))
def test_static_tokenizer_matches_on_any_text(static_encoder, text):
    """Printable-ASCII chunks take the encoder's own WordPiece, the rest the tokenizer: both must give
    exactly the tokenizer's ids, cold and from the cache."""
    static_encoder.clear_caches()
    expected = _tokenizer_ids(static_encoder, text)
    assert static_encoder._token_ids(text) == expected
    assert static_encoder._cached_token_ids(text) == expected
    assert static_encoder._cached_token_ids(text) == expected


# No whitespace: every example is one long chunk, which the chunk path cuts after the characters BERT
# isolates (bert_words.ISOLATED_CHARS), here beside the ones it must not cut at (letters, accents, a combining mark,
# a compatibility ideograph, CJK Extension B and the gap BERT's ranges skip at U+2B820).
LONG_CHUNK_PIECES = [*string.ascii_letters[:8], *string.punctuation, *"東京中文。，「」é\u0301\uf900\u3005\uff04",
                     "\U00020000", "\U0002b820", "\U0002b920", "[UNK]", "[PAD]", "x" * 101]


@settings(max_examples=200, deadline=None, derandomize=True)
@given(st.lists(st.sampled_from(LONG_CHUNK_PIECES), min_size=100, max_size=600).map("".join))
def test_long_chunks_cut_where_bert_splits_give_the_tokenizers_ids(static_encoder, text):
    static_encoder.clear_caches()
    expected = _tokenizer_ids(static_encoder, "é " + text)
    assert static_encoder._token_ids("é " + text) == expected
    assert static_encoder._cached_token_ids("é " + text) == expected


# Runs of one or a few non-ASCII letters, marks and symbols, no whitespace: pieces the encoder may decide are
# one [UNK] without the tokenizer (bert_words), beside characters that end or leave a word.
RUN_PIECES = ["é" * 97, "ж" * 60, "\U0001f642" * 40, "\u0301", "\u0130", "\u1fef", "\u166d", "\u1734", "\u0898",
              "\U000111c9", "\U00011938", "\u200b", "ß", "\u2014", "x", "\u00a0", "東"]


@settings(max_examples=150, deadline=None, derandomize=True)
@given(st.lists(st.sampled_from(RUN_PIECES), min_size=1, max_size=40).map("".join))
def test_long_runs_of_letters_give_the_tokenizers_ids(static_encoder, text):
    static_encoder.clear_caches()
    expected = _tokenizer_ids(static_encoder, text)[:static_encoder.max_tokens]
    assert static_encoder._token_ids(text) == expected
    assert static_encoder._cached_token_ids(text) == expected


def test_a_long_run_of_letters_is_decided_without_the_tokenizer(static_encoder):
    """256 KiB of one non-ASCII letter took the tokenizer ~50 ms (a 64-row Triton request 3.6 s); it is one
    [UNK], known from its one distinct character."""
    words = static_encoder._unknown_words
    assert words.is_one_unknown_word("é" * 131_071) and words.is_one_unknown_word("ж" * 300)
    assert not words.is_one_unknown_word("é" * 300 + "," + "é" * 300)      # two words and a comma
    assert not words.is_one_unknown_word("\u0301" * 400)                    # marks only: nothing left
    assert static_encoder._cached_token_ids("é" * 131_071) == []           # [UNK] is dropped


def test_a_long_unspaced_cjk_prompt_is_read_only_as_far_as_the_window():
    from predictor_service.artifact import static_encoder_from

    encoder = static_encoder_from()
    text = "東京は日本の首都である。" * 20_000
    assert sum(1 for _ in encoder._cut(text)) == 7 * 20_000   # one chunk, cut after each ideograph and 。
    assert encoder.rewritten(text) is None                    # too many characters to rewrite one by one
    assert encoder._token_ids(text) == _tokenizer_ids(encoder, text[:1000])[:encoder.max_tokens]


def test_a_long_chunk_with_an_added_token_is_still_cut_and_read_only_as_far_as_the_window():
    from predictor_service.artifact import static_encoder_from

    encoder = static_encoder_from()
    text = "[PAD]" + "a," * 131_069 + "[UNK]b"          # one 256 KiB chunk; it went to the tokenizer whole
    pieces = encoder._cut(text)
    assert [next(pieces) for _ in range(3)] == ["[PAD]", "a,", "a,"]       # lazily, the token a piece of its own
    assert sum(1 for _ in pieces) == 131_069 - 2 + 2                        # the rest, then "[UNK]" and "b"
    assert list(encoder._cut("x[UNK]y[PAD][PAD]")) == ["x", "[UNK]", "y", "[PAD]", "[PAD]"]
    encoder.clear_caches()
    assert encoder._token_ids(text) == _tokenizer_ids(encoder, text[:2000])[:encoder.max_tokens]


def test_the_chunk_path_asks_the_rewrite_for_at_most_its_budget_of_new_characters():
    """Each chunk of a long text went to the rewrite with its own budget of new characters: 80k random
    ideographs with a tail window asked ~20k of the tokenizer one by one (208 ms cold). Now the chunks of a
    text share one budget; the other chunks go to the tokenizer, exact either way."""
    from predictor_service.artifact import static_encoder_from
    from predictor_service.bert_rewrite import MAX_NEW_CHARS

    encoder = static_encoder_from(max_tokens=256, tail_tokens=192)
    text = "".join(chr(0x4E00 + (i * 7919) % 20_000) for i in range(3_000))   # 3,000 distinct, one chunk

    def windowed(text):   # the window is taken with [UNK] in it, then [UNK] dropped
        return [t for t in _window(encoder.tokenizer.encode(text, add_special_tokens=False).ids, 256, 192)
                if t != encoder._unk_id]

    before = encoder._rewrite.asked
    assert encoder._token_ids(text) == windowed(text)
    # The try at the whole text asks MAX_NEW_CHARS (and refuses it), its chunks at most as many more.
    assert encoder._rewrite.asked - before == 2 * MAX_NEW_CHARS
    again = text[::-1]                                                      # the same characters
    assert encoder._token_ids(again) == windowed(again)
    assert encoder._rewrite.asked - before == 3 * MAX_NEW_CHARS              # its chunks were cached


def test_an_added_token_that_stripping_makes_is_written_apart_not_sent_to_the_tokenizer_whole(static_encoder):
    """"[UN\x0bK]" before 256 KiB the rewrite refuses sent the whole text to the tokenizer (~130 ms); the
    token stripping makes is written as the words the tokenizer reads, and the chunk path goes on."""
    import re

    from predictor_service.bert_words import cleaned_as_bert

    split = static_encoder._added_split
    assert cleaned_as_bert("[UN\x0bK]a\u2028[PAD]\x1c[PA\x0cD]", split) == "[ UNK]a [PAD][ PAD]"
    assert cleaned_as_bert("[UN\x0bK]", None) == "[UNK]"
    assert cleaned_as_bert("ab\x0bc", re.compile("abc")) is None      # "a" is no character BERT isolates
    assert cleaned_as_bert("ab\x0bd", re.compile("abc")) == "abd"
    text = "[UN\x0bK]" + "é," * 85_000                                  # one 255 KiB chunk
    static_encoder.clear_caches()
    assert static_encoder.rewritten(text) is None
    assert static_encoder._token_ids(text) == _tokenizer_ids(static_encoder, text[:2000])[:static_encoder.max_tokens]


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
    texts = ["alpha beta gamma délta", "alpha beta epsilon zeta eta théta iota", "kappa alpha lambda mu nu é"]
    try:
        for text in texts * 2:
            assert static_encoder._cached_token_ids(text) == _tokenizer_ids(static_encoder, text)
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
        assert static_encoder._cached_token_ids(text) == _tokenizer_ids(static_encoder, text)
    assert "see" in static_encoder._chunk_ids
    assert all(len(chunk) <= encoders.CACHED_CHUNK_CHARS for chunk in static_encoder._chunk_ids)


def test_every_character_the_chunk_path_cuts_after_is_one_bert_isolates(static_encoder):
    """All ~81,000 of them (bert_words.ISOLATED_CHARS), each between letters: a word of its own (~2 s)."""
    import re

    from predictor_service.bert_words import ISOLATED_CHARS

    isolated = re.compile(f"[{ISOLATED_CHARS}]")

    tokenizer = static_encoder.tokenizer
    ab, cd = (tokenizer.encode(s, add_special_tokens=False).ids for s in ("ab", "cd"))
    chars = [chr(c) for c in range(0x21, 0x30000) if isolated.fullmatch(chr(c))]
    assert len(chars) > 80_000
    batch = lambda texts: [e.ids for e in tokenizer.encode_batch(texts, add_special_tokens=False)]  # noqa: E731
    alone, between, after = batch(chars), batch([f"ab{c}cd" for c in chars]), batch([f"ab{c}" for c in chars])
    wrong = [hex(ord(c)) for c, a, b, x in zip(chars, alone, between, after) if b != ab + a + cd or x != ab + a]
    assert wrong == []
