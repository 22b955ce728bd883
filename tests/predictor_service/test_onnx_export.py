"""ONNX exports of the predictor, run with onnxruntime against the in-process predictor (1e-5), for a
head-only static artifact and one with a lexical part (bigram hashing inside the graph)."""

import copy
import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from kernels.lexical_logits import bigram_bucket, bigram_bucket_exportable
from predictor_service.artifact import Artifact, Manifest, default_artifact_path
from predictor_service.encoders import MiniLMEncoder
from predictor_service.head import ScoringHead, log_lengths
from predictor_service.contract import POOL_LABELS_FILE, POOL_MODELS
from predictor_service.lexical import LexicalPart
from predictor_service.onnx_export import (
    OPSET, export_head, export_static_predictor, write_triton_repository,
)
from predictor_service.onnx_lexical import LEXICAL_OPSET
from predictor_service.predictor import Predictor
from tests.support.predicting import assert_scores_equal

PROMPTS = [
    "What is 2 + 2?",
    "Ünïcödé prompt — 日本語のテキストと emoji 🚀",
    "Explain the photoelectric effect and why it matters for quantum theory. " * 40,   # past max_tokens
    "x",                                                                                # one token, no bigram
    "\u2603\u2603",   # no known tokens after [UNK] removal: the empty-prompt path (zero embedding)
    "Line one\nline two\n\ttabbed",
    "Which of these sorting algorithms is stable? A) quicksort B) merge sort C) heapsort",
    "",
]
KINDS = ["head only", "lexical"]


def with_random_part(artifact: Artifact, bigram_bits: int = 16) -> Artifact:
    """The artifact with a lexical part whose every row (token and bucket) is random and large: a wrong
    bucket or a wrong mean moves the scores far past the tolerance."""
    vocab = int(artifact.load_encoder().table.shape[0])
    generator = torch.Generator().manual_seed(14)
    weights = torch.randn(vocab + (1 << bigram_bits), artifact.weights.n_models, generator=generator) * 0.5
    out = copy.copy(artifact)
    out.manifest = copy.deepcopy(artifact.manifest)
    out.manifest.lexical = {}
    out.lexical = LexicalPart(weights, vocab, bigram_bits).rounded()   # as save() would store it
    return out


@pytest.fixture(scope="module")
def artifacts():
    """{"head only": the default artifact without any lexical part, "lexical": with a random one}."""
    default = Artifact.load(default_artifact_path())
    head_only = copy.copy(default)
    head_only.manifest = copy.deepcopy(default.manifest)
    head_only.lexical, head_only.manifest.lexical = None, {}
    return {"head only": head_only, "lexical": with_random_part(default)}


@pytest.fixture(scope="module")
def predictors(artifacts):
    return {kind: Predictor(a, a.load_encoder(), device="cpu") for kind, a in artifacts.items()}


@pytest.fixture(scope="module")
def sessions(predictors, tmp_path_factory):
    folder = tmp_path_factory.mktemp("onnx")
    return {kind: ort.InferenceSession(str(export_static_predictor(p.artifact, folder / f"{i}.onnx",
                                                                   table=p.encoder.table)),
                                       providers=["CPUExecutionProvider"])
            for i, (kind, p) in enumerate(predictors.items())}


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


def run_static(session, predictor, texts):
    tokens = predictor.encoder.tokenize(texts)   # tokenization stays outside the graph
    return session.run(None, {"TOKEN_IDS": tokens.token_ids.numpy(), "OFFSETS": tokens.offsets.numpy(),
                              "LOG_LEN": log_lengths(texts).numpy()})


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("texts", [PROMPTS[:1], PROMPTS[:2], PROMPTS, [""], ["x"], ["\u2603"]],
                         ids=["1", "2", "mixed-lengths", "empty", "one-token", "no-known-token"])
def test_static_graph_matches_predictor(predictors, sessions, kind, texts):
    predictor = predictors[kind]
    quality, cost = run_static(sessions[kind], predictor, texts)
    assert quality.shape == cost.shape == (len(texts), len(predictor.model_names))
    assert_scores_equal(quality, cost, *predictor.predict(texts))


def test_prompt_shapes_cover_the_edges(predictors):
    lengths = np.diff(predictors["lexical"].encoder.tokenize(PROMPTS).offsets.numpy())
    assert {0, 1} <= set(lengths.tolist()) and lengths.max() > 100


def test_the_part_moves_the_scores_the_graph_checks(predictors, sessions):
    """The parity above can fail: the random part moves quality far past 1e-5 and never the costs."""
    lexical, lexical_cost = run_static(sessions["lexical"], predictors["lexical"], PROMPTS)
    head_only, cost = run_static(sessions["head only"], predictors["head only"], PROMPTS)
    moved = np.abs(lexical - head_only).max(axis=1)
    lengths = np.diff(predictors["lexical"].encoder.tokenize(PROMPTS).offsets.numpy())
    assert (moved[lengths > 0] > 1e-2).all() and (moved[lengths == 0] == 0).all()
    np.testing.assert_allclose(lexical_cost, cost, rtol=1e-6)


class _Buckets(torch.nn.Module):
    def forward(self, first, second):
        return bigram_bucket_exportable(first, second, 24)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")   # the TorchScript exporter, as onnx_export uses
def test_onnxruntime_hashes_like_bigram_bucket(tmp_path):
    """The hash alone through onnxruntime's int64 ops, on ids up to 2^31 - 1 (the largest the hash takes)."""
    path = tmp_path / "buckets.onnx"
    torch.onnx.export(_Buckets(), (torch.tensor([1, 2]), torch.tensor([3, 4])), str(path), dynamo=False,
                      opset_version=LEXICAL_OPSET, input_names=["FIRST", "SECOND"],
                      dynamic_axes={"FIRST": {0: "n"}, "SECOND": {0: "n"}})
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    first = np.concatenate([[0, 2**31 - 1, 2**31 - 1, 0], rng.integers(0, 2**31, 5000)])
    second = np.concatenate([[0, 2**31 - 1, 0, 2**31 - 1], rng.integers(0, 2**31, 5000)])
    (got,) = session.run(None, {"FIRST": first, "SECOND": second})
    np.testing.assert_array_equal(got, bigram_bucket(first, second, 24))


def test_only_a_lexical_graph_needs_opset_18(artifacts, tmp_path):
    opsets, ops = {}, {}
    for kind in KINDS:
        graph = onnx.load(str(export_static_predictor(artifacts[kind], tmp_path / f"{len(opsets)}.onnx")))
        opsets[kind] = {o.version for o in graph.opset_import if o.domain in ("", "ai.onnx")}
        ops[kind] = {n.op_type for n in graph.graph.node}
        assert [i.name for i in graph.graph.input] == ["TOKEN_IDS", "OFFSETS", "LOG_LEN"]
    assert opsets == {"head only": {OPSET}, "lexical": {LEXICAL_OPSET}}
    assert "BitwiseAnd" in ops["lexical"] and "BitwiseAnd" not in ops["head only"]


def test_head_graph_matches_minilm_predictor(minilm_artifact, tmp_path):
    session = ort.InferenceSession(str(export_head(minilm_artifact, tmp_path / "head.onnx")),
                                   providers=["CPUExecutionProvider"])
    encoder = MiniLMEncoder()
    embedding = encoder.encode(PROMPTS)                                     # (batch, 384), run outside
    quality, cost = session.run(None, {"PROMPT_EMBEDDING": embedding, "LOG_LEN": log_lengths(PROMPTS).numpy()})
    expected = Predictor(minilm_artifact, encoder, device="cpu").predict(PROMPTS)
    assert_scores_equal(quality, cost, *expected)


def test_head_graph_refuses_a_lexical_part(artifacts, tmp_path):
    with pytest.raises(ValueError, match="lexical part.*token ids.*Export the static graph"):
        export_head(artifacts["lexical"], tmp_path / "head.onnx")
    assert not (tmp_path / "head.onnx").exists()


def test_static_export_refuses_a_minilm_artifact(minilm_artifact, tmp_path):
    with pytest.raises(ValueError, match="static-encoder artifact.*'minilm'"):
        export_static_predictor(minilm_artifact, tmp_path / "x.onnx")


@pytest.mark.parametrize("kind", KINDS)
def test_triton_repository_configs_agree_with_graphs(artifacts, kind, tmp_path):
    folder = artifacts[kind].save(tmp_path / "artifact")
    written = write_triton_repository(folder, tmp_path / "repo")
    expected = {"head only": ["routoo_head_onnx", "routoo_static_onnx"], "lexical": ["routoo_static_onnx"]}
    assert sorted(p.parent.parent.name for p in written) == expected[kind]
    names = artifacts[kind].manifest.model_names
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
        metadata = {p.key: p.value for p in graph.metadata_props}
        assert json.loads(metadata[POOL_MODELS]) == names
        manifest = Artifact.load(folder).manifest
        assert metadata.get("lexical_sha256") == manifest.lexical.get("sha256")
        assert (metadata["max_tokens"], metadata["tail_tokens"]) == (str(manifest.max_tokens), str(manifest.tail_tokens))
        assert list(config.output[0].dims)[-1] == len(names)


def test_an_export_over_an_earlier_one_refuses_to_leave_a_stale_model(artifacts, tmp_path):
    head_only = artifacts["head only"].save(tmp_path / "a")
    lexical = artifacts["lexical"].save(tmp_path / "b")
    write_triton_repository(head_only, tmp_path / "repo")          # routoo_head_onnx and routoo_static_onnx
    with pytest.raises(ValueError, match=r"already holds \['routoo_head_onnx'\] from an earlier export"):
        write_triton_repository(lexical, tmp_path / "repo")        # would write routoo_static_onnx only
    write_triton_repository(head_only, tmp_path / "repo")          # the same models again: replaced in place
