"""A trained artifact's folder: saved and loaded it scores the same; a broken one is named, not half-loaded."""

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
    (tmp_path / "a" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="disagree with the manifest"):
        Artifact.load(tmp_path / "a")
