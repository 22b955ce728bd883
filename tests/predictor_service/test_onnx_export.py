"""ONNX exports of the predictor, run with onnxruntime against the in-process predictor (1e-5)."""

import json

import onnx
import onnxruntime as ort
import pytest
import torch
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from predictor_service.artifact import Artifact, Manifest, default_artifact_path
from predictor_service.encoders import MiniLMEncoder
from predictor_service.head import ScoringHead, log_lengths
from predictor_service.contract import POOL_LABELS_FILE, POOL_MODELS
from predictor_service.onnx_export import (
    export_head, export_static_predictor, write_triton_repository,
)
from predictor_service.predictor import Predictor
from tests.support.predicting import assert_scores_equal

PROMPTS = [
    "What is 2 + 2?",
    "Ünïcödé prompt — 日本語のテキストと emoji 🚀",
    "Explain the photoelectric effect and why it matters for quantum theory. " * 40,   # past max_tokens
    "x",
    "\u2603\u2603",   # no known tokens after [UNK] removal: the empty-prompt path (zero embedding)
    "Line one\nline two\n\ttabbed",
    "Which of these sorting algorithms is stable? A) quicksort B) merge sort C) heapsort",
]


@pytest.fixture(scope="module")
def static_predictor():
    return Predictor.load(default_artifact_path(), device="cpu")


@pytest.fixture(scope="module")
def minilm_artifact():
    """A minilm-shaped head with random weights (no trained minilm artifact is committed)."""
    generator = torch.Generator().manual_seed(0)
    head = ScoringHead(384, 64, 5)
    with torch.no_grad():
        for parameter in head.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.1)
    names = [f"model-{i}" for i in range(5)]
    manifest = Manifest(encoder="minilm", dim=384, hidden=64, max_tokens=256, model_names=names,
                        model_prices=[[1.0, 2.0]] * 4 + [[None, None]], inv_temperature=0.9)
    return Artifact(manifest, head.weights())


@pytest.fixture(scope="module")
def static_session(static_predictor, tmp_path_factory):
    path = export_static_predictor(static_predictor.artifact, tmp_path_factory.mktemp("onnx") / "static.onnx",
                                   table=static_predictor.encoder.table)
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("batch", [1, 2, 7])
def test_static_graph_matches_predictor(static_predictor, static_session, batch):
    texts = PROMPTS[:batch]
    tokens = static_predictor.encoder.tokenize(texts)   # tokenization stays outside the graph
    quality, cost = static_session.run(None, {"TOKEN_IDS": tokens.token_ids.numpy(),
                                              "OFFSETS": tokens.offsets.numpy(),
                                              "LOG_LEN": log_lengths(texts).numpy()})
    assert quality.shape == cost.shape == (batch, len(static_predictor.model_names))
    assert_scores_equal(quality, cost, *static_predictor.predict(texts))


def test_static_graph_handles_a_prompt_without_tokens(static_predictor, static_session):
    tokens = static_predictor.encoder.tokenize(["\u2603"])
    assert tokens.token_ids.numel() == 0
    quality, cost = static_session.run(None, {"TOKEN_IDS": tokens.token_ids.numpy(),
                                              "OFFSETS": tokens.offsets.numpy(),
                                              "LOG_LEN": log_lengths(["\u2603"]).numpy()})
    assert_scores_equal(quality, cost, *static_predictor.predict(["\u2603"]))


def test_head_graph_matches_minilm_predictor(minilm_artifact, tmp_path):
    session = ort.InferenceSession(str(export_head(minilm_artifact, tmp_path / "head.onnx")),
                                   providers=["CPUExecutionProvider"])
    encoder = MiniLMEncoder()
    embedding = encoder.encode(PROMPTS)                                     # (batch, 384), run outside
    quality, cost = session.run(None, {"PROMPT_EMBEDDING": embedding, "LOG_LEN": log_lengths(PROMPTS).numpy()})
    expected = Predictor(minilm_artifact, encoder, device="cpu").predict(PROMPTS)
    assert_scores_equal(quality, cost, *expected)


def test_static_export_refuses_a_minilm_artifact(minilm_artifact, tmp_path):
    with pytest.raises(ValueError, match="static-encoder artifact.*'minilm'"):
        export_static_predictor(minilm_artifact, tmp_path / "x.onnx")


def test_triton_repository_configs_agree_with_graphs(static_predictor, tmp_path):
    written = write_triton_repository(default_artifact_path(), tmp_path, table=static_predictor.encoder.table)
    assert sorted(p.parent.parent.name for p in written) == ["routoo_head_onnx", "routoo_static_onnx"]
    names = static_predictor.model_names
    for path in written:
        model_dir = path.parent.parent
        config = text_format.Parse((model_dir / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
        graph = onnx.load(str(path))
        assert [i.name for i in config.input] == [i.name for i in graph.graph.input]
        assert [o.name for o in config.output] == [o.name for o in graph.graph.output]
        assert config.backend == "onnxruntime"
        assert [g.kind for g in config.instance_group] == [model_config_pb2.ModelInstanceGroup.KIND_GPU]
        assert json.loads(config.parameters[POOL_MODELS].string_value) == names
        assert (model_dir / POOL_LABELS_FILE).read_text().split() == names
        assert json.loads({p.key: p.value for p in graph.metadata_props}[POOL_MODELS]) == names
        assert list(config.output[0].dims)[-1] == len(names)
