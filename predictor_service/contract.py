"""What both sides of the Triton boundary agree on: the served models' names, their tensors, the config
parameters that publish the pool, the prompt size limit and the default addresses.

Imported by the Triton models (model_repository/*/1/model.py), the launcher (triton_server.py,
onnx_export.py), the clients (remote.py, selector/triton_scores.py), the selector's and gateway's
configs, the CLI and the tests. The committed `config.pbtxt` files spell the same names, which
tests/predictor_service/test_contract.py checks. Kept free of heavy imports (no torch, no numpy): the selector reads it
without loading the model.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass

# --- models ------------------------------------------------------------------------------------------
PREDICTOR_MODEL = "routoo_predictor"   # prompts -> per-model quality and expected cost
ECHO_FLOOR_MODEL = "echo_floor"        # the same tensors, zeros out: what Triton itself costs
SERVED_MODELS = (PREDICTOR_MODEL, ECHO_FLOOR_MODEL)

# --- tensors (KServe v2) -------------------------------------------------------------------------------
PROMPT = "PROMPT"                      # BYTES (batch, 1): one UTF-8 prompt a row
PROMPT_DATATYPE = "BYTES"
QUALITY = "QUALITY"                    # FP32 (batch, n_models): probability each model answers correctly
EXPECTED_COST_USD = "EXPECTED_COST_USD"  # FP32 (batch, n_models): at the prices the predictor was trained with
OUTPUTS = (QUALITY, EXPECTED_COST_USD)
OUTPUT_DATATYPE = "FP32"

# --- config parameters (string values) ------------------------------------------------------------------
ARTIFACT_PATH = "artifact_path"        # the artifact folder; relative = inside the model's version folder
TORCH_THREADS = "torch_threads"        # intra-op threads per instance
POOL_MODELS = "pool_models"            # JSON list of model names, the output column order
POOL_PRICES = "pool_prices"            # JSON list of [input_usd_per_mtok, output_usd_per_mtok], null = unknown
# QUALITY's classification labels (Triton's label_filename): the pool's names, one a line, beside config.pbtxt.
POOL_LABELS_FILE = "pool_models.txt"

# --- default addresses -----------------------------------------------------------------------------------
# Loopback: none of the servers authenticates by default (the gateway only with --api-key-env).
LOOPBACK = "127.0.0.1"
# Triton's conventional ports, which KServe-v2 clients and perf_analyzer assume.
TRITON_HTTP_PORT, TRITON_GRPC_PORT, TRITON_METRICS_PORT = 8000, 8001, 8002
SELECTOR_PORT = 50051                  # gRPC's customary example port
GATEWAY_PORT = 8080                    # the OpenAI-compatible HTTP gateway
TRITON_GRPC_ADDRESS = f"{LOOPBACK}:{TRITON_GRPC_PORT}"
SELECTOR_ADDRESS = f"{LOOPBACK}:{SELECTOR_PORT}"

# --- prompt size limit -----------------------------------------------------------------------------------
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


# --- the served pool -------------------------------------------------------------------------------------
def model_name_problem(name: object) -> str | None:
    """Why `name` cannot name a pool model, or None. Names travel one a line (the label file beside
    config.pbtxt, Prometheus label values, log lines), so no control character, line separator or lone
    surrogate: a newline would shift every later label by one."""
    if not isinstance(name, str) or not name:
        return "must be a non-empty string"
    for ch in name:
        if ord(ch) < 0x20 or 0x7F <= ord(ch) < 0xA0 or ch in "\u2028\u2029" or 0xD800 <= ord(ch) <= 0xDFFF:
            return f"holds the character U+{ord(ch):04X} (control characters, line separators and lone " \
                   f"surrogates cannot be in a model name)"
    return None


class ServedPoolError(ValueError):
    """A model config that does not publish a usable pool; the message names the model and the bad value.

    Callers re-raise it as their own error (RemoteScoringError, selector.pool.PoolError)."""


def pool_parameters(names: list[str], prices: list) -> dict[str, str]:
    """The config parameters that publish a pool: what `ServedPool.from_parameters` reads back."""
    return {POOL_MODELS: json.dumps(names), POOL_PRICES: json.dumps(prices)}


@dataclass(frozen=True)
class ServedPool:
    """What the predictor serves, read from its Triton model config: output columns and trained prices."""

    names: tuple[str, ...]                           # output column order
    prices: tuple[tuple[float, float] | None, ...]   # (input, output) USD per Mtok; None = unknown

    @classmethod
    def from_parameters(cls, parameters: Mapping[str, str], *, model: str) -> "ServedPool":
        """From the string values of the config's `pool_models` and `pool_prices` parameters."""
        try:
            names = json.loads(parameters[POOL_MODELS])
            prices = json.loads(parameters.get(POOL_PRICES, "null")) or [None] * len(names)
        except (KeyError, TypeError, json.JSONDecodeError) as e:
            raise ServedPoolError(
                f"Triton model {model!r}: its config parameters need {POOL_MODELS!r} (a JSON list of names) and "
                f"{POOL_PRICES!r} (a JSON list of [input, output] or null): {e}") from e
        if (not isinstance(names, list) or not all(isinstance(n, str) for n in names)
                or not isinstance(prices, list) or len(prices) != len(names)):
            raise ServedPoolError(
                f"Triton model {model!r}: {POOL_MODELS!r} must be a list of names and {POOL_PRICES!r} a list of "
                f"the same length, got {names!r:.200} and {prices!r:.200}")
        for name in names:
            problem = model_name_problem(name)
            if problem:
                raise ServedPoolError(f"Triton model {model!r}: {POOL_MODELS!r} name {name!r:.100} {problem}")
        parsed: list[tuple[float, float] | None] = []
        for name, price in zip(names, prices):
            try:
                known = price is not None and price[0] is not None and price[1] is not None
                parsed.append((float(price[0]), float(price[1])) if known else None)
            except (TypeError, ValueError, IndexError, KeyError) as e:
                raise ServedPoolError(f"Triton model {model!r}: {POOL_PRICES!r} for {name!r} must be [input, "
                                      f"output] USD per Mtok or null, got {price!r}") from e
        return cls(tuple(names), tuple(parsed))

    @classmethod
    def from_json_config(cls, config: Mapping) -> "ServedPool":
        """From a model config as JSON: `get_model_config(..., as_json=True)["config"]`, or the
        `model_config` a Python-backend model is given."""
        parameters = config.get("parameters") or {}
        values = {key: value.get("string_value", "") for key, value in parameters.items()
                  if isinstance(value, Mapping)}
        return cls.from_parameters(values, model=str(config.get("name", "")))
