"""Input limits shared by the predictor, its Triton model and the selector.

Kept free of heavy imports (no torch, no numpy) so the selector can read them without loading the model.
"""

MAX_PROMPT_BYTES = 64 * 1024   # UTF-8 bytes per prompt; MMLU-Pro's longest is ~6 KB
