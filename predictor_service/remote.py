"""Ask a running Triton (`routoo serve-predictor`) for scores over gRPC, as any KServe-v2 client would.

The pool is discovered from the served model config's `parameters` (`contract.ServedPool`); the same names
are the QUALITY output's classification labels.
"""

from __future__ import annotations

import numpy as np

from predictor_service.contract import (EXPECTED_COST_USD, PREDICTOR_MODEL, PROMPT, PROMPT_DATATYPE, QUALITY,
                                        ServedPool, ServedPoolError)


class RemoteScoringError(ValueError):
    """Triton unreachable, the model missing or a request refused; the message names the server and model.

    A ValueError so that `routoo score --server` reports it as one line, like any other bad argument.
    """


def served_pool(config: dict) -> ServedPool:
    """The pool from a model config as `get_model_config(..., as_json=True)["config"]` returns it."""
    try:
        return ServedPool.from_json_config(config)
    except ServedPoolError as e:
        raise RemoteScoringError(f"model {config.get('name')!r} does not publish its pool ({e}); is it a "
                                 "materialised Routoo repository?") from e


def score_remote(url: str, texts: list[str], model: str = PREDICTOR_MODEL, *, timeout_s: float = 30.0
                 ) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(model_names, quality, expected_cost_usd) for `texts`, each array (len(texts), n_models) float32.

    Sends max_batch_size prompts per request; url is "HOST:PORT" of Triton's gRPC endpoint.
    """
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    client = grpcclient.InferenceServerClient(url)
    try:
        try:
            config = client.get_model_config(model, as_json=True, client_timeout=timeout_s)["config"]
        except InferenceServerException as e:
            raise RemoteScoringError(f"cannot read model {model!r} from Triton at {url}: {e.message()}") from e
        pool = served_pool(config)
        n_models = len(pool.names)
        quality = np.empty((len(texts), n_models), np.float32)
        expected_cost_usd = np.empty_like(quality)
        step = max(1, int(config.get("max_batch_size", 0)))   # prompts per request it accepts
        for start in range(0, len(texts), step):
            chunk = texts[start:start + step]
            prompt = grpcclient.InferInput(PROMPT, [len(chunk), 1], PROMPT_DATATYPE)
            prompt.set_data_from_numpy(np.array([t.encode("utf-8") for t in chunk], dtype=object).reshape(-1, 1))
            try:
                result = client.infer(model, [prompt], client_timeout=timeout_s)
            except InferenceServerException as e:
                raise RemoteScoringError(f"Triton at {url} refused prompts {start}..{start + len(chunk) - 1} "
                                         f"for {model!r}: {e.message()}") from e
            quality[start:start + len(chunk)] = result.as_numpy(QUALITY)
            expected_cost_usd[start:start + len(chunk)] = result.as_numpy(EXPECTED_COST_USD)
    finally:
        client.close()
    return list(pool.names), quality, expected_cost_usd
