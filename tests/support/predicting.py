"""The predictor's CPU answers the tests compare against."""

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
