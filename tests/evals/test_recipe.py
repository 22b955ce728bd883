"""The recipe chosen by train-only CV (evals/recipe.py, head_search.py): head candidates kept only
past the noise margin, and the TF-IDF + LR check on the same folds."""

import numpy as np
import pytest

from predictor_service.artifact import Artifact
from evals.head_search import HEAD_CANDIDATES, HEAD_CONFIDENCE, HEAD_MARGIN, choose_head
from tests.support.datasets import write_dataset
from tests.support.datasets import TOPICS

SMALL = ["--hidden", "16", "--max-epochs", "30"]


def _choice(diff: float, ahead: float, n_boot: int = 200):
    """choose_head on two seeds of the default (AUC 0.70) and one challenger `diff` above it, whose
    bootstrap lead holds on the `ahead` share of resamples."""
    order = [("default", 0), ("default", 1), ("half-width", 0), ("half-width", 1)]
    aucs = {("default", 0): 0.70, ("default", 1): 0.70, ("half-width", 0): 0.70 + diff, ("half-width", 1): 0.70 + diff}
    lead = np.where(np.arange(n_boot) < ahead * n_boot, 0.01, -0.01)
    boot = np.stack([np.full(n_boot, 0.70)] * 2 + [0.70 + lead] * 2, axis=1)   # (n_boot, 4)
    return choose_head(aucs, boot, order)


def test_a_challenger_is_kept_only_past_the_margin_and_the_bootstrap_share():
    assert _choice(HEAD_MARGIN + 0.003, 1.0)["kept"] == "half-width"
    assert _choice(HEAD_MARGIN / 2, 1.0)["kept"] == "default"                   # inside the noise margin
    assert _choice(HEAD_MARGIN + 0.003, HEAD_CONFIDENCE - 0.2)["kept"] == "default"   # not clearly ahead
    one_seed = ([("default", 0), ("default", 1), ("half-width", 0)],
                {("default", 0): 0.70, ("default", 1): 0.70, ("half-width", 0): 0.75})
    assert choose_head(one_seed[1], np.tile([0.70, 0.70, 0.75], (10, 1)), one_seed[0])["kept"] == "default"
    row = _choice(HEAD_MARGIN + 0.003, 0.5)["candidates"]["half-width"]
    assert row["ahead_of_default_share"] == pytest.approx(0.5) and row["minus_default"] == pytest.approx(0.005)


def test_candidates_scale_with_the_given_width_and_never_widen_it():
    from training.fit import TrainConfig

    for base in (TrainConfig(), TrainConfig(hidden=16)):
        for c in HEAD_CANDIDATES:
            cfg = c.config(base)
            assert cfg.hidden <= base.hidden and cfg.hidden % cfg.folds == 0


def _topic_in_the_middle(folder, n=120, seed=0):
    """The topic words sit between two runs of 300 filler tokens: no encoder window sees them, every word
    of TF-IDF does. math_whiz is right on math, lawyer on law (both cheap), the coin at random (dear)."""
    rng = np.random.default_rng(seed)
    prompts, scores, costs = [], [], []
    for i in range(n):
        topic = list(TOPICS)[i % 3]
        words = " ".join(rng.choice(TOPICS[topic].split(), 30))
        prompts.append({"id": f"p{i}", "text": "filler " * 300 + words + " filler" * 300, "category": ""})
        scores.append([f"p{i}", int(topic == "math"), int(topic == "law"), int(rng.integers(0, 2))])
        costs.append([f"p{i}", 1e-4, 1e-4, 3e-4])
    return write_dataset(folder, prompts, ["math_whiz", "lawyer", "coin"], scores, costs)


def test_train_says_when_the_head_loses_to_its_own_tfidf_baseline(tmp_path, capsys):
    from cli.main import main as routoo

    data = _topic_in_the_middle(tmp_path / "train")
    assert routoo(["train", "--data", str(data), "--out", str(tmp_path / "art"), *SMALL, "--lexical", "off"]) == 0
    training = Artifact.load(tmp_path / "art").manifest.training
    check, choice = training["tfidf_check"], training["head_choice"]
    assert check["head_loses_to_tfidf"] and check["head_minus_tfidf"] < 0
    assert check["tfidf_oof_frontier_auc"] > check["head_oof_frontier_auc"] and check["lexical"] is None
    assert set(choice["candidates"]) == {c.name for c in HEAD_CANDIDATES}
    assert choice["kept"] in choice["candidates"]
    first = {n: row["oof_frontier_auc_per_seed"][0] for n, row in choice["candidates"].items()}
    ahead = {n for n in first if n != "default" and first[n] > first["default"]}
    for name, row in choice["candidates"].items():     # successive halving: only those ahead get seed 2
        assert row["seeds"] == (2 if name in ahead or (name == "default" and ahead) else 1)
    out = capsys.readouterr().out
    assert "WARNING: the head loses to its own TF-IDF + LR baseline" in out and f"head: {choice['kept']}" in out


def test_the_tfidf_check_judges_the_served_predictor_once_the_lexical_stage_ran(tmp_path, capsys):
    from cli.main import main as routoo

    data = _topic_in_the_middle(tmp_path / "train")
    assert routoo(["train", "--data", str(data), "--out", str(tmp_path / "art"), *SMALL, "--head", "default",
                   "--prior-shrink", "auto"]) == 0
    manifest = Artifact.load(tmp_path / "art").manifest
    check, lexical = manifest.training["tfidf_check"], manifest.training["lexical_choice"]
    served = check["lexical"]
    assert served["kept"] == lexical["kept"]
    expected = (lexical["kept_after_temperature"] if lexical["kept"] else lexical["candidates"]["head only"])
    assert served["served_oof_frontier_auc"] == expected["oof_frontier_auc"]
    assert served["served_minus_tfidf"] == round(expected["oof_frontier_auc"] - check["tfidf_oof_frontier_auc"], 5)
    out = capsys.readouterr().out
    assert ("WARNING: the served predictor (head" in out) == served["served_loses_to_tfidf"]
    assert "lexical part:" in out
    shrink = manifest.training["prior_shrink"]
    if shrink["alpha"] > 0:     # then the check judges the shrunk predictor too
        row = shrink["candidates"][f"{shrink['alpha']:g}"]
        assert check["prior_shrink"]["served_oof_frontier_auc"] == row["deciding with mean train cost"]
        assert f"served predictor (with the prior shrink {shrink['alpha']:g})" in out
    else:
        assert "prior_shrink" not in check


def test_a_named_head_is_trained_alone_and_a_bad_name_fails_before_training(tmp_path, capsys):
    from cli.main import main as routoo
    from tests.support.datasets import synthetic_dataset

    data = synthetic_dataset(tmp_path / "train", n=90)
    assert routoo(["train", "--data", str(data), "--out", str(tmp_path / "art"), *SMALL, "--head", "half-width",
                   "--window", "256", "--skip-tfidf"]) == 0
    manifest = Artifact.load(tmp_path / "art").manifest
    assert manifest.hidden == 8 and manifest.training["head_choice"]["kept"] == "half-width"
    assert manifest.training["window_choice"]["kept"] == "256" and "skipped" in manifest.training["tfidf_check"]
    capsys.readouterr()
    assert routoo(["train", "--data", str(data), "--out", str(tmp_path / "bad"), "--head", "huge"]) == 2
    err = capsys.readouterr()
    assert "unknown head candidate 'huge'" in err.err and "training head" not in err.err
    assert not (tmp_path / "bad").exists()
