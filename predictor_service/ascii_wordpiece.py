"""BERT's tokenizer for plain ASCII text and for bert_rewrite's rewrites, compiled with numba: text bytes ->
token ids in one call.

For a text of printable ASCII, spaces, tabs and newlines (no added token like "[UNK]" in it) the BERT
normaliser only lowercases, the pre-tokeniser splits at whitespace and makes every other non-alphanumeric
character a token of its own, and WordPiece covers each alphanumeric run longest-prefix-first. That is all
this does, over the UTF-8 bytes, with the vocabulary in two open-addressing hash tables (word starts and
'##' continuations). A rewritten text (predictor_service/bert_rewrite.py) also holds non-ASCII characters,
each already what BERT's normaliser makes of it, and non-ASCII punctuation already set apart by spaces: a
run of them is read as a word, and WordPiece covers it over its bytes (a piece is whole characters).
Exactly the tokenizer's ids (tested against it on every dev prompt, every code point, random text and
property tests); the encoder sends what neither covers down its chunk-cache path.

Why: the Python chunk cache costs ~30 us a prompt once its words were seen and ~150-300 us for a prompt
with new words, and 2-3x that inside Triton's stub; this takes a few us either way.
"""

from __future__ import annotations

import numpy as np

from kernels.cpu_jit import compiled

_FNV_OFFSET = np.uint64(14695981039346656037)
_FNV_PRIME = np.uint64(1099511628211)


@compiled()
def _hash(data, start, end, kind):
    """FNV-1a of the kind byte (0: a word's first piece, 1: a '##' continuation) then data[start:end]."""
    h = (_FNV_OFFSET ^ np.uint64(kind)) * _FNV_PRIME
    for i in range(start, end):
        h = (h ^ np.uint64(data[i])) * _FNV_PRIME
    return h


@compiled()
def _lookup(data, start, end, kind, slots, keys):
    """Id of the piece data[start:end] of that kind, or -1. A slot is one row of `slots`: (hash, key start
    in `keys`, key length + 1 with 0 for empty, id), so a probe touches one cache line."""
    length = np.uint64(end - start + 1)
    h = _hash(data, start, end, kind)
    mask = slots.shape[0] - 1
    slot = np.int64(h & np.uint64(mask))
    while slots[slot, 2] != 0:
        if slots[slot, 0] == h and slots[slot, 2] == length + np.uint64(1):
            k = np.int64(slots[slot, 1])
            same = keys[k] == kind
            for i in range(end - start):
                if not same:
                    break
                same = keys[k + 1 + i] == data[start + i]
            if same:
                return np.int64(slots[slot, 3])
        slot = (slot + 1) & mask
    return -1


@compiled()
def _wordpiece(data, start, end, out, n, unk_id, max_word, slots, keys, longest):
    """Writes the WordPiece ids of the word data[start:end] to out[n:] (as far as out goes); returns the
    new count. max_word: the longest word in bytes that is not one [UNK] (the caller counts a word's
    continuation bytes in: the tokenizer's limit is in characters)."""
    if end - start > max_word:
        out[n] = unk_id
        return n + 1
    first, pos = n, start
    while pos < end:
        kind = 0 if pos == start else 1
        found, stop = -1, min(end, pos + longest[kind])
        while stop > pos:
            found = _lookup(data, pos, stop, kind, slots, keys)
            if found >= 0:
                break
            stop -= 1
        if found < 0:                      # the word cannot be covered: one [UNK] for all of it
            out[first] = unk_id
            return first + 1
        if n < out.shape[0]:
            out[n] = found
        n += 1
        pos = stop
    return n


@compiled()
def _compact(out, n, drop_unk, unk_id):
    """Moves the first n ids of out, less every [UNK] if drop_unk, to its front, in order; returns their
    count."""
    kept = 0
    for j in range(n):
        if not drop_unk or out[j] != unk_id:
            out[kept] = out[j]
            kept += 1
    return kept


@compiled()
def is_plain_ascii(data):
    """Whether every byte is printable ASCII, a space, a tab or a newline (the text this tokenizer covers,
    given no added token in it)."""
    for i in range(len(data)):
        c = data[i]
        if not (32 <= c <= 126 or c == 9 or c == 10 or c == 13):
            return False
    return True


@compiled()
def _in_word(c):
    """ASCII letters and digits, and any byte of a non-ASCII character: outside ASCII, bert_rewrite leaves
    word characters, and punctuation between spaces (read here as a word of one character, which WordPiece
    gives the punctuation's own id)."""
    return (48 <= c <= 57) or (97 <= c <= 122) or c >= 128


@compiled()
def plain_ascii_ids_into(data, out, max_tokens, drop_unk, unk_id, max_word, slots, keys, longest):
    """Writes the token ids of a plain ASCII or rewritten text (bytes), cut at max_tokens, [UNK] dropped if
    drop_unk, to out (at least max_tokens + 128 long: one word's pieces may pass max_tokens); returns their
    count."""
    size = len(data)
    lowered = np.empty(size, np.uint8)
    for j in range(size):
        c = data[j]
        lowered[j] = c + 32 if 65 <= c <= 90 else c
    n, i = 0, 0
    while i < size and n < max_tokens:
        c = lowered[i]
        if c == 32 or c == 9 or c == 10 or c == 13:
            i += 1
            continue
        j = i + 1                          # punctuation is a token of its own; letters and digits run on
        continuation = 0                   # bytes 10xxxxxx: the word's length in characters is j - i less them
        if _in_word(c):
            while j < size and _in_word(lowered[j]):
                continuation += (lowered[j] & 0xC0) == 0x80
                j += 1
        n = _wordpiece(lowered, i, j, out, n, unk_id, max_word + continuation, slots, keys, longest)
        i = j
    n = min(n, max_tokens)
    return _compact(out, n, drop_unk, unk_id)


@compiled()
def window_buffer_size(size, max_tokens):
    """Length of the `out` buffer plain_ascii_window_into needs for a text of `size` bytes: every token
    consumes at least one byte, so a whole text never has more tokens than bytes."""
    return max(size, max_tokens) + 128


@compiled()
def plain_ascii_window_into(data, out, max_tokens, tail_tokens, drop_unk, unk_id, max_word, slots, keys,
                            longest):
    """Like plain_ascii_ids_into, but a text longer than max_tokens keeps its first max_tokens - tail_tokens
    and its last tail_tokens ids (the window is cut before [UNK]s are dropped, as truncation is); out must
    be window_buffer_size(len(data), max_tokens) long. tail_tokens = 0 is plain_ascii_ids_into itself."""
    if tail_tokens == 0:
        return plain_ascii_ids_into(data, out, max_tokens, drop_unk, unk_id, max_word, slots, keys, longest)
    n = plain_ascii_ids_into(data, out, len(data) + 1, False, unk_id, max_word, slots, keys, longest)
    if n > max_tokens:
        head = max_tokens - tail_tokens
        for j in range(tail_tokens):
            out[head + j] = out[n - tail_tokens + j]
        n = max_tokens
    return _compact(out, n, drop_unk, unk_id)


@compiled()
def _plain_ascii_ids(data, max_tokens, tail_tokens, drop_unk, unk_id, max_word, slots, keys, longest):
    out = np.empty(window_buffer_size(len(data), max_tokens) if tail_tokens else max_tokens + 128, np.int64)
    n = plain_ascii_window_into(data, out, max_tokens, tail_tokens, drop_unk, unk_id, max_word, slots, keys,
                                longest)
    return out[:n].copy()


def _table(pieces: dict[tuple[int, bytes], int]):
    """Open-addressing hash table of (kind, piece bytes) -> id: (slots, keys, longest piece per kind)."""
    capacity = 1 << max(4, (2 * len(pieces) - 1).bit_length())
    slots = np.zeros((capacity, 4), np.uint64)
    keys = np.frombuffer(b"".join(bytes([kind]) + piece for kind, piece in pieces) or b"\0", np.uint8).copy()
    offset, mask = 0, capacity - 1
    longest = np.zeros(2, np.int64)
    for (kind, piece), token_id in pieces.items():
        h = int(_hash(piece, 0, len(piece), kind))
        slot = h & mask
        while slots[slot, 2] != 0:
            slot = (slot + 1) & mask
        slots[slot] = (h, offset, len(piece) + 2, token_id)
        offset += len(piece) + 1
        longest[kind] = max(longest[kind], len(piece))
    return slots, keys, longest


class PlainAsciiWordPiece:
    """The compiled tokenizer for one WordPiece vocabulary."""

    def __init__(self, vocab: dict[str, int], *, unk_id: int, max_word_chars: int, max_tokens: int,
                 tail_tokens: int = 0, prefix: str = "##"):
        pieces = {}
        for token, token_id in vocab.items():   # non-ASCII pieces too, for text bert_rewrite rewrote
            continuation = token.startswith(prefix) and len(token) > len(prefix)
            key = (1, token[len(prefix):].encode()) if continuation else (0, token.encode())
            pieces[key] = token_id
        # Arrays, not a tuple of them: numba types a tuple argument on every call (~20 us).
        self.table = _table(pieces)   # (slots, keys, longest)
        self.unk_id, self.max_word_chars, self.max_tokens = unk_id, max_word_chars, max_tokens
        self.tail_tokens = tail_tokens   # of the max_tokens a long text keeps, how many come from its end
        self.ids(b"warm up")   # compile (or load the compiled code) now, not in the first request

    @staticmethod
    def covers(text: bytes) -> bool:
        """Whether text is plain ASCII, which this tokenizer handles (given no added token in it: the
        caller's check, the tokenizer matches those in the raw text)."""
        return is_plain_ascii(text)

    def ids(self, text: bytes, *, drop_unk: bool = True) -> np.ndarray:
        """int64 ids of a plain ASCII text (printable ASCII and \\t \\n \\r only, no added token) or of
        bert_rewrite's rewrite of another, cut at max_tokens (head and tail_tokens of tail). drop_unk=False
        keeps [UNK]s and every id (max_tokens does not apply), as a chunk's cached ids must: a prompt's ids are
        truncated before its [UNK]s go."""
        if not drop_unk:
            return _plain_ascii_ids(text, len(text) + 1, 0, False, self.unk_id, self.max_word_chars, *self.table)
        return _plain_ascii_ids(text, self.max_tokens, self.tail_tokens, drop_unk, self.unk_id,
                                self.max_word_chars, *self.table)
