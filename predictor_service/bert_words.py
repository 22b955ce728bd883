"""BERT's tokenizer, character by character: where its pre-tokeniser splits that Python's str.split() does
not, which characters it always isolates, and which long pieces it makes a single [UNK] of.

A run of letters with no whitespace or punctuation (256 KiB of "é", of Cyrillic, of emoji) is one word to
BERT's pre-tokeniser, and WordPiece answers [UNK] for any word of more than `max_input_chars_per_word`
characters. The tokenizer still normalises and aligns the whole run first: ~45-50 ms for a 256 KiB one,
so a 64-row request of them held Triton's only instance for 3.6 s. Here the answer comes from the run's
distinct characters, each put through the tokenizer's own normaliser and pre-tokeniser once (and cached):
BERT normalises character by character (clean_text, Chinese-character padding, NFD with non-spacing marks
stripped, lowercase), so a run is one word if each of its characters stays inside a word between two
letters, and its normalised length is the sum of each character's count times its normalised length.
Asking the tokenizer, not Python's unicodedata, keeps the answer exact whatever Unicode version each was
built with (they differ on a few hundred characters). A run with many distinct characters goes to the
tokenizer as before.
"""

from __future__ import annotations

import re

# Whitespace to Python's str.split() but not to BERT's pre-tokeniser (which strips them as control
# characters or keeps them inside a word).
SPLIT_DISAGREES = re.compile("[\x0b\x0c\x1c-\x1f\x85\u2028\u2029]")
# What BERT's normaliser (clean_text) makes of them before it splits: the controls go, the two separators
# become spaces. Done first (regex substitutions, in C: str.translate is per character on non-ASCII text),
# the whitespace split is BERT's again and such a text keeps the chunk path. (It used to go to the
# tokenizer whole, then be cut to the window: one \x0c in a 256 KiB prompt made it ~135 ms instead of
# 0.2 ms, and a 64-row request of them held Triton's instance for 5.8 s.)
BERT_STRIPS = re.compile("[\x0b\x0c\x1c-\x1f\x85]")
BERT_SPACES = re.compile("[\u2028\u2029]")
# Characters BERT's pre-tokeniser always makes words of their own: ASCII punctuation, the CJK ideographs its
# normaliser pads with spaces (BertNormalizer's handle_chinese_chars ranges), and common CJK punctuation
# (Unicode P*). A whitespace chunk cut just after one of them tokenizes to the same ids, so a long chunk is
# cut there (LONG_CHUNK_CHARS) and the window stops reading once it has its tokens: 256 KiB of Chinese
# with no spaces is one chunk, which went to the tokenizer whole (~100-150 ms).
ISOLATED_CHARS = ("!-/:-@\\[-`{-~\u3001\u3002\u300c-\u300f\uff01\uff0c\uff1a\uff1b\uff1f\u3400-\u4dbf\u4e00-\u9fff"
                   "\uf900-\ufaff\U00020000-\U0002a6df\U0002a700-\U0002b81f\U0002b920-\U0002ceaf\U0002f800-\U0002fa1f")
_ISOLATED = re.compile(f"[{ISOLATED_CHARS}]")


def cleaned_as_bert(text: str, added_split: re.Pattern | None) -> str | None:
    """text with the characters Python and BERT disagree on as whitespace made what BERT's normaliser makes
    of them (BERT_STRIPS, BERT_SPACES), its added tokens as the tokenizer sees them; None where that cannot
    be written as text.

    The tokenizer matches added tokens (`added_split`) in the raw text, then normalises the text between
    them. So stripping can join a token that it never matches: "[UN\x0bK]" is the words "[", "unk", "]".
    Such a token gets a space after its first character where BERT isolates that character anyway ("["):
    the same words, no added token. (The caller used to send such a text to the tokenizer whole: ~200 ms
    for 256 KiB.) None where the first character is not one BERT isolates."""
    def clean(segment: str) -> str:
        return BERT_SPACES.sub(" ", BERT_STRIPS.sub("", segment))

    if added_split is None:
        return clean(text)
    parts, at = [], 0
    for token in added_split.finditer(text):
        parts += [clean(text[at:token.start()]), token[0]]
        at = token.end()
    parts.append(clean(text[at:]))
    for i in range(0, len(parts), 2):          # the cleaned text between the raw text's own tokens
        made = [m[0] for m in added_split.finditer(parts[i])]
        if any(not _ISOLATED.fullmatch(token[0]) for token in made):
            return None
        if made:
            parts[i] = added_split.sub(lambda m: f"{m[0][0]} {m[0][1:]}", parts[i])
    return "".join(parts)


# The pieces of a chunk: up to and including the next isolated character, or the rest. Found lazily
# (finditer), so a head-only window reads ~256 pieces of a 256 KiB chunk, not all of them.
# (A run then its optional end, or a lone isolated character: no backtracking. The earlier
# "[^X]*[X]|[^X]+" rescanned a 128k-character run with no isolated character once per position: 5 ms.)
PIECES = re.compile(f"[^{ISOLATED_CHARS}]+[{ISOLATED_CHARS}]?|[{ISOLATED_CHARS}]")
LONG_CHUNK_CHARS = 256

# Shorter pieces go to the tokenizer: it is fast on them.
MIN_PIECE_CHARS = 256
# More distinct characters than this: not an attack-shaped run; the tokenizer decides.
MAX_DISTINCT_CHARS = 64
# Characters whose answer is kept; past this the cache starts again (it holds ints, ~100 bytes an entry).
MAX_CACHED_CHARS = 1 << 16


def max_word_chars_of(spec: dict) -> int | None:
    """WordPiece's max_input_chars_per_word where the tokenizer (its JSON as a dict) is a BERT pipeline
    (BertNormalizer, BertPreTokenizer, WordPiece) whose normaliser works character by character; None
    otherwise, and then nothing is decided here."""
    normalizer, pre, model = spec.get("normalizer") or {}, spec.get("pre_tokenizer") or {}, spec.get("model") or {}
    if (normalizer.get("type") != "BertNormalizer" or pre.get("type") != "BertPreTokenizer"
            or model.get("type") != "WordPiece"):
        return None
    return int(model.get("max_input_chars_per_word", 100))


class UnknownWords:
    """Decides, for long pieces, "exactly one [UNK]" without tokenizing them (see the module's docstring)."""

    def __init__(self, tokenizer, max_word_chars: int):
        self._normalizer, self._pre_tokenizer = tokenizer.normalizer, tokenizer.pre_tokenizer
        self.max_word_chars = max_word_chars
        self._lengths: dict[str, int | None] = {}     # character -> normalised length; None: ends a word

    def _length(self, ch: str) -> int | None:
        length = self._lengths.get(ch, -1)
        if length == -1:
            text = self._normalizer.normalize_str(ch)
            inside = len(self._pre_tokenizer.pre_tokenize_str(f"a{text}b")) == 1
            length = len(text) if inside else None
            if len(self._lengths) >= MAX_CACHED_CHARS:
                self._lengths.clear()
            self._lengths[ch] = length
        return length

    def is_one_unknown_word(self, piece: str) -> bool:
        """True only where the tokenizer gives `piece` (no added token in it) exactly one [UNK]: one word,
        longer than max_word_chars once normalised. False means "not decided here", not "not [UNK]"."""
        if len(piece) < MIN_PIECE_CHARS:
            return False
        distinct = set(piece)
        if len(distinct) > MAX_DISTINCT_CHARS:
            return False
        total = 0
        for ch in distinct:
            length = self._length(ch)
            if length is None:
                return False
            total += piece.count(ch) * length
        return total > self.max_word_chars
