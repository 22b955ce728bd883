"""Routoo's scoring head: a shared MLP on the prompt embedding and one learned embedding per pool model.

    h                   = relu(prompt_embedding @ w1 + b1)                       # (batch, hidden)
    quality[m]          = sigmoid((<h, quality_emb[m]> + quality_bias[m]) / T)   # (batch, n_models)
    expected_cost_usd[m] = exp(<h, cost_emb[m]> + cost_bias[m] + cost_len_coef[m] * log1p(n_chars))

A model is its row in `quality_emb`/`cost_emb`: adding one to the pool fits a new row on the frozen `h`
(`routoo add-model`), without touching the encoder or the other models. The same math runs as a fused
Triton kernel on GPUs (kernels/scoring_head.py) and as its PyTorch reference on CPUs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import numpy as np
import torch
from torch import nn

from kernels.scoring_head import scoring_head, scoring_head_reference


def log_lengths(texts: list[str]) -> torch.Tensor:
    """(batch,) float32 log(1 + characters): the length signal of the cost output."""
    return torch.from_numpy(log_lengths_numpy(texts))


def log_lengths_numpy(texts: list[str]) -> np.ndarray:
    """The same as a numpy array (the CPU serving path skips torch: ~3 us instead of ~15 at batch 1).

    C's log1p in double, rounded to fp32: the compiled one-call path (plain_fast_path) calls the same
    function, so both paths agree to the bit on any CPU (numpy's fp32 log1p may take other SIMD code)."""
    return np.array([math.log1p(len(t)) for t in texts], dtype=np.float32)


@dataclass
class HeadWeights:
    """The tensors of a trained head, in the order the kernels take them."""

    w1: torch.Tensor             # (dim, hidden)
    b1: torch.Tensor             # (hidden,)
    quality_emb: torch.Tensor    # (n_models, hidden)
    quality_bias: torch.Tensor   # (n_models,)
    cost_emb: torch.Tensor       # (n_models, hidden)
    cost_bias: torch.Tensor      # (n_models,)
    cost_len_coef: torch.Tensor  # (n_models,)

    def as_dict(self) -> dict[str, torch.Tensor]:
        return {f.name: getattr(self, f.name).detach().contiguous() for f in fields(self)}

    @classmethod
    def from_dict(cls, tensors: dict[str, torch.Tensor]) -> "HeadWeights":
        missing = [f.name for f in fields(cls) if f.name not in tensors]
        if missing:
            raise ValueError(f"head weights lack {missing}")
        weights = cls(**{f.name: tensors[f.name].float().contiguous() for f in fields(cls)})
        weights.check()
        return weights

    def check(self) -> None:
        dim, hidden = self.w1.shape
        n_models = self.quality_emb.shape[0]
        expected = {"b1": (hidden,), "quality_emb": (n_models, hidden), "quality_bias": (n_models,),
                    "cost_emb": (n_models, hidden), "cost_bias": (n_models,), "cost_len_coef": (n_models,)}
        for name, shape in expected.items():
            if tuple(getattr(self, name).shape) != shape:
                raise ValueError(f"head weight {name} has shape {tuple(getattr(self, name).shape)}, "
                                 f"expected {shape} for dim={dim}, hidden={hidden}, n_models={n_models}")

    @property
    def n_models(self) -> int:
        return int(self.quality_emb.shape[0])

    def to(self, device: torch.device | str) -> "HeadWeights":
        return HeadWeights(**{k: v.to(device) for k, v in self.as_dict().items()})

    def score(self, prompt_embedding: torch.Tensor, log_len: torch.Tensor, inv_temperature: float,
              impl: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
        """(quality, expected_cost_usd), each (batch, n_models) float32."""
        return scoring_head(prompt_embedding, *self.as_dict().values(), log_len, inv_temperature, impl=impl)


class ScoringHead(nn.Module):
    """Trainable quality branch of HeadWeights: forward gives the quality logits for the BCE loss (dropout
    on the hidden layer in training mode). Training fits the cost rows afterwards by ridge regression on
    the frozen hidden layer (training.fit_cost_rows); they live here only so `weights()` is a whole head."""

    def __init__(self, dim: int, hidden: int, n_models: int, *, dropout: float = 0.1):
        super().__init__()
        self.hidden = nn.Linear(dim, hidden)
        self.quality_emb = nn.Parameter(torch.randn(n_models, hidden) * hidden ** -0.5)
        self.quality_bias = nn.Parameter(torch.zeros(n_models))
        self.cost_emb = nn.Parameter(torch.zeros(n_models, hidden))
        self.cost_bias = nn.Parameter(torch.zeros(n_models))
        self.cost_len_coef = nn.Parameter(torch.ones(n_models))
        self.dropout = nn.Dropout(dropout)

    def forward(self, prompt_embedding: torch.Tensor) -> torch.Tensor:
        h = self.dropout(self.hidden_features(prompt_embedding))                    # (batch, hidden)
        return h @ self.quality_emb.T + self.quality_bias                           # (batch, n_models)

    def hidden_features(self, prompt_embedding: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.hidden(prompt_embedding))

    def weights(self) -> HeadWeights:
        return HeadWeights(self.hidden.weight.T.detach().clone(), self.hidden.bias.detach().clone(),
                           self.quality_emb.detach().clone(), self.quality_bias.detach().clone(),
                           self.cost_emb.detach().clone(), self.cost_bias.detach().clone(),
                           self.cost_len_coef.detach().clone())


def reference_score(weights: HeadWeights, prompt_embedding: np.ndarray, log_len: np.ndarray,
                    inv_temperature: float, quality_offset: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The eager reference on numpy inputs, for evaluation code that never needs the kernel.
    quality_offset: (batch, n_models) logits added after the temperature (a lexical part's), or None."""
    quality, cost = scoring_head_reference(torch.as_tensor(prompt_embedding, dtype=torch.float32),
                                           *weights.as_dict().values(),
                                           torch.as_tensor(log_len, dtype=torch.float32), inv_temperature,
                                           None if quality_offset is None else torch.as_tensor(quality_offset))
    return quality.numpy(), cost.numpy()
