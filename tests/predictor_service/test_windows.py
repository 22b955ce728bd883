"""Encoder windows: a long prompt keeps its first max_tokens - tail_tokens and last tail_tokens token ids, on
every tokenizer path (compiled plain ASCII, chunk cache, the tokenizer itself) and in the one-call serving
path; artifacts record the window and those from before windows keep their first-256 behaviour."""

import json
import shutil
import string

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from predictor_service.artifact import Artifact, default_artifact_path, static_encoder_from
from training.data import load_dataset
from predictor_service.windows import _window, check_window
from predictor_service.predictor import Predictor
from training.fit import TrainConfig, train
from tests.support.datasets import synthetic_dataset
from tests.support.predicting import step_by_step

MAX, TAIL = 48, 20        # small, so that short generated texts already pass the window


@pytest.fixture(scope="module")
def windowed():
    return static_encoder_from(max_tokens=MAX, tail_tokens=TAIL)


def _expected(encoder, text):
    ids = encoder.tokenizer.encode(text, add_special_tokens=False).ids   # no truncation with a tail
    return [t for t in _window(ids, MAX, TAIL) if t != encoder._unk_id]


@pytest.mark.parametrize("text", [
    "word " * 400 + "the question at the end?", "naïve café 東京 " * 60 + "tail ünïcode end", "a\x1cb c " * 80,
    "x\u2028y " * 90 + "last", "(x+1)^2=" * 500 + " tail", "short", "", "[UNK] " * 70 + "end [UNK]",
    "supercalifragilisticexpialidocious" * 4 + " q" * 60, "東京は日本の首都である。" * 300 + "最後の質問は？",
    "é!" * 3000 + "[UNK]" + "é?" * 200,
])
def test_window_keeps_head_and_tail_on_every_path(windowed, text):
    windowed.clear_caches()
    expected = _expected(windowed, text)
    assert windowed._token_ids(text) == expected
    assert windowed._token_ids(text) == expected            # second time from the chunk cache
    assert len(expected) <= MAX


@settings(max_examples=200, deadline=None, derandomize=True)
@given(st.lists(st.sampled_from([*string.printable, "the ", "question ", "x" * 101, "é", "東", "[UNK]"]),
                max_size=300).map("".join))
def test_window_matches_the_tokenizer_on_any_text(windowed, text):
    windowed.clear_caches()
    assert windowed._token_ids(text) == _expected(windowed, text)


@pytest.mark.parametrize("max_tokens, tail", [(0, 0), (256, -1), (256, 300)])
def test_a_window_that_cannot_be_is_refused(max_tokens, tail):
    with pytest.raises(ValueError, match="window needs"):
        check_window(max_tokens, tail)


@pytest.fixture(scope="module")
def windowed_predictor(tmp_path_factory):
    """The default head read through a head + tail window (a manifest edit: same weights, other window)."""
    folder = tmp_path_factory.mktemp("windowed") / "artifact"
    shutil.copytree(default_artifact_path(), folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest.update(max_tokens=MAX, tail_tokens=TAIL)
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return Predictor.load(folder, device="cpu")


def test_the_serving_path_reads_the_window(windowed_predictor):
    predictor = windowed_predictor
    assert predictor.encoder.tail_tokens == TAIL and predictor.encoder.max_tokens == MAX
    head = "Context: " + "the court ruled on the contract " * 60
    texts = [head + "Question: integrate x^2 from 0 to 3.", head + "Question: which enzyme splits starch?",
             head + "Question: intégrer x² de 0 à 3 (non-ASCII)", "a short plain prompt"]
    quality, cost = predictor.predict(texts)
    expected_quality, expected_cost = step_by_step(predictor, texts)
    np.testing.assert_array_equal(quality, expected_quality)       # one compiled call == step by step
    np.testing.assert_array_equal(cost, expected_cost)
    assert not np.allclose(quality[0], quality[1])                 # the question past the head is read
    head_only = Predictor.load(default_artifact_path(), device="cpu")
    q_head, _ = head_only.predict(texts[:2])
    np.testing.assert_array_equal(q_head[0], q_head[1])            # first 256 tokens alone: the same


def test_artifacts_from_before_windows_read_the_first_256_tokens(tmp_path):
    # An artifact written before windows existed: its manifest has no tail_tokens.
    folder = tmp_path / "before-windows"
    shutil.copytree(default_artifact_path(), folder)
    raw = json.loads((folder / "manifest.json").read_text())
    raw.pop("tail_tokens", None)
    (folder / "manifest.json").write_text(json.dumps(raw))
    artifact = Artifact.load(folder)
    encoder = artifact.load_encoder()
    assert (artifact.manifest.tail_tokens, encoder.tail_tokens, encoder.max_tokens) == (0, 0, 256)


def test_train_records_the_window_and_it_round_trips(tmp_path):
    train_ds = load_dataset(synthetic_dataset(tmp_path / "train", n=120))
    artifact, _ = train(train_ds, None, config=TrainConfig(hidden=16, max_epochs=5, patience=5),
                        show_progress=False, max_tokens=64, tail_tokens=16)
    artifact.save(tmp_path / "art")
    loaded = Artifact.load(tmp_path / "art")
    assert (loaded.manifest.max_tokens, loaded.manifest.tail_tokens) == (64, 16)
    assert loaded.load_encoder().window == "48+16"


def test_the_prompt_size_limit_is_configurable():
    from predictor_service.contract import DEFAULT_MAX_PROMPT_BYTES, max_prompt_bytes_from

    assert DEFAULT_MAX_PROMPT_BYTES == 256 * 1024
    assert max_prompt_bytes_from({}) == DEFAULT_MAX_PROMPT_BYTES
    assert max_prompt_bytes_from({"ROUTOO_MAX_PROMPT_BYTES": "1048576"}) == 1 << 20
    for bad in ("0", "-3", "lots", "1.5"):
        with pytest.raises(ValueError, match="ROUTOO_MAX_PROMPT_BYTES must be a positive whole number"):
            max_prompt_bytes_from({"ROUTOO_MAX_PROMPT_BYTES": bad})


def test_a_prompt_of_the_full_size_is_scored_in_its_window(windowed_predictor):
    from predictor_service.contract import MAX_PROMPT_BYTES

    text = ("context words " * (MAX_PROMPT_BYTES // 14))[: MAX_PROMPT_BYTES - 40] + " Question: why?"
    assert len(text.encode()) <= MAX_PROMPT_BYTES
    quality, _ = windowed_predictor.predict([text])
    expected, _ = step_by_step(windowed_predictor, [text])
    np.testing.assert_array_equal(quality, expected)


def test_a_tail_only_window_keeps_the_last_tokens():
    encoder = static_encoder_from(max_tokens=32, tail_tokens=32)
    for text in ("word " * 100 + "the very end", "ünï " * 80 + "end of it", "short"):
        ids = encoder.tokenizer.encode(text, add_special_tokens=False).ids
        assert encoder._token_ids(text) == [t for t in ids[-32:] if t != encoder._unk_id]


def _question_last_dataset(folder, n=150, seed=0):
    """60 topic words come after 300 tokens of the same filler: only a window with a tail can see them."""
    from tests.support.datasets import write_dataset
    from tests.support.datasets import TOPICS

    rng = np.random.default_rng(seed)
    prompts, scores, costs = [], [], []
    for i in range(n):
        topic = list(TOPICS)[i % 3]
        text = "Examples follow. " + "filler " * 300 + "Question: " + " ".join(rng.choice(TOPICS[topic].split(), 60))
        prompts.append({"id": f"p{i}", "text": text, "category": ""})
        scores.append([f"p{i}", int(topic == "math"), int(topic == "law"), int(rng.integers(0, 2))])
        costs.append([f"p{i}", 1e-4, 1e-4, 3e-4])      # the coin is the dearest: routing pays
    return write_dataset(folder, prompts, ["math_whiz", "lawyer", "coin"], scores, costs)


def test_auto_window_keeps_a_tail_where_the_question_is_last_and_records_why(tmp_path, capsys):
    from cli.main import main as routoo

    data = _question_last_dataset(tmp_path / "train")
    assert routoo(["train", "--data", str(data), "--out", str(tmp_path / "art"), "--hidden", "16",
                   "--max-epochs", "40", "--skip-tfidf"]) == 0
    choice = Artifact.load(tmp_path / "art").manifest.training["window_choice"]
    assert set(choice["candidates"]) == {"256", "64+192", "0+256"} and choice["long_prompt_share"] == 1.0
    assert choice["kept"] != "256"
    assert (choice["candidates"][choice["kept"]]["oof_frontier_auc"]
            >= choice["candidates"]["256"]["oof_frontier_auc"] + choice["margin_over_head_only"])
    assert f"encoder window: {choice['kept']}, chosen by out-of-fold" in capsys.readouterr().out


def test_auto_window_trains_once_where_no_prompt_is_long(tmp_path):
    from evals.recipe import train_choosing_window

    train_ds = load_dataset(synthetic_dataset(tmp_path / "train", n=90))
    artifact, _ = train_choosing_window(train_ds, None, config=TrainConfig(hidden=16, max_epochs=5, patience=5),
                                        show_progress=False)
    choice = artifact.manifest.training["window_choice"]
    assert list(choice["candidates"]) == ["256"] and choice["kept"] == "256" and "only 256 was trained" in choice["note"]
    assert artifact.manifest.tail_tokens == 0


def test_minilm_reads_the_same_window(monkeypatch):
    import torch

    from predictor_service.encoders import MiniLMEncoder

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    encoder = MiniLMEncoder(max_tokens=64, tail_tokens=24)
    text = "Examples: " + "the court ruled on the contract. " * 40 + "Question: which enzyme splits starch?"
    ids = encoder.tokenizer(text, truncation=False, verbose=False)["input_ids"]
    window = _window(ids, 64, 24)
    assert len(ids) > 64 and window[0] == ids[0] and window[-1] == ids[-1]   # [CLS] ... [SEP]
    with torch.inference_mode():
        hidden = encoder.model(input_ids=torch.tensor([window])).last_hidden_state.mean(1)
    expected = torch.nn.functional.normalize(hidden, dim=-1).numpy()
    np.testing.assert_allclose(encoder.encode([text]), expected, atol=1e-5)
    with pytest.raises(ValueError, match="minilm reads at most 512 tokens"):
        MiniLMEncoder(max_tokens=1024, tail_tokens=512)
