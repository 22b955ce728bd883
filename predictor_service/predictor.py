"""The in-process performance predictor: prompts -> per-model quality and expected cost.

One batched call per batch of prompts; the Triton model (model_repository/routoo_predictor) and the CLI
both go through `Predictor.predict`. On a CUDA device the static predictor runs as one fused kernel
(token gather + mean + normalise + head); on the CPU a plain ASCII prompt goes through one compiled call
(predictor_service.plain_fast_path) and other text through the encoder's tokenizer and
kernels.cpu_static_predictor, the same maths as numba-compiled loops. The minilm head runs through
kernels.scoring_head (kernel on CUDA, reference elsewhere). An artifact's lexical part
(predictor_service/lexical.py) adds its logits in every static path: inside the compiled CPU loop, and on
CUDA through the gather + mean kernel (kernels.lexical_logits) into the fused kernel's quality_offset.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from kernels.static_predictor import static_predictor
from predictor_service.artifact import Artifact, ArtifactError
from predictor_service.encoders import MiniLMEncoder, StaticEncoder
from predictor_service.head import log_lengths, log_lengths_numpy
from predictor_service.contract import MAX_PROMPT_BYTES



class PromptError(ValueError):
    """A prompt that cannot be scored; the message names the problem, never the prompt's text."""


def check_prompt(text: str, *, max_bytes: int = MAX_PROMPT_BYTES, size: int | None = None) -> None:
    """size: text's UTF-8 size where the caller has it (the Triton stub holds the bytes), saving an encode."""
    if not isinstance(text, str):
        raise PromptError(f"prompt must be text, got {type(text).__name__}")
    if not text or text.isspace():   # the same as `not text.strip()`, without copying the text
        raise PromptError("prompt is empty")
    size = len(text.encode("utf-8")) if size is None else size
    if size > max_bytes:
        raise PromptError(f"prompt is {size} bytes, over the limit of {max_bytes} bytes")


class Predictor:
    def __init__(self, artifact: Artifact, encoder: StaticEncoder | MiniLMEncoder, *,
                 device: str | torch.device = "cpu"):
        manifest = artifact.manifest
        if encoder.dim != manifest.dim:
            raise ArtifactError(f"encoder {manifest.encoder!r} gives dim {encoder.dim}, the head expects "
                                f"{manifest.dim}")
        if manifest.encoder_table_digest and encoder.table_digest != manifest.encoder_table_digest:
            # A table from elsewhere (another artifact, or one distilled on this machine): the head was not
            # trained on these vectors. Predictor.load takes the artifact's own table.
            raise ArtifactError("the static embedding table differs from the one this head was trained on "
                                f"(digest {encoder.table_digest[:12]} vs {manifest.encoder_table_digest[:12]}); "
                                "use the artifact's own encoder (Artifact.load_encoder)")
        self.artifact = artifact
        self.encoder = encoder
        self.device = torch.device(device)
        self.weights = artifact.weights.to(self.device)
        self.inv_temperature = float(manifest.inv_temperature)
        self._table = encoder.table.to(self.device) if isinstance(encoder, StaticEncoder) else None
        self.lexical = artifact.lexical
        if self.lexical is not None and self._table is not None and self.lexical.vocab != self._table.shape[0]:
            # The CPU loop gathers without bounds checks: ids past `vocab` would read bigram rows, or past
            # the end. The sha256 covers the file only, not this manifest field.
            raise ArtifactError(f"the lexical part is for a vocabulary of {self.lexical.vocab} token ids, the "
                                f"encoder's table has {self._table.shape[0]}")
        if self.lexical is not None and self._table is None:
            raise ArtifactError("a lexical part needs the static encoder's token ids; this artifact's encoder is "
                                f"{manifest.encoder!r}")
        self._lex_weights = self.lexical.weights.to(self.device) if self.lexical is not None else None
        self._folded = self._plain_path = None
        if self._table is not None and self.device.type == "cpu":
            from kernels.cpu_static_predictor import FoldedStaticPredictor   # numba: only where it runs
            from predictor_service.plain_fast_path import PlainFastPath

            self._folded = FoldedStaticPredictor(self._table, *self.weights.as_dict().values(),
                                                 self.inv_temperature, lexical=self.lexical,
                                                 stored_rows=encoder.stored_rows())
            self._plain_path = PlainFastPath(encoder, self._folded)
        if self.device.type == "cuda":
            # Compile the kernels now (and find a shape that does not fit the GPU, which then runs on the
            # reference): at load, not in the first request, which would otherwise wait seconds or fail.
            self.predict(["warm up"])

    @classmethod
    def load(cls, folder: str | Path, *, device: str | torch.device | None = None) -> "Predictor":
        artifact = Artifact.load(folder)
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        # MiniLM runs where the head runs; the static table is moved there by __init__.
        return cls(artifact, artifact.load_encoder(device=str(device)), device=device)

    @property
    def model_names(self) -> list[str]:
        return list(self.artifact.manifest.model_names)

    @property
    def model_prices(self) -> list[list[float | None]]:
        return [list(p) for p in self.artifact.manifest.model_prices]

    def predict(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """(quality, expected_cost_usd), each (len(texts), n_models) float32."""
        if len(texts) == 0:
            n = len(self.model_names)
            return np.zeros((0, n), np.float32), np.zeros((0, n), np.float32)
        if self._folded is not None:
            return self._predict_cpu(texts)
        return self._predict_torch(texts)

    def _predict_cpu(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """The CPU serving path, no torch op on the way: a plain ASCII prompt takes one compiled call, the
        others are tokenized by the encoder and scored together."""
        out = np.empty((2, len(texts), self._folded.n_models), np.float32)   # quality, expected cost
        rest = [i for i, text in enumerate(texts) if not self._plain_path.score(text, out, i)]
        if rest:
            others = [texts[i] for i in rest]
            tokens = self.encoder.tokenize(others)
            out[0, rest], out[1, rest] = self._folded.predict(
                tokens.token_ids.numpy(), tokens.offsets.numpy(), log_lengths_numpy(others))
        return out[0], out[1]

    @torch.inference_mode()
    def _predict_torch(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        log_len = log_lengths(texts).to(self.device)
        if self._table is not None:
            tokens = self.encoder.tokenize(texts)
            offset = None if self.lexical is None else self.lexical.logits(tokens.token_ids, tokens.offsets,
                                                                           weights=self._lex_weights)
            quality, cost = static_predictor(tokens.token_ids.to(self.device), tokens.offsets.to(self.device),
                                             self._table, log_len, *self.weights.as_dict().values(),
                                             self.inv_temperature, trusted=True, quality_offset=offset)
        else:
            embedding = torch.from_numpy(self.encoder.encode(texts)).to(self.device)
            quality, cost = self.weights.score(embedding, log_len, self.inv_temperature)
        return quality.cpu().numpy(), cost.cpu().numpy()
