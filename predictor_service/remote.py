"""Ask a running Triton (`routoo serve-predictor`) for scores over gRPC, as any KServe-v2 client would.

The pool is discovered from the served model config's `parameters`: `pool_models` (JSON list of names in
output column order) and `pool_prices` (JSON list of [input_usd_per_mtok, output_usd_per_mtok], null where
unknown). The same names are the QUALITY output's classification labels.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

DEFAULT_MODEL = "routoo_predictor"


class RemoteScoringError(ValueError):
    """Triton unreachable, the model missing or a request refused; the message names the server and model.

    A ValueError so that `routoo score --server` reports it as one line, like any other bad argument.
    """


@dataclass(frozen=True)
class ServedPool:
    model_names: list[str]                        # output column order
    model_prices: list[list[float | None]]        # [input_usd_per_mtok, output_usd_per_mtok] per model
    max_batch_size: int                           # prompts per request the model accepts


def pool_from_config(config: dict) -> ServedPool:
    """The pool from a model config as `get_model_config(..., as_json=True)["config"]` returns it."""
    parameters = config.get("parameters", {})
    try:
        names = json.loads(parameters["pool_models"]["string_value"])
        prices = json.loads(parameters.get("pool_prices", {}).get("string_value", "null")) or [
            [None, None] for _ in names]
    except (KeyError, json.JSONDecodeError) as e:
        raise RemoteScoringError(f"model {config.get('name')!r} does not publish its pool (config parameter "
                                 f"pool_models missing or not JSON: {e}); is it a materialised Routoo "
                                 "repository?") from e
    return ServedPool(list(names), [list(p) for p in prices], int(config.get("max_batch_size", 0)))


def score_remote(url: str, texts: list[str], model: str = DEFAULT_MODEL, *, timeout_s: float = 30.0
                 ) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(model_names, quality, expected_cost_usd) for `texts`, each array (len(texts), n_models) float32.

    Sends max_batch_size prompts per request; url is "HOST:PORT" of Triton's gRPC endpoint.
    """
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    client = grpcclient.InferenceServerClient(url)
    try:
        try:
            pool = pool_from_config(client.get_model_config(model, as_json=True, client_timeout=timeout_s)["config"])
        except InferenceServerException as e:
            raise RemoteScoringError(f"cannot read model {model!r} from Triton at {url}: {e.message()}") from e
        n_models = len(pool.model_names)
        quality = np.empty((len(texts), n_models), np.float32)
        expected_cost_usd = np.empty_like(quality)
        step = max(1, pool.max_batch_size)
        for start in range(0, len(texts), step):
            chunk = texts[start:start + step]
            prompt = grpcclient.InferInput("PROMPT", [len(chunk), 1], "BYTES")
            prompt.set_data_from_numpy(np.array([t.encode("utf-8") for t in chunk], dtype=object).reshape(-1, 1))
            try:
                result = client.infer(model, [prompt], client_timeout=timeout_s)
            except InferenceServerException as e:
                raise RemoteScoringError(f"Triton at {url} refused prompts {start}..{start + len(chunk) - 1} "
                                         f"for {model!r}: {e.message()}") from e
            quality[start:start + len(chunk)] = result.as_numpy("QUALITY")
            expected_cost_usd[start:start + len(chunk)] = result.as_numpy("EXPECTED_COST_USD")
    finally:
        client.close()
    return pool.model_names, quality, expected_cost_usd
