"""The predictor's commands, `routoo score`, `routoo train` and `routoo export-onnx`, end to end."""

import csv
import json

from cli.main import main as routoo
from tests.support.datasets import synthetic_dataset


def test_score_cli_writes_scores_csv_shape(tmp_path, capsys):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"id": "q1", "text": "What is entropy?"}\n{"id": "q2", "text": "Define a tort."}\n')
    assert routoo(["score", str(prompts), "--out", str(tmp_path / "s.csv")]) == 0
    rows = list(csv.reader(open(tmp_path / "s.csv")))
    assert rows[0][0] == "id" and len(rows[0]) == 33 and [r[0] for r in rows[1:]] == ["q1", "q2"]
    assert all(0 < float(v) < 1 for v in rows[1][1:])


def test_cli_reports_bad_input_without_a_traceback(tmp_path, capsys):
    (tmp_path / "p.jsonl").write_text("{broken\n")
    assert routoo(["score", str(tmp_path / "p.jsonl")]) == 2
    err = capsys.readouterr().err
    assert "not valid JSON" in err and "Traceback" not in err
    # A prompt the predictor would refuse is named by its id before any server is called (none listens here).
    (tmp_path / "p.jsonl").write_text('{"id": "ok", "text": "What is 2 + 2?"}\n{"id": "blank", "text": "  "}\n')
    assert routoo(["score", str(tmp_path / "p.jsonl"), "--server", "127.0.0.1:1"]) == 2
    assert "prompt 'blank': prompt is empty (the predictor would refuse it)" in capsys.readouterr().err
    # An output that cannot be written: one line, not a traceback.
    assert routoo(["write-pool", "--out", str(tmp_path)]) == 2
    assert f"{tmp_path}: Is a directory" in capsys.readouterr().err


def test_train_cli_end_to_end(tmp_path, capsys):
    synthetic_dataset(tmp_path / "train", n=90)
    synthetic_dataset(tmp_path / "dev", n=30, seed=3)
    code = routoo(["train", "--data", str(tmp_path / "train"), "--dev", str(tmp_path / "dev"), "--encoder",
                   "static", "--out", str(tmp_path / "art"), "--hidden", "16", "--max-epochs", "5"])
    assert code == 0
    out = capsys.readouterr().out
    assert "per-model mean (no prompt)" in out and "tf-idf + logistic reg." in out
    manifest = json.loads((tmp_path / "art" / "manifest.json").read_text())
    assert set(manifest["dev_metrics"]["baselines"]) == {"per-model mean (no prompt)", "tf-idf + logistic reg."}


def test_export_onnx_cli_carries_the_default_artifacts_lexical_part(tmp_path, capsys):
    """The committed default has a lexical part: only the static graph is written, and it scores as the
    in-process predictor does."""
    import onnxruntime as ort

    from predictor_service.artifact import default_artifact_path
    from predictor_service.head import log_lengths
    from predictor_service.predictor import Predictor
    from tests.support.predicting import assert_scores_equal

    assert routoo(["export-onnx", "--out", str(tmp_path / "repo"), "--instance-kind", "cpu"]) == 0
    assert sorted(p.name for p in (tmp_path / "repo").iterdir()) == ["routoo_static_onnx"]
    assert "wrote" in capsys.readouterr().out
    predictor = Predictor.load(default_artifact_path(), device="cpu")
    assert predictor.lexical is not None
    texts = ["Integrate x^2 from 0 to 3.", "Which court hears a contract dispute?", ""]
    tokens = predictor.encoder.tokenize(texts)
    session = ort.InferenceSession(str(tmp_path / "repo" / "routoo_static_onnx" / "1" / "model.onnx"),
                                   providers=["CPUExecutionProvider"])
    quality, cost = session.run(None, {"TOKEN_IDS": tokens.token_ids.numpy(), "OFFSETS": tokens.offsets.numpy(),
                                       "LOG_LEN": log_lengths(texts).numpy()})
    assert_scores_equal(quality, cost, *predictor.predict(texts))
