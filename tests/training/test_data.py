"""Loading the canonical routing dataset: any pool, any size, clear errors and counted gaps."""

import json

import numpy as np
import pytest

from tests.support.datasets import write_dataset
from training.data import DatasetError, load_dataset, read_prompts


PROMPTS = [{"id": "a", "text": "first", "category": "math"}, {"id": "b", "text": "second"},
           {"id": "c", "text": "third"}]


def test_joins_on_id_whatever_the_row_order(tmp_path):
    ds = load_dataset(write_dataset(tmp_path / "d", PROMPTS, ["m1", "m2"],
                                    [["c", 1, 0], ["a", 0, 1], ["b", 1, 1]]))
    assert ds.model_names == ["m1", "m2"]
    assert [p.id for p in ds.prompts] == ["a", "b", "c"]
    np.testing.assert_array_equal(ds.quality, [[0, 1], [1, 1], [1, 0]])
    assert ds.prompts[0].category == "math"
    assert ds.report.summary() == "clean"


def test_blanks_and_unknown_ids_are_counted_not_fatal(tmp_path):
    ds = load_dataset(write_dataset(tmp_path / "d", PROMPTS, ["m1", "m2"],
                                    [["a", 1, None], ["b", None, None], ["zz", 1, 1], ["c", 0, 1]]))
    assert ds.report.blank_scores == 3
    assert ds.report.unknown_ids == 2          # the stray row in scores.csv and in costs.csv
    assert ds.report.prompts_without_scores == 1
    assert [p.id for p in ds.prompts] == ["a", "c"]
    assert np.isnan(ds.quality[0, 1])


def test_malformed_row_is_counted(tmp_path):
    folder = write_dataset(tmp_path / "d", PROMPTS, ["m1"], [["a", 1], ["b", 0], ["c", 1]])
    with open(folder / "scores.csv", "a") as f:
        f.write("c,1,1,1\n")
    ds = load_dataset(folder)
    assert ds.report.malformed_rows == 1


@pytest.mark.parametrize("models_in_csv, message", [
    (["m1"], "missing ['m2']"),
    (["m1", "m2", "m3"], "not in models.json ['m3']"),
])
def test_model_columns_must_match_models_json(tmp_path, models_in_csv, message):
    folder = write_dataset(tmp_path / "d", PROMPTS, models_in_csv, [["a", *[1] * len(models_in_csv)]])
    (folder / "models.json").write_text(json.dumps({"models": [{"name": "m1"}, {"name": "m2"}]}))
    with pytest.raises(DatasetError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_dataset(folder)


@pytest.mark.parametrize("bad, message", [("1.5", "not a number in"), ("yes", "not a number in"),
                                          ("-1", "not a number in")])
def test_bad_score_names_file_line_and_model(tmp_path, bad, message):
    folder = write_dataset(tmp_path / "d", PROMPTS, ["m1"], [["a", 1], ["b", bad]])
    with pytest.raises(DatasetError, match=rf"scores.csv:3: model 'm1'.*{message}"):
        load_dataset(folder)


@pytest.mark.parametrize("line, message", [
    ("{not json", "not valid JSON"),
    ('["a list"]', "expected a JSON object"),
    ('{"id": "x"}', "field 'text' must be a string"),
    ('{"id": "a", "text": "again"}', "duplicate id 'a'"),
])
def test_bad_prompt_lines(tmp_path, line, message):
    path = tmp_path / "prompts.jsonl"
    path.write_text('{"id": "a", "text": "t"}\n' + line + "\n")
    with pytest.raises(DatasetError, match=message):
        read_prompts(path)


def test_missing_folder_and_files(tmp_path):
    with pytest.raises(DatasetError, match="no such dataset folder"):
        load_dataset(tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no such prompts file"):
        load_dataset(tmp_path / "empty")


def test_select_models_and_unknown_model(tmp_path):
    ds = load_dataset(write_dataset(tmp_path / "d", PROMPTS, ["m1", "m2"], [["a", 1, 0], ["b", 0, 1]]))
    sub = ds.select_models(["m2"])
    np.testing.assert_array_equal(sub.quality[:, 0], [0, 1])
    with pytest.raises(DatasetError, match="unknown model"):
        ds.select_models(["nope"])
