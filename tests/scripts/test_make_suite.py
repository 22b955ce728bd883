"""scripts/make_suite.py builds the generalisation suite from a canonical train/dev pair: every set must load as
a canonical dataset, its added text must come from train prompts only, the added text must be billed, and each
set must hold what its name says (held-out categories, the two pools, 500 train prompts)."""

import json
import math

import numpy as np

from scripts.make_suite import POOL_2, build
from tests.support.datasets import write_dataset
from training.data import load_dataset

CATEGORIES = ["biology", "law", "math", "physics", "history", "economics"]
MODELS = [*POOL_2, "gemini-1.5-flash-002", "Llama-2-7b-hf", "Yi-6B"]


def _split(folder, side, n, seed):
    rng = np.random.default_rng(seed)
    prompts = [{"id": f"{side}{i}", "text": f"{side} question {i} on {CATEGORIES[i % 6]}?\nA. yes\nB. no\nC. maybe",
                "category": CATEGORIES[i % 6]} for i in range(n)]
    scores = [[p["id"], *rng.integers(0, 2, len(MODELS))] for p in prompts]
    costs = [[p["id"], *(1e-6 * (k + 1) for k in range(len(MODELS)))] for p in prompts]
    return write_dataset(folder / side, prompts, MODELS, scores, costs)


def _suite(tmp_path):
    _split(tmp_path / "data", "train", 600, 0)
    _split(tmp_path / "data", "dev", 120, 1)
    made = build(tmp_path / "data", tmp_path / "suite", seed=0)
    return {name: (load_dataset(tmp_path / "suite" / name / "train"), load_dataset(tmp_path / "suite" / name / "test"))
            for name in made}, tmp_path / "suite"


def test_every_set_loads_and_holds_what_its_name_says(tmp_path):
    sets, root = _suite(tmp_path)
    assert set(sets) == {"fewshot-5", "long-rag", "heldout-cats", "pool-2", "pool-open", "train-500"}
    train, test = sets["heldout-cats"]
    held = set(json.loads((root / "heldout-cats" / "held_out.json").read_text()))
    assert len(held) == 4 and {p.category for p in test.prompts} == held
    assert not held & {p.category for p in train.prompts}
    assert sets["pool-2"][0].model_names == list(POOL_2) == sets["pool-2"][1].model_names
    assert sets["pool-open"][0].model_names == ["Mixtral-8x7B-Instruct-v0.1", "Llama-2-7b-hf", "Yi-6B"]   # open
    assert len(sets["train-500"][0]) == 500 and len(sets["train-500"][1]) == 120


def test_added_text_comes_from_train_and_is_billed(tmp_path):
    sets, _ = _suite(tmp_path)
    original = load_dataset(tmp_path / "data" / "dev")
    train_texts = [p.text for p in load_dataset(tmp_path / "data" / "train").prompts]
    for name in ("fewshot-5", "long-rag"):
        _, test = sets[name]
        for i, (p, q) in enumerate(zip(test.prompts, original.prompts)):
            assert p.text.endswith(q.text) and len(p.text) > len(q.text), name      # the question comes last
            prefix = p.text[:-len(q.text)]
            assert "dev question" not in prefix                                  # never a test question
            assert any(t in prefix for t in train_texts)
            added_tokens = math.ceil(len(prefix) / 4)
            np.testing.assert_allclose(test.cost_usd[i], original.cost_usd[i] + added_tokens * 1.0 / 1e6, rtol=1e-6)
    fewshot = sets["fewshot-5"][1].prompts[0].text
    assert fewshot.count("\nAnswer: ") == 5
