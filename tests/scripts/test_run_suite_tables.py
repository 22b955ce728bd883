"""scripts/run_suite.py --tables-from prints the two tables of an earlier run's JSON without training, with
what CV kept (window, head, lexical part) and the mean difference to TF-IDF + LR."""

import json
import sys

import pytest

from scripts import run_suite


def _router(auc, gap, lo=0.0, hi=0.0):
    return {"auc": auc, "auc_ci95": [auc - 0.01, auc + 0.01], "gap_recovered": gap, "routoo_minus_auc_ci95": [lo, hi]}


def _result(name, lexical_kept, routoo_auc, tfidf_auc):
    cv = f"routoo (window 256, head default, lexical {'on' if lexical_kept else 'off'}, prior shrink 0, chosen by CV)"
    return {"set": name, "n_train": 100, "n_test": 50, "n_models": 3, "window_kept": "256", "head_kept": "default",
            "prior_shrink": None, "tfidf_check": {"head_minus_tfidf": 0.001, "head_minus_tfidf_ci95": [-0.002, 0.004],
                                                  "lexical": {"kept": lexical_kept}},
            "routers": {cv: _router(routoo_auc, 0.1), "no-prompt (per-model mean)": _router(0.70, 0.0),
                        "kNN-50": _router(0.71, 0.02), "TF-IDF + LR": _router(tfidf_auc, 0.05, -0.001, 0.02),
                        "told category": _router(0.75, 0.2), "oracle": _router(0.95, 1.0)},
            "scorer_metric": {cv: {"auc": routoo_auc - 0.01, "gap": 0.3}, "kNN-50": {"auc": 0.70, "gap": 0.1},
                              "TF-IDF + LR": {"auc": tfidf_auc - 0.02, "gap": 0.2},
                              "told category": {"auc": 0.74, "gap": 0.4}, "no-prompt": {"auc": 0.65, "gap": 0.0},
                              "oracle": {"auc": 0.94, "gap": 1.0}}}


def test_tables_from_an_earlier_run(tmp_path, monkeypatch, capsys):
    path = tmp_path / "suite.json"
    path.write_text(json.dumps([_result("a", True, 0.80, 0.79), _result("b", False, 0.76, 0.78)]))
    monkeypatch.setattr(sys, "argv", ["run_suite.py", "--tables-from", str(path)])
    assert run_suite.main() == 0
    out = capsys.readouterr().out
    assert "| a (100 / 50, 3) | 256, default, kept, 0 | 0.8000 [0.7900, 0.8100] / 0.100 |" in out
    assert "| b (100 / 50, 3) | 256, default, not kept, 0 |" in out
    assert "mean Routoo - TF-IDF AUC over the 2 sets: -0.0050" in out          # (+0.01 - 0.02) / 2
    assert "mean Routoo - TF-IDF, scorer's metric, over the 2 sets: +0.0050" in out   # (+0.02 - 0.01) / 2


def test_a_run_needs_the_suite_folder(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["run_suite.py"])
    with pytest.raises(SystemExit):
        run_suite.main()
