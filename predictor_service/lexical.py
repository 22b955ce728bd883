"""The lexical part of a predictor: per-model weights over token and hashed-bigram ids, a wide linear part
beside the deep head (kernels/lexical_logits.py has the maths and the feature hash).

    quality[m] = sigmoid(head_logit[m] * inv_temperature + mean_f(weights[f, m]))   f: the prompt's features

An artifact carries it, when training kept it (evals/lexical.py), as
`lexical.safetensors`: only the rows that training fitted (features seen in enough train prompts; every
other row is exactly zero), int8 with one fp32 scale per row like the encoder's table, and their row
indices. The manifest's `lexical` record holds the file's sha256, the vocabulary size and the bigram bits;
load checks the digest. An artifact without the record has no lexical part and scores as before.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.numpy import load_file, save_file

from kernels.lexical_logits import check_bigram_bits, lexical_features, lexical_logits
from predictor_service.encoder_files import decode_table, encode_table, sha256_file

LEXICAL_FILE = "lexical.safetensors"
# int8 rows with per-row scales: the default artifact's 2^16-bucket mmlu-pro part, 65,828 fitted rows x 32
# models, is 2.6 MB instead of 8.7 MB fp32 (docs/evaluation.md, "Lexical part"); fp16 and fp32 for comparison.
LEXICAL_STORAGES = ("fp32", "fp16", "int8")


class LexicalError(ValueError):
    """A lexical part that is missing, malformed or not the one an artifact was trained with."""


@dataclass
class LexicalPart:
    weights: torch.Tensor     # (vocab + 2^bigram_bits, n_models) fp32; rows never fitted are zero
    vocab: int                # token ids are [0, vocab), bigram buckets follow
    bigram_bits: int
    storage: str = "int8"     # how save() stores the fitted rows

    def __post_init__(self):
        check_bigram_bits(self.bigram_bits)
        if self.storage not in LEXICAL_STORAGES:
            raise LexicalError(f"unknown lexical storage {self.storage!r}; choose one of {list(LEXICAL_STORAGES)}")
        if self.weights.dim() != 2 or self.weights.shape[0] != self.n_features:
            raise LexicalError(f"lexical weights have shape {tuple(self.weights.shape)}, expected "
                               f"({self.n_features}, n_models) for vocab {self.vocab} + 2^{self.bigram_bits}")

    @property
    def n_features(self) -> int:
        return self.vocab + (1 << self.bigram_bits)

    @property
    def n_models(self) -> int:
        return int(self.weights.shape[1])

    def features(self, token_ids: np.ndarray, offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return lexical_features(token_ids, offsets, self.vocab, self.bigram_bits)

    def logits(self, token_ids: torch.Tensor, offsets: torch.Tensor, *, weights: torch.Tensor | None = None,
               impl: str = "auto") -> torch.Tensor:
        """(batch, n_models) fp32 lexical logits of ragged token ids (a TokenBatch's), on weights' device
        (default: these weights, on the CPU)."""
        weights = self.weights if weights is None else weights
        ids, feature_offsets = self.features(token_ids.cpu().numpy(), offsets.cpu().numpy())
        return lexical_logits(torch.from_numpy(ids).to(weights.device),
                              torch.from_numpy(feature_offsets).to(weights.device), weights, impl=impl)

    def rounded(self) -> "LexicalPart":
        """The same part with its weights rounded to `storage`, as save() stores them and load() reads them."""
        rows, stored = self._stored()
        weights = torch.zeros_like(self.weights)
        weights[torch.from_numpy(rows)] = torch.from_numpy(decode_table(stored)[0])
        return LexicalPart(weights, self.vocab, self.bigram_bits, self.storage)

    def _stored(self) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        weights = self.weights.float().numpy()
        rows = np.flatnonzero(np.any(weights != 0, axis=1)).astype(np.int64)
        return rows, encode_table(weights[rows], self.storage)

    def save(self, folder: Path) -> dict:
        """Writes LEXICAL_FILE into `folder`; returns the manifest record."""
        rows, stored = self._stored()
        path = Path(folder) / LEXICAL_FILE
        save_file({**stored, "rows": rows.astype(np.int32)}, str(path))   # < 2^31 features (MAX_BIGRAM_BITS)
        return {"file": LEXICAL_FILE, "sha256": sha256_file(path), "vocab": self.vocab,
                "bigram_bits": self.bigram_bits, "n_models": self.n_models, "storage": self.storage,
                "fitted_rows": int(len(rows))}

    @classmethod
    def load(cls, folder: Path, record: dict) -> "LexicalPart":
        """From an artifact folder and its manifest's `lexical` record; LexicalError naming the problem."""
        path = Path(folder) / record.get("file", LEXICAL_FILE)
        if not path.is_file():
            raise LexicalError(f"{path}: missing (the manifest records a lexical part); copy the artifact whole")
        if sha256_file(path) != record.get("sha256"):
            raise LexicalError(f"{path}: differs from the lexical part this artifact was trained with (digest "
                               "mismatch); the folder was altered or mixed with another artifact's")
        try:
            tensors = load_file(str(path))
            rows = tensors.pop("rows")
            values, storage = decode_table(tensors)
            vocab, bits, n_models = int(record["vocab"]), int(record["bigram_bits"]), int(record["n_models"])
        except Exception as e:   # safetensors' own errors, a missing key, a malformed record
            raise LexicalError(f"{path}: unreadable lexical part ({type(e).__name__}: {e})") from e
        check_bigram_bits(bits)
        n_features = vocab + (1 << bits)
        if values.shape != (len(rows), n_models) or (len(rows) and (rows.min() < 0 or rows.max() >= n_features)):
            raise LexicalError(f"{path}: {values.shape} rows at indices outside [0, {n_features}) or not "
                               f"{n_models} models wide")
        weights = torch.zeros(n_features, n_models)
        weights[torch.from_numpy(rows.astype(np.int64))] = torch.from_numpy(values)
        return cls(weights, vocab, bits, storage)


__all__ = ["LEXICAL_FILE", "LexicalError", "LexicalPart"]
