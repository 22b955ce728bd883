"""A trained artifact's folder: saved and loaded it scores the same; a broken one (a file, a manifest field) is
named, not half-loaded, and before Triton would read it."""

import json

import numpy as np
import pytest

from predictor_service.artifact import Artifact, ArtifactError
from tests.support.predicting import predict_on_cpu


def test_artifact_round_trip(trained, tmp_path):
    artifact, _ = trained
    artifact.save(tmp_path / "a")
    loaded = Artifact.load(tmp_path / "a")
    assert loaded.manifest == artifact.manifest
    texts = ["integral of x", "court ruling on contract"]
    np.testing.assert_allclose(predict_on_cpu(loaded, texts)[0], predict_on_cpu(artifact, texts)[0], rtol=0, atol=0)


def test_bad_artifacts_are_named(tmp_path, trained):
    with pytest.raises(ArtifactError, match="not a Routoo artifact"):
        Artifact.load(tmp_path)
    artifact, _ = trained
    artifact.save(tmp_path / "a")
    manifest = json.loads((tmp_path / "a" / "manifest.json").read_text())
    manifest["model_names"].append("ghost")
    manifest["model_prices"].append([1.0, 2.0])
    (tmp_path / "a" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="disagree with the manifest"):
        Artifact.load(tmp_path / "a")


@pytest.mark.parametrize("field, value, expected", [
    ("model_names", None, "a non-empty list of model names"),
    ("model_names", ["a", "a"], "a list without repeats"),
    ("model_names", ["a", "b\nc"], "names without control characters"),
    ("model_prices", [[1.0]], "one \\[input, output\\] USD"),
    ("inv_temperature", "x", "a number > 0"),
    ("inv_temperature", 0, "a number > 0"),
    ("dim", "256", "an integer >= 1"),
    ("max_tokens", 0, "an integer >= 1"),
    ("tail_tokens", 10_000, "an integer in \\[0, max_tokens = 256\\]"),
    ("encoder_files", None, "an object"),
])
def test_a_manifest_field_of_the_wrong_type_is_named(tmp_path, trained, field, value, expected):
    artifact, _ = trained
    folder = artifact.save(tmp_path / "a")
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest[field] = value
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match=f"manifest.json: field '{field}' must be {expected}"):
        Artifact.load(folder)


def test_broken_weight_and_tokenizer_files_are_named_before_triton_reads_them(tmp_path, trained):
    from predictor_service.triton_server import ensure_artifact

    artifact, _ = trained
    folder = artifact.save(tmp_path / "a")
    head = (folder / "head.safetensors").read_bytes()
    (folder / "head.safetensors").write_bytes(head[:100])              # truncated
    with pytest.raises(ArtifactError, match="head.safetensors: unreadable"):
        ensure_artifact(folder)
    (folder / "head.safetensors").write_bytes(head)
    (folder / "encoder" / "tokenizer.json").write_text("not json")
    with pytest.raises(ArtifactError, match="tokenizer.json: not a tokenizer"):
        ensure_artifact(folder)
    (folder / "encoder" / "tokenizer.json").write_bytes(b"\xff\xfe")
    with pytest.raises(ArtifactError, match="tokenizer.json: not UTF-8 text"):
        ensure_artifact(folder)


def test_undefined_figures_are_written_as_null_not_as_bare_nan(tmp_path, trained):
    from predictor_service.json_numbers import finite_json

    nested = {"a": [1.0, float("nan"), (float("inf"), "x")], "b": 2}
    assert finite_json(nested) == {"a": [1.0, None, [None, "x"]], "b": 2}
    artifact, _ = trained
    artifact.manifest.dev_metrics = {**artifact.manifest.dev_metrics, "auroc_mean": float("nan")}
    folder = artifact.save(tmp_path / "a")

    def refuse(constant):
        raise AssertionError(f"{constant} is not JSON")

    manifest = json.loads((folder / "manifest.json").read_text(), parse_constant=refuse)
    assert manifest["dev_metrics"]["auroc_mean"] is None
    assert Artifact.load(folder).manifest.dev_metrics["auroc_mean"] is None
