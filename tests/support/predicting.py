"""The predictor's CPU answers the tests compare against, and the one tolerance other paths must meet."""

import numpy as np

from predictor_service.head import log_lengths_numpy
from predictor_service.predictor import Predictor


def predict_on_cpu(artifact, texts):
    """(quality, cost), each (batch, n_models), from `artifact` with its own encoder on the CPU."""
    predictor = Predictor(artifact, artifact.load_encoder(), device="cpu")
    return predictor.predict(texts)


def step_by_step(predictor, texts):
    """The CPU path without the fused call: the encoder's tokenizer, then the folded predictor."""
    tokens = predictor.encoder.tokenize(texts)
    return predictor._folded.predict(tokens.token_ids.numpy(), tokens.offsets.numpy(), log_lengths_numpy(texts))


def assert_scores_equal(quality, cost, expected_quality, expected_cost):
    """Another path's scores (ONNX, Triton) against the CPU predictor's: quality to 1e-5 absolute, cost to
    1e-5 relative (USD amounts are ~1e-8..1e-2)."""
    np.testing.assert_allclose(quality, expected_quality, rtol=0, atol=1e-5)
    np.testing.assert_allclose(cost, expected_cost, rtol=1e-5, atol=0)
