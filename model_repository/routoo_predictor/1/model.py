"""Triton Python-backend glue for Routoo's predictor: decode each request's prompts, make one
`Predictor.predict` call for the whole dynamic batch, answer every request in order.

Settings come from the config's `parameters` (see config.pbtxt). A request with a bad prompt gets its own
TritonError and takes no part in the batch's call, as does one its client has cancelled (or whose deadline
passed while it queued: Triton still hands those to execute()). If the batch's call fails, each request is
scored alone, so one request's failure is its own; prompt text is never logged, nor put in an error.
"""

import contextlib
import gc
import json
import locale
import os

import torch
import triton_python_backend_utils as pb_utils

from predictor_service.artifact import default_artifact_path
from predictor_service.contract import (ARTIFACT_PATH, EXPECTED_COST_USD, MAX_PROMPT_BYTES, POOL_MODELS,
                                        PREDICTOR_MODEL, PROMPT, QUALITY, TORCH_THREADS, ServedPool)
from predictor_service.predictor import Predictor, PromptError, check_prompt


def _parameter(config: dict, key: str, default: str = "") -> str:
    return config.get("parameters", {}).get(key, {}).get("string_value", default)


def _decode(raw) -> str:
    """One PROMPT element (bytes) -> text, or PromptError naming the problem (never the text)."""
    if not isinstance(raw, bytes):
        raise PromptError(f"{PROMPT} elements must be bytes, got {type(raw).__name__}")
    if len(raw) > MAX_PROMPT_BYTES:   # before decoding, so an oversized payload costs nothing more
        raise PromptError(f"prompt is {len(raw)} bytes, over the limit of {MAX_PROMPT_BYTES} bytes")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise PromptError(f"prompt is not valid UTF-8 ({e.reason} at byte {e.start})") from e
    check_prompt(text, size=len(raw))
    return text


def _decode_rows(rows) -> list:
    """All of one request's prompts, or PromptError naming the first bad row (a request fails as a whole)."""
    texts = []
    for i, raw in enumerate(rows):
        try:
            texts.append(_decode(raw))
        except PromptError as e:
            raise PromptError(f"{PROMPT} row {i}: {e}" if len(rows) > 1 else f"{PROMPT}: {e}") from e
    return texts


def _rejection_counter(model_name: str):
    """A Triton custom metric of requests answered INVALID_ARG: Triton's own nv_inference_request_success
    counts them as successes (the stub answered). None where the backend has no custom metrics (< 23.03)."""
    family_class = getattr(pb_utils, "MetricFamily", None)
    if family_class is None:
        return None, None
    family = family_class(name="routoo_predictor_rejected_requests",
                          description="Requests refused for a bad prompt (not UTF-8, empty, too long)",
                          kind=family_class.COUNTER)
    return family, family.Metric(labels={"model": model_name})   # the family must outlive its metric


class TritonPythonModel:
    def initialize(self, args):
        # The Rust tokenizer's thread pool would size itself to the node's cores, not the pod's CPUs (the
        # GPU overlay runs tritonserver directly, without TritonServer's environment).
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        # The stub's interpreter runs isolated (PYTHON* variables ignored) and never applies the locale, so
        # open() without an encoding would read ASCII; take LC_CTYPE from the environment as `python` does.
        with contextlib.suppress(locale.Error):
            locale.setlocale(locale.LC_CTYPE, "")
        config = json.loads(args["model_config"])
        # Intra-op threads: at these batch sizes one thread beats two on 2 cores (0.89 vs 1.07 ms at
        # batch 1) and leaves a core to Triton's gRPC threads.
        torch.set_num_threads(int(_parameter(config, TORCH_THREADS, "1")))
        device = "cpu"
        if args.get("model_instance_kind") == "GPU":
            device = f"cuda:{args['model_instance_device_id']}"
        # A relative path is inside this model's version folder: a repository written by
        # `routoo serve-predictor --write-repository` carries its artifact there and can be copied anywhere.
        artifact_path = _parameter(config, ARTIFACT_PATH) or str(default_artifact_path())
        if not os.path.isabs(artifact_path):
            artifact_path = os.path.join(args["model_repository"], args["model_version"], artifact_path)
        self.predictor = Predictor.load(artifact_path, device=device)
        # A materialised config publishes the pool (the committed one does not): it must be the artifact's.
        if _parameter(config, POOL_MODELS):
            served = ServedPool.from_json_config(config)
            if list(served.names) != self.predictor.model_names:
                raise pb_utils.TritonModelException(
                    f"config parameter {POOL_MODELS} disagrees with the artifact at {artifact_path}; "
                    "re-materialise the repository (routoo serve-predictor)")
        self._rejected_family, self._rejected = _rejection_counter(args.get("model_name", PREDICTOR_MODEL))
        # What loading made (torch, tokenizers, the predictor: ~230k objects) lives as long as the stub.
        # Left to the collector, a full collection walks all of it: 0.2 s during one request, measured.
        gc.collect()
        gc.freeze()

    def execute(self, requests):
        texts, spans, errors = [], [], []
        for request in requests:
            if _cancelled(request):
                spans.append(None)
                errors.append(_cancelled_error())
                continue
            rows = pb_utils.get_input_tensor_by_name(request, PROMPT).as_numpy().reshape(-1)  # (rows,)
            try:
                prompts = _decode_rows(rows)
            except PromptError as e:
                spans.append(None)
                # INVALID_ARG: clients see gRPC INVALID_ARGUMENT (the default would be INTERNAL).
                errors.append(pb_utils.TritonError(str(e), pb_utils.TritonError.INVALID_ARG))
                if self._rejected is not None:
                    self._rejected.increment(1)
                continue
            spans.append((len(texts), len(texts) + len(prompts)))
            errors.append(None)
            texts.extend(prompts)

        try:
            quality, expected_cost_usd = self.predictor.predict(texts)  # (len(texts), n_models) each
        except Exception:   # noqa: BLE001 - a failure on one request's rows must not fail the batch's others
            return [self._alone(request, span, error, texts) for request, span, error in zip(requests, spans, errors)]
        responses = []
        for span, error in zip(spans, errors):
            if span is None:
                responses.append(pb_utils.InferenceResponse(output_tensors=[], error=error))
                continue
            # Rows of a C-ordered array are contiguous; a request that is the whole batch (one client) takes
            # the arrays as they are: each numpy call costs ~20 us here, with the core's caches gone cold.
            start, end = span
            whole = (start, end) == (0, len(texts))
            responses.append(pb_utils.InferenceResponse(output_tensors=[
                pb_utils.Tensor(QUALITY, quality if whole else quality[start:end]),
                pb_utils.Tensor(EXPECTED_COST_USD, expected_cost_usd if whole else expected_cost_usd[start:end]),
            ]))
        return responses

    def _alone(self, request, span, error, texts):
        """One request's response when the batch's call failed: scored on its own rows, or its own error,
        which names the exception's type only (its message could quote a prompt)."""
        if span is None:
            return pb_utils.InferenceResponse(output_tensors=[], error=error)
        try:
            quality, expected_cost_usd = self.predictor.predict(texts[span[0]:span[1]])
        except Exception as e:   # noqa: BLE001 - answered as this request's error
            return pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(
                f"the predictor failed on this request ({type(e).__name__})", pb_utils.TritonError.INTERNAL))
        return pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(QUALITY, quality),
                                                          pb_utils.Tensor(EXPECTED_COST_USD, expected_cost_usd)])


def _cancelled(request) -> bool:
    """Whether the client cancelled `request` or its deadline passed (Python backend 23.10+)."""
    is_cancelled = getattr(request, "is_cancelled", None)
    return bool(is_cancelled()) if callable(is_cancelled) else False



def _cancelled_error():
    """TritonError.CANCELLED arrived with request cancellation. Looked up when needed: the stub binds
    pb_utils.TritonError only once it runs, not when this module is imported."""
    kind = getattr(pb_utils.TritonError, "CANCELLED", pb_utils.TritonError.UNAVAILABLE)
    return pb_utils.TritonError("the request was cancelled before it ran", kind)
