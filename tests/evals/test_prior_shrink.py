"""The prior shrink: chosen by the one-standard-error rule on train out-of-fold figures, folded exactly into
the artifact (head and lexical part) so every serving path scores it, recorded in the manifest."""

import json

import numpy as np
import pytest

from evals.lexical import LexicalConfig
from evals.prior_shrink import ALPHAS, apply_prior_shrink, attach_prior_shrink, one_se_choice, shrunk
from evals.routers import artifact_predictions
from predictor_service.artifact import Artifact
from predictor_service.predictor import Predictor
from tests.support.datasets import synthetic_dataset
from tests.support.lexical_artifacts import small_lexical_artifact

PROMPTS = ["Question 3 about math: integral derivative?", "court ruling on a contract tort", "x", "",
           "detail " * 400 + "final question about law"]


@pytest.fixture(scope="module")
def lexical_artifact(tmp_path_factory):
    root = tmp_path_factory.mktemp("shrink")
    train_ds, dev_ds, artifact, result, _, _ = small_lexical_artifact(
        root, LexicalConfig(l2_grid=(1e-6,), blend_l2_grid=(), min_prompts=2, max_iter=30))
    artifact.save(root / "before")
    return root, train_ds, dev_ds, result


def test_one_se_rule_takes_the_largest_alpha_within_noise_of_the_best():
    rng = np.random.default_rng(0)
    noise = rng.normal(0, 0.001, size=(200, 1))
    aucs = np.array([0.760, 0.7605, 0.7610, 0.7550])          # 0.75 costs 6 SE; 0.5 is the best
    boot = aucs[None, :] + noise + rng.normal(0, 0.001, size=(200, 4))
    kept, se = one_se_choice(aucs, boot)
    assert ALPHAS[kept] == 0.5 and se[2] == 0.0
    flat = np.array([0.760, 0.7599, 0.7601, 0.7600])           # indistinguishable: the most conservative
    kept, _ = one_se_choice(flat, flat[None, :] + rng.normal(0, 0.001, size=(200, 4)))
    assert ALPHAS[kept] == 0.75
    with pytest.raises(ValueError, match="one AUC and one bootstrap column per alpha"):
        one_se_choice(aucs[:3], boot)


def test_folding_into_the_artifact_is_exact_for_head_and_lexical_part(lexical_artifact, tmp_path):
    root, train_ds, _, _ = lexical_artifact
    artifact = Artifact.load(root / "before")
    assert artifact.lexical is not None
    before, _, _ = artifact_predictions(artifact, PROMPTS)
    prior = np.nanmean(train_ds.quality, axis=0)
    apply_prior_shrink(artifact, 0.5, prior)
    artifact.save(tmp_path / "after")
    served, _ = Predictor.load(tmp_path / "after", device="cpu").predict(PROMPTS)
    np.testing.assert_allclose(served, shrunk(before, prior, 0.5), atol=2e-5)
    # alpha 0 is the identity, and alpha 1 (the no-prompt router) is refused
    same = Artifact.load(root / "before")
    apply_prior_shrink(same, 0.0, prior)
    np.testing.assert_array_equal(artifact_predictions(same, PROMPTS)[0], before)
    with pytest.raises(ValueError, match=r"alpha must be in \[0, 1\)"):
        apply_prior_shrink(same, 1.0, prior)


def test_the_decision_and_dev_metrics_are_recorded(lexical_artifact, tmp_path):
    root, train_ds, dev_ds, result = lexical_artifact
    artifact = Artifact.load(root / "before")
    record = attach_prior_shrink(artifact, dict(result), train_ds, dev_ds)
    assert set(record["candidates"]) == {f"{a:g}" for a in ALPHAS} and record["alpha"] in ALPHAS
    assert record["mode"] == "auto" and len(record["prior"]) == len(train_ds.model_names)
    artifact.save(tmp_path / "a")
    manifest = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert manifest["training"]["prior_shrink"]["alpha"] == record["alpha"]
    if record["alpha"] > 0:
        assert "head_before_prior_shrink" in manifest["dev_metrics"]
    off = attach_prior_shrink(Artifact.load(root / "before"), dict(result), train_ds, dev_ds, mode="off")
    assert off == {"mode": "off", "alpha": 0.0}
    with pytest.raises(ValueError, match="prior shrink mode"):
        attach_prior_shrink(artifact, dict(result), train_ds, dev_ds, mode="sometimes")


def test_cli_train_prints_the_choice(tmp_path, capsys):
    from cli.main import main as routoo

    data = synthetic_dataset(tmp_path / "train", n=80)
    code = routoo(["train", "--data", str(data), "--out", str(tmp_path / "a"), "--hidden", "8", "--max-epochs", "5",
                   "--window", "256", "--head", "default", "--lexical", "off", "--prior-shrink", "auto"])
    assert code == 0
    out = capsys.readouterr().out
    record = json.loads((tmp_path / "a" / "manifest.json").read_text())["training"]["prior_shrink"]
    assert f"prior shrink: alpha {record['alpha']:g}" in out and "alpha 0.75:" in out
    # off by default: no stage, no record, the artifact as before the stage existed
    assert routoo(["train", "--data", str(data), "--out", str(tmp_path / "b"), "--hidden", "8", "--max-epochs",
                   "5", "--window", "256", "--head", "default", "--lexical", "off"]) == 0
    assert "prior shrink" not in capsys.readouterr().out
    assert "prior_shrink" not in json.loads((tmp_path / "b" / "manifest.json").read_text())["training"]
