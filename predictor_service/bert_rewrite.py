"""Text that is not plain ASCII, rewritten into bytes the compiled WordPiece (ascii_wordpiece) reads exactly.

BERT's normaliser works character by character (clean_text, Chinese-character padding, NFD with non-spacing
marks stripped, lowercase) and its pre-tokeniser splits at whitespace and isolates punctuation, also one
character at a time. So each character outside plain ASCII can be replaced by what those two make of it,
asked once of the tokenizer's own normaliser and pre-tokeniser and cached: a letter or symbol by its
normalised form, punctuation by itself between spaces, whitespace by a space, a control character or a mark
by nothing. What is left is ASCII, which the compiled tokenizer lowercases and splits as before, and runs
of non-ASCII word characters, which it covers with WordPiece over their UTF-8 bytes (a vocabulary piece is
whole characters, so a byte-wise longest match is the character-wise one).

Why: 21% of MMLU-Pro dev prompts (391 of 1,822) hold a "×", "°" or curly quote, and such a prompt went
through the chunk cache and the tokenizer, ~200 us in process against ~26 us for a plain one; users' chat
and RAG text holds more of them.

Not rewritten (the caller takes the chunk path, exact as before): a character whose normalised form keeps a
combining character (NFD reorders those across characters, so one character's answer alone could differ),
a text with more than MAX_REWRITES characters to replace (a Python call each: 256 KiB of Chinese would
cost ~40 ms here), and a text with more than MAX_NEW_CHARS characters never seen before (the first
MAX_NEW_CHARS of them are asked and kept, so a later such text may be covered).

Not thread-safe, as the encoder's chunk cache is not: one predictor serves one thread (Triton's stub).
"""

from __future__ import annotations

import itertools
import re
import unicodedata

# What the compiled tokenizer reads as it is: printable ASCII, tab, newline, carriage return.
NOT_PLAIN = re.compile("[^\t\n\r\x20-\x7e]")
MAX_REWRITES = 4096
MAX_NEW_CHARS = 64
# Characters whose rewrite is kept; past this the cache starts again (~100 bytes an entry).
MAX_CACHED_CHARS = 1 << 16


class BertRewrite:
    """text -> UTF-8 bytes for the compiled WordPiece with exactly the tokenizer's ids, or None."""

    def __init__(self, tokenizer):
        self._normalizer, self._pre_tokenizer = tokenizer.normalizer, tokenizer.pre_tokenizer
        self._rewrites: dict[str, str | None] = {}
        self.asked = 0      # characters asked of the tokenizer so far: a caller's budget across texts

    def _rewrite(self, ch: str) -> str | None:
        parts = []
        for d in self._normalizer.normalize_str(ch):
            if d.isascii():
                if not ("\x20" <= d <= "\x7e" or d in "\t\n\r"):
                    return None
                parts.append(d)                 # the compiled tokenizer splits ASCII itself
                continue
            if unicodedata.combining(d):
                return None
            pieces = len(self._pre_tokenizer.pre_tokenize_str(f"a{d}b"))
            if pieces == 1:
                parts.append(d)                 # inside a word
            elif pieces == 2:
                parts.append(" ")               # whitespace
            elif pieces == 3:
                parts.append(f" {d} ")          # punctuation: a word of its own
            else:
                return None
        return "".join(parts)

    def __call__(self, text: str, max_new: int = MAX_NEW_CHARS) -> bytes | None:
        """At most `max_new` characters never seen before are asked of the tokenizer (and kept); a text
        with more is not rewritten."""
        # At most one past the bound: a findall over 256 KiB of Chinese took ~8 ms only to refuse it.
        found = [m[0] for m in itertools.islice(NOT_PLAIN.finditer(text), MAX_REWRITES + 1)]
        if len(found) > MAX_REWRITES:
            return None
        rewrites = self._rewrites
        distinct = set(found)
        new = [ch for ch in distinct if ch not in rewrites]
        if len(rewrites) + min(len(new), max_new) > MAX_CACHED_CHARS:
            rewrites.clear()
            new = list(distinct)
        # At most max_new asked of the tokenizer per text, but kept: a text with more comes back covered
        # once its characters have been seen (Chinese prompts warm the cache within a few).
        for ch in new[:max(max_new, 0)]:
            rewrites[ch] = self._rewrite(ch)
        self.asked += min(len(new), max(max_new, 0))
        if len(new) > max_new:
            return None
        if any(rewrites[ch] is None for ch in distinct):
            return None
        return NOT_PLAIN.sub(lambda m: rewrites[m[0]], text).encode()


__all__ = ["BertRewrite", "MAX_NEW_CHARS", "MAX_REWRITES"]
