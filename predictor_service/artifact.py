"""Trained predictor artifacts: a folder with `head.safetensors` and `manifest.json`.

The manifest records what is needed to use and to reproduce the head: the encoder (name, dims, maximum
tokens, digest of the static table), the pool's model names and prices in output order, the temperature,
the training data digests and hyper-parameters, and the dev metrics measured at training time.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from safetensors.torch import load_file, save_file

from predictor_service.head import HeadWeights

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
WEIGHTS = "head.safetensors"


class ArtifactError(ValueError):
    """An artifact folder that cannot be used; the message names the folder and the problem."""


@dataclass
class Manifest:
    encoder: str                                   # "static" | "minilm"
    dim: int
    hidden: int
    max_tokens: int
    model_names: list[str]                         # output column order
    model_prices: list[list[float | None]]         # [input_usd_per_mtok, output_usd_per_mtok] per model
    inv_temperature: float = 1.0
    encoder_table_digest: str | None = None        # static encoder only
    training: dict = field(default_factory=dict)   # data digests, hyper-parameters, epochs, seed
    dev_metrics: dict = field(default_factory=dict)
    format_version: int = FORMAT_VERSION


@dataclass
class Artifact:
    manifest: Manifest
    weights: HeadWeights

    def save(self, folder: str | Path) -> Path:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        save_file(self.weights.as_dict(), str(folder / WEIGHTS))
        (folder / MANIFEST).write_text(json.dumps(asdict(self.manifest), indent=2) + "\n")
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> "Artifact":
        folder = Path(folder)
        if not (folder / MANIFEST).is_file() or not (folder / WEIGHTS).is_file():
            raise ArtifactError(f"{folder}: not a Routoo artifact (needs {MANIFEST} and {WEIGHTS}); "
                                f"train one with `routoo train`")
        try:
            raw = json.loads((folder / MANIFEST).read_text())
            manifest = Manifest(**raw)
        except (json.JSONDecodeError, TypeError) as e:
            raise ArtifactError(f"{folder / MANIFEST}: unreadable manifest ({e})") from e
        if manifest.format_version != FORMAT_VERSION:
            raise ArtifactError(f"{folder}: format version {manifest.format_version}, this Routoo reads "
                                f"{FORMAT_VERSION}")
        try:
            weights = HeadWeights.from_dict(load_file(str(folder / WEIGHTS)))
        except ValueError as e:
            raise ArtifactError(f"{folder / WEIGHTS}: {e}") from e
        if weights.n_models != len(manifest.model_names) or weights.w1.shape[0] != manifest.dim:
            raise ArtifactError(f"{folder}: weights ({weights.n_models} models, dim {weights.w1.shape[0]}) "
                                f"disagree with the manifest ({len(manifest.model_names)} models, "
                                f"dim {manifest.dim})")
        return cls(manifest, weights)


def default_artifact_path() -> Path:
    """The committed default: static encoder, trained on mmlu-pro/train (`make train-default`)."""
    return Path(__file__).resolve().parent / "default_artifact"
