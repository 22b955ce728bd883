"""Small canonical datasets for the tests (the format of ../shared/data/README.md), written to a tmp folder."""

import json

import numpy as np


def write_dataset(folder, prompts, models, scores, costs=None):
    """A canonical dataset folder; `scores`/`costs` are lists of rows `[id, v1, v2, ...]` (None = blank)."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "prompts.jsonl", "w") as f:
        for p in prompts:
            f.write(json.dumps(p) + "\n")
    (folder / "models.json").write_text(json.dumps({"models": [
        {"name": m, "input_usd_per_mtok": 1.0, "output_usd_per_mtok": 2.0, "price_note": ""} for m in models]}))
    for name, rows in (("scores.csv", scores), ("costs.csv", costs if costs is not None else scores)):
        with open(folder / name, "w") as f:
            f.write(",".join(["id", *models]) + "\n")
            for row in rows:
                f.write(",".join("" if v is None else str(v) for v in row) + "\n")
    return folder


TOPICS = {"math": "integral derivative equation algebra polynomial matrix",
          "law": "court statute plaintiff contract tort jurisdiction",
          "biology": "cell protein enzyme gene organism membrane"}


def synthetic_dataset(folder, n=240, seed=0):
    """Three topics; `math_whiz` is right on math only, `lawyer` on law only, `coin` at random."""
    rng = np.random.default_rng(seed)
    prompts, scores, costs = [], [], []
    for i in range(n):
        topic = list(TOPICS)[i % 3]
        words = rng.choice(TOPICS[topic].split(), size=6)
        text = f"Question {i} about {topic}: " + " ".join(words) + "?" + " detail" * int(rng.integers(0, 40))
        prompts.append({"id": f"p{i}", "text": text, "category": topic})
        scores.append([f"p{i}", int(topic == "math"), int(topic == "law"), int(rng.integers(0, 2))])
        costs.append([f"p{i}", 1e-6 * len(text), 2e-6 * len(text), 1e-7 * len(text)])
    return write_dataset(folder, prompts, ["math_whiz", "lawyer", "coin"], scores, costs)
