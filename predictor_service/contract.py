"""Input limits shared by the predictor, its Triton model and the selector.

Kept free of heavy imports (no torch, no numpy) so the selector can read them without loading the model.
"""

import os

# UTF-8 bytes per prompt. 256 KiB holds what users send (few-shot templates, system prompts, RAG context and
# chat history: ~64k tokens); MMLU-Pro's longest is ~6 KB. The static encoder reads its window of a prompt
# of any size in time linear in its bytes (docs/serving.md). ROUTOO_MAX_PROMPT_BYTES overrides it for every
# process started with it in the environment (routoo serve passes its environment on to tritonserver).
DEFAULT_MAX_PROMPT_BYTES = 256 * 1024
MAX_PROMPT_BYTES_ENV = "ROUTOO_MAX_PROMPT_BYTES"


def max_prompt_bytes_from(environ=os.environ) -> int:
    raw = environ.get(MAX_PROMPT_BYTES_ENV, "").strip()
    if not raw:
        return DEFAULT_MAX_PROMPT_BYTES
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise ValueError(f"{MAX_PROMPT_BYTES_ENV} must be a positive whole number of bytes, got {raw!r}")
    return value


MAX_PROMPT_BYTES = max_prompt_bytes_from()
