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


def test_a_lone_surrogate_is_read_as_the_replacement_character_and_counted(tmp_path):
    # JSON's "\ud83d" alone (half of an emoji, as cut by JavaScript tools): valid JSON, not encodable UTF-8.
    prompts = [{"id": "a", "text": "cut emoji \ud83d here", "category": "m\udc00ath"}, *PROMPTS[1:]]
    folder = write_dataset(tmp_path / "d", prompts, ["m1"], [["a", 1], ["b", 0], ["c", 1]])
    ds = load_dataset(folder)
    assert ds.prompts[0].text == "cut emoji \ufffd here" and ds.prompts[0].category == "m\ufffdath"
    assert ds.report.lone_surrogates == 1
    assert ds.report.details() == ["prompts.jsonl:1: a lone UTF-16 surrogate, read as U+FFFD"]
    ds.texts[0].encode("utf-8")                       # what the tokenizer and Triton need


def test_duplicate_rows_keep_the_first_and_are_counted_duplicate_columns_refused(tmp_path):
    folder = write_dataset(tmp_path / "d", PROMPTS, ["m1", "m2"], [["a", 1, 0], ["b", 0, 1], ["a", 0, 1]])
    ds = load_dataset(folder)
    np.testing.assert_array_equal(ds.quality[0], [1, 0])
    assert ds.report.duplicate_rows == 2              # in scores.csv and in costs.csv
    assert ds.report.details()[0] == "scores.csv:4: a second row for id 'a', ignored"
    text = (folder / "scores.csv").read_text().replace("id,m1,m2", "id,m1,m1", 1)
    (folder / "scores.csv").write_text(text)
    with pytest.raises(DatasetError, match=r"scores.csv: model column\(s\) \['m1'\] appear more than once"):
        load_dataset(folder)


def test_a_model_without_any_train_score_is_named(tmp_path):
    ds = load_dataset(write_dataset(tmp_path / "d", PROMPTS, ["m1", "m2"],
                                    [["a", 1, None], ["b", 0, None], ["c", 1, None]]))
    assert ds.report.models_without_scores == 1
    assert "no known score for ['m2']" in ds.report.details()[0]


def test_byte_order_marks_not_utf8_and_a_models_field_that_is_not_a_list(tmp_path):
    folder = write_dataset(tmp_path / "d", PROMPTS, ["m1"], [["a", 1], ["b", 0], ["c", 1]])
    for name in ("prompts.jsonl", "scores.csv"):
        (folder / name).write_bytes(b"\xef\xbb\xbf" + (folder / name).read_bytes())
    assert [p.id for p in load_dataset(folder).prompts] == ["a", "b", "c"]
    (folder / "prompts.jsonl").write_bytes((folder / "prompts.jsonl").read_bytes() + b'{"id": "d", "text": "\xff"}\n')
    with pytest.raises(DatasetError, match=r"prompts.jsonl:4: not UTF-8 text"):
        load_dataset(folder)
    folder = write_dataset(tmp_path / "e", PROMPTS, ["m1"], [["a", 1], ["b", 0], ["c", 1]])
    (folder / "models.json").write_text('{"models": null}')
    with pytest.raises(DatasetError, match="'models' must be a list"):
        load_dataset(folder)
    # One name a line in Triton's label file: a newline would shift every later label.
    (folder / "models.json").write_text('{"models": [{"name": "m1\\nm2"}]}')
    with pytest.raises(DatasetError, match=r"model name 'm1\\nm2' holds the character U\+000A"):
        load_dataset(folder)
    (folder / "models.json").write_text('{"models": [{"name": "m1", "input_usd_per_mtok": true}]}')
    with pytest.raises(DatasetError, match="input_usd_per_mtok must be a non-negative number or null, got True"):
        load_dataset(folder)
