"""`routoo train`'s default recipe and `routoo eval`, end to end, on data shaped like users' rather than like
MMLU-Pro: few-shot code with tabs and emoji, chat turns before the question, long non-ASCII tails, a model
with fractional scores, one mostly unlabelled, blank costs, models without prices, many categories of one
prompt. Kept-aside data sets are of that kind; the recipe must train and report on them, not crash."""

import json
import math

import numpy as np

from cli.main import main as routoo
from predictor_service.predictor import Predictor
from tests.support.datasets import TOPICS

CODE = ('def add(a, b):\n\t"""Return a + b — “quoted” ✓ 日本語"""\n    return a + b\n\n'
        'assert add(1, 2) == 3  # 🚀\n')
MODELS = ["math_whiz", "lawyer", "partial", "sparse"]


def messy_dataset(folder, n: int, seed: int):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    prompts, scores, costs = [], [], []
    for i in range(n):
        topic = list(TOPICS)[i % 3]
        question = f"Question {i} about {topic}: " + " ".join(rng.choice(TOPICS[topic].split(), size=6)) + "?"
        layout = i % 4
        if layout == 0:        # few-shot code first, the question last (past the first 256 tokens)
            text = ("Example:\n" + CODE) * int(rng.integers(1, 30)) + question
        elif layout == 1:
            text = f"system: You are helpful.\nuser: hi\nassistant: Hello!\nuser: {question}"
        elif layout == 2:
            text = question + "\n\n" + "é" * int(rng.integers(0, 3000))
        else:
            text = question
        category = f"subject-{i}" if i < 6 else f"subject-{int(rng.integers(6, 40))}"   # six of one prompt
        prompts.append({"id": f"{folder.name}-{i}", "text": text, "category": category})
        right = [topic == "math", topic == "law", float(rng.choice([0.0, 0.33, 0.5, 1.0])),
                 None if rng.random() < 0.6 else int(rng.integers(0, 2))]
        scores.append([prompts[-1]["id"], *(None if v is None else float(v) for v in right)])
        costs.append([prompts[-1]["id"], *(None if rng.random() < 0.05 else 1e-6 * len(text) * (j + 1)
                                            for j in range(len(MODELS)))])
    with open(folder / "prompts.jsonl", "w", encoding="utf-8") as f:
        for p in prompts:
            f.write(json.dumps(p, ensure_ascii=False) + "\n")
    (folder / "models.json").write_text(json.dumps({"models": [
        {"name": m, "input_usd_per_mtok": None if j >= 2 else 1.0 + j,
         "output_usd_per_mtok": None if j >= 2 else 2.0, "price_note": ""} for j, m in enumerate(MODELS)]}))
    for name, rows in (("scores.csv", scores), ("costs.csv", costs)):
        with open(folder / name, "w") as f:
            f.write(",".join(["id", *MODELS]) + "\n")
            for row in reversed(rows):      # another order than prompts.jsonl: joined on id
                f.write(",".join("" if v is None else str(v) for v in row) + "\n")
    return folder


def test_the_default_recipe_trains_and_evaluates_on_messy_data(tmp_path, capsys):
    train, test = messy_dataset(tmp_path / "train", 240, 0), messy_dataset(tmp_path / "test", 80, 1)
    artifact = tmp_path / "art"
    assert routoo(["train", "--data", str(train), "--dev", str(test), "--out", str(artifact),
                   "--hidden", "32", "--max-epochs", "5"]) == 0
    out = capsys.readouterr().out
    assert "encoder window:" in out and "lexical part:" in out and "tf-idf + logistic reg." in out
    training = json.loads((artifact / "manifest.json").read_text())["training"]
    # A quarter of the prompts pass 256 tokens, so the windows were compared, each with its figures.
    assert set(training["window_choice"]["candidates"]) >= {"256", "64+192"}
    assert "candidates" in training["lexical_choice"]

    predictor = Predictor.load(artifact, device="cpu")
    texts = [json.loads(line)["text"] for line in (test / "prompts.jsonl").read_text(encoding="utf-8").splitlines()]
    quality, cost = predictor.predict(texts)
    assert quality.shape == cost.shape == (80, len(MODELS))
    assert np.isfinite(quality).all() and ((quality > 0) & (quality < 1)).all() and (cost > 0).all()

    report = tmp_path / "eval.json"
    assert routoo(["eval", "--train", str(train), "--test", str(test), "--artifact", str(artifact),
                   "--ref", "", "--out-json", str(report)]) == 0
    summary = json.loads(report.read_text())["pools"]["full"]["summary"]
    assert {"routoo (static)", "TF-IDF + LR", "no-prompt (per-model mean)"} <= {r.split(" / ")[0] for r in summary}
    assert all(math.isfinite(row["auc"]) for name, row in summary.items() if not name.startswith("random"))
