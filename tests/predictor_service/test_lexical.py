"""The lexical part end to end: fitted and chosen by train-only CV, stored in the artifact with its digest,
scored the same by every predictor path and by the real tritonserver; artifacts without one are unchanged."""

import json
import shutil

import numpy as np
import pytest
import torch

from predictor_service.artifact import Artifact, ArtifactError
from evals.routers import artifact_predictions
from predictor_service.lexical import LEXICAL_FILE, LexicalPart
from evals.lexical import LexicalConfig, choose_lexical, fit_lexical
from predictor_service.predictor import Predictor
from tests.support.datasets import synthetic_dataset
from tests.support.lexical_artifacts import small_lexical_artifact

# Small enough for a test: two stacked candidates and a blended one, features in >= 2 prompts.
CONFIG = LexicalConfig(l2_grid=(1e-6, 1e-3), blend_l2_grid=(1e-5,), min_prompts=2, max_iter=30)
PROMPTS = ["Question 3 about math: integral derivative?", "court ruling on a contract tort",
           "Ünïcödé enzyme [UNK] reaction?", "x", "detail " * 400 + "final question about law"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("lexical")
    train_ds, _, artifact, result, record, head_dev = small_lexical_artifact(root, CONFIG)
    artifact.save(root / "artifact")
    return root, train_ds, artifact, result, record, head_dev


def test_decision_is_recorded_with_out_of_fold_figures(trained):
    root, _, artifact, result, record, head_dev = trained
    names = ["stacked l2=1e-06", "stacked l2=0.001", "blend l2=1e-05"]
    assert record["kept"] and record["mode"] == "on" and set(record["candidates"]) == {"head only", *names}
    best = max(names, key=lambda n: record["candidates"][n]["oof_frontier_auc"])
    assert record["best"] == best and f"{record['kind']} l2={record['l2']:g}" == best
    assert 0.25 <= record["temperature"] <= 4.0 and len(record["quality_bias_added"]) == 3
    saved = json.loads((root / "artifact" / "manifest.json").read_text())
    assert saved["training"]["lexical_choice"]["candidates"] == record["candidates"]
    assert saved["lexical"]["file"] == LEXICAL_FILE and saved["lexical"]["fitted_rows"] == record["fitted_rows"] > 0
    # The report's dev metrics are the served predictor's; the head's alone are kept beside them.
    assert result["head_without_lexical"] == head_dev and result["head"] != head_dev
    assert saved["dev_metrics"]["head_without_lexical"]["log_loss"] == round(head_dev["log_loss"], 5)


def test_auto_keeps_the_part_only_past_the_margin(trained):
    _, train_ds, artifact, result, _, _ = trained
    part, record = choose_lexical(artifact, result, train_ds, mode="auto", config=CONFIG)
    figures = record["candidates"]
    gain = figures[record["best"]]["oof_frontier_auc"] - figures["head only"]["oof_frontier_auc"]
    assert record["kept"] == (gain >= CONFIG.margin) == (part is not None)
    strict = LexicalConfig(**{**CONFIG.__dict__, "margin": 1.0})        # no AUC gains 1.0
    assert choose_lexical(artifact, result, train_ds, mode="auto", config=strict)[0] is None
    assert choose_lexical(artifact, result, train_ds, mode="off")[0] is None


def test_l2_shrinks_the_weights_and_rare_features_stay_zero():
    rng = np.random.default_rng(0)
    n, m, n_features = 200, 2, 50
    lengths = rng.integers(1, 6, n)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    ids = rng.integers(0, 40, int(offsets[-1]))
    ids[0] = 45                                                  # feature 45: in one prompt only
    quality = (rng.random((n, m)) < 0.5).astype(np.float32)
    config = LexicalConfig(min_prompts=2, max_iter=40)
    weak, strong = (fit_lexical(ids, offsets, np.zeros((n, m), np.float32), quality, n_features, l2, config)
                    for l2 in (1e-6, 1e-2))
    assert float(strong.norm()) < 0.5 * float(weak.norm())
    assert (weak[40:] == 0).all()                                # never seen, or seen once: no row


def test_every_path_scores_the_part_the_same(trained):
    root, _, artifact, _, _, _ = trained
    loaded = Artifact.load(root / "artifact")
    torch.testing.assert_close(loaded.lexical.weights, artifact.lexical.weights, rtol=0, atol=0)  # stored as rounded
    predictor = Predictor(loaded, loaded.load_encoder())
    quality, cost = predictor.predict(PROMPTS)                   # compiled CPU paths (plain ASCII and tokenizer)
    one_by_one = np.concatenate([predictor.predict([p])[0] for p in PROMPTS])
    torch_quality, torch_cost = predictor._predict_torch(PROMPTS)   # reference / the fused kernel's path
    eval_quality, eval_cost, _ = artifact_predictions(loaded, PROMPTS)
    for other in (one_by_one, torch_quality, eval_quality):
        np.testing.assert_allclose(quality, other, rtol=0, atol=1e-6)
    np.testing.assert_allclose(cost, torch_cost, rtol=1e-6)
    loaded.lexical = None
    head_only = Predictor(loaded, loaded.load_encoder()).predict(PROMPTS)
    assert np.abs(head_only[0] - quality).max() > 1e-3           # the part changes the scores ...
    np.testing.assert_array_equal(head_only[1], cost)            # ... and never the costs


def test_old_artifacts_are_written_and_read_as_before(trained, tmp_path):
    root, _, artifact, _, _, _ = trained
    loaded = Artifact.load(root / "artifact")
    loaded.lexical, loaded.manifest.lexical = None, {}
    loaded.save(tmp_path / "plain")
    assert "lexical" not in json.loads((tmp_path / "plain" / "manifest.json").read_text())
    assert not (tmp_path / "plain" / LEXICAL_FILE).exists()
    assert Artifact.load(tmp_path / "plain").lexical is None


def test_altered_or_missing_part_is_refused(trained, tmp_path):
    root, _, _, _, _, _ = trained
    folder = tmp_path / "copy"
    shutil.copytree(root / "artifact", folder)
    stored = LexicalPart.load(folder, json.loads((folder / "manifest.json").read_text())["lexical"])
    assert stored.storage == "int8"
    with open(folder / LEXICAL_FILE, "r+b") as f:
        f.seek(-3, 2)
        f.write(b"\x01\x02\x03")
    with pytest.raises(ArtifactError, match="digest mismatch"):
        Artifact.load(folder)
    (folder / LEXICAL_FILE).unlink()
    with pytest.raises(ArtifactError, match="missing"):
        Artifact.load(folder)


def test_a_part_for_another_vocabulary_is_refused_before_it_gathers_out_of_bounds(trained):
    from predictor_service.predictor import Predictor

    root, _, _, _, _, _ = trained
    artifact = Artifact.load(root / "artifact")
    part = artifact.lexical
    artifact.lexical = LexicalPart(part.weights[1:], part.vocab - 1, part.bigram_bits, part.storage)
    with pytest.raises(ArtifactError, match=f"vocabulary of {part.vocab - 1} token ids, the encoder's table has"):
        Predictor(artifact, artifact.load_encoder())


def test_cli_train_prints_and_records_the_decision(tmp_path, capsys):
    from cli.main import main as routoo

    data = synthetic_dataset(tmp_path / "train", n=80)
    code = routoo(["train", "--data", str(data), "--out", str(tmp_path / "a"), "--hidden", "8", "--max-epochs", "5",
                   "--window", "256", "--lexical", "auto"])
    assert code == 0
    out = capsys.readouterr().out
    choice = json.loads((tmp_path / "a" / "manifest.json").read_text())["training"]["lexical_choice"]
    assert f"lexical part: {'kept' if choice['kept'] else 'not kept'} (auto" in out and "head only:" in out
    assert choice["mode"] == "auto" and "head only" in choice["candidates"]


def test_triton_serves_the_part_as_scored_in_process(trained, tmp_path):
    """The real tritonserver on a repository carrying the lexical artifact: the same scores as in-process."""
    from predictor_service.remote import score_remote
    from predictor_service.triton_server import TritonDist, TritonServer, materialise_repository

    root, _, _, _, _, _ = trained
    run_dir = tmp_path / "run"
    materialise_repository(run_dir / "model_repository", root / "artifact", models=("routoo_predictor",),
                           copy_artifact=True)
    TritonDist.locate().backend_directory(run_dir / "backends")
    with TritonServer(run_dir=run_dir, models=("routoo_predictor",)) as server:
        names, quality, cost = score_remote(server.grpc_url, PROMPTS)
    want_quality, want_cost = Predictor.load(root / "artifact", device="cpu").predict(PROMPTS)
    assert names == Artifact.load(root / "artifact").manifest.model_names
    np.testing.assert_allclose(quality, want_quality, rtol=0, atol=1e-6)
    np.testing.assert_allclose(cost, want_cost, rtol=1e-6, atol=0)


def test_add_model_keeps_the_part_for_the_pool_and_none_for_the_new_model(trained, tmp_path):
    from training.add_model import add_model

    root, train_ds, _, _, _, _ = trained
    artifact = Artifact.load(root / "artifact")
    rows = slice(0, 40)
    new = add_model(artifact, "twin", [1.0, 2.0], train_ds.texts[rows], train_ds.quality[rows, 0],
                    train_ds.cost_usd[rows, 0], prior=(3.0, 100.0))
    new.save(tmp_path / "added")
    loaded = Artifact.load(tmp_path / "added")
    assert loaded.lexical.n_models == 4 and (loaded.lexical.weights[:, -1] == 0).all()
    before = Predictor(artifact, artifact.load_encoder()).predict(PROMPTS)[0]
    after = Predictor(loaded, loaded.load_encoder()).predict(PROMPTS)[0]
    np.testing.assert_allclose(after[:, :3], before, rtol=0, atol=1e-6)


def test_onnx_static_graph_carries_the_trained_part(trained, tmp_path):
    """The saved (int8) part of a trained artifact, hashing included, in the ONNX graph that onnxruntime runs."""
    import onnxruntime as ort

    from predictor_service.head import log_lengths
    from predictor_service.onnx_export import export_static_predictor
    from tests.support.predicting import assert_scores_equal

    root, _, _, _, _, _ = trained
    predictor = Predictor.load(root / "artifact", device="cpu")
    session = ort.InferenceSession(str(export_static_predictor(predictor.artifact, tmp_path / "p.onnx")),
                                   providers=["CPUExecutionProvider"])
    tokens = predictor.encoder.tokenize(PROMPTS)
    quality, cost = session.run(None, {"TOKEN_IDS": tokens.token_ids.numpy(), "OFFSETS": tokens.offsets.numpy(),
                                       "LOG_LEN": log_lengths(PROMPTS).numpy()})
    assert_scores_equal(quality, cost, *predictor.predict(PROMPTS))


def test_minilm_artifacts_skip_the_part_under_auto_and_refuse_it_when_asked(tmp_path, capsys):
    """--lexical auto is the default, so a minilm run must not fail at its last step; --lexical on fails first."""
    from cli.main import main as routoo
    from evals.lexical import describe
    from predictor_service.artifact import default_artifact_path

    artifact = Artifact.load(default_artifact_path())
    artifact.manifest.encoder = "minilm"
    part, record = choose_lexical(artifact, {}, None, mode="auto")
    assert part is None and not record["kept"] and "minilm" in record["not_applicable"]
    assert describe(record) == [f"lexical part: not applicable ({record['not_applicable']})"]
    with pytest.raises(ValueError, match="static encoder's token ids"):
        choose_lexical(artifact, {}, None, mode="on")
    code = routoo(["train", "--data", str(tmp_path / "never-read"), "--out", str(tmp_path / "a"),
                   "--encoder", "minilm", "--lexical", "on"])
    assert code == 2 and "--lexical on needs the static encoder" in capsys.readouterr().err
