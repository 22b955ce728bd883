"""The predictor's commands, `routoo score` and `routoo train`, end to end on small data."""

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
