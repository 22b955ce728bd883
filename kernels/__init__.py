"""Fused Triton kernels for the predictor, each beside its eager PyTorch reference.

One op per module; each exposes `<op>` (dispatcher, impl="auto" | "triton" | "reference"),
`<op>_forward` (kernel launcher) and `<op>_reference`. The static predictor's CPU serving path is
kernels.cpu_static_predictor (numba; imported only where it runs). Imports on machines without Triton or a
GPU.
"""

from ._triton_utils import HAS_TRITON, INTERPRET
from .scoring_head import scoring_head, scoring_head_forward, scoring_head_reference
from .static_embed import static_embed, static_embed_forward, static_embed_reference
from .static_predictor import static_predictor, static_predictor_forward, static_predictor_reference

__all__ = [
    "HAS_TRITON", "INTERPRET",
    "scoring_head", "scoring_head_forward", "scoring_head_reference",
    "static_embed", "static_embed_forward", "static_embed_reference",
    "static_predictor", "static_predictor_forward", "static_predictor_reference",
]
