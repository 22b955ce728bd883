"""Writes the generalisation suite: data sets derived from mmlu-pro/{train,dev}, each a pair of canonical
folders SET/train and SET/test, for `routoo train` + `routoo eval` (scripts/run_suite.py runs them all).

    PYTHONPATH=$PWD .venv/bin/python scripts/make_suite.py --data ../shared/data/mmlu-pro --out /tmp/suite

Sets (the test side is always built from dev, the train side from train; every added text on either side
is taken from *train* prompts, never from a test question; seeded, so the same folders every time):
- fewshot-5: 5 solved train questions of any category ("Answer: X") before the question, the layout of
  RouterBench's few-shot prompts. The data has no answer key, so each example's answer letter is a seeded
  draw among its options: the text has the shape of a few-shot prompt, the labels stay the question's.
- long-rag: "Context:" with 2-12 unrelated train passages (~1-4k tokens), then "Question:" and the question,
  which so starts well past the first 256 tokens.
- heldout-cats: train on 10 categories, test on the other 4 (chosen by the seed): topics never seen.
- pool-2: gpt-4o@2024-05 vs Mixtral-8x7B-Instruct-v0.1 only (a strong and a cheap model).
- pool-open: the open-weights models only (every name without `routoo eval`'s closed prefixes, 28 of 32),
  trained on that pool alone, as a user with only open models would.
- train-500: 500 random train prompts; the test side is the full dev split.
Costs: the added text is input the models would have been billed for, so each known cost grows by
ceil(added characters / 4) x the model's input price (models without a price keep their cost).
Nothing here is committed: the folders are rebuilt by this script.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import random
from pathlib import Path

from evals.config import EvalConfig
from evals.references import closed_model

FEWSHOT_K = 5
RAG_PASSAGES = (2, 12)          # passages of context per prompt, inclusive
HELDOUT_CATEGORIES = 4
POOL_2 = ("gpt-4o@2024-05", "Mixtral-8x7B-Instruct-v0.1")
SMALL_TRAIN = 500
LETTERS = "ABCDEFGHIJ"


def read_split(folder: Path) -> dict:
    prompts = [json.loads(line) for line in (folder / "prompts.jsonl").read_text().splitlines() if line.strip()]

    def matrix(name: str) -> tuple[list[str], dict[str, list[str]]]:
        with open(folder / name, newline="") as f:
            rows = list(csv.reader(f))
        return rows[0], {r[0]: r[1:] for r in rows[1:]}

    header, scores = matrix("scores.csv")
    cost_header, costs = matrix("costs.csv")
    if cost_header != header:
        raise ValueError(f"{folder}: scores.csv and costs.csv name different models")
    return {"prompts": prompts, "models": header[1:], "scores": scores, "costs": costs,
            "pool": json.loads((folder / "models.json").read_text())}


def write_split(folder: Path, split: dict, prompts: list[dict], *, models: list[str] | None = None,
                added_chars: dict[str, int] | None = None) -> None:
    """prompts: [{"id", "text", "category"}], ids from split; models: a column subset (default all)."""
    folder.mkdir(parents=True, exist_ok=True)
    models = models or split["models"]
    cols = [split["models"].index(m) for m in models]
    price = {m["name"]: m.get("input_usd_per_mtok") for m in split["pool"]["models"]}
    with open(folder / "prompts.jsonl", "w") as f:
        for p in prompts:
            f.write(json.dumps({"id": p["id"], "text": p["text"], "category": p["category"]}) + "\n")
    for name, table in (("scores.csv", split["scores"]), ("costs.csv", split["costs"])):
        with open(folder / name, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["id", *models])
            for p in prompts:
                row = table.get(p["id"])
                if row is None:
                    continue
                cells = [row[c] for c in cols]
                extra = (added_chars or {}).get(p["id"], 0)
                if name == "costs.csv" and extra:
                    cells = [_add_input_cost(v, price.get(m), extra) for v, m in zip(cells, models)]
                w.writerow([p["id"], *cells])
    pool = dict(split["pool"])
    pool["models"] = [m for m in split["pool"]["models"] if m["name"] in models]
    pool["source"] = f"{split['pool'].get('source', '')} (derived by scripts/make_suite.py)".strip()
    (folder / "models.json").write_text(json.dumps(pool, indent=1) + "\n")


def _add_input_cost(value: str, usd_per_mtok: float | None, chars: int) -> str:
    if not value.strip() or usd_per_mtok is None:
        return value
    return repr(float(value) + math.ceil(chars / 4) * usd_per_mtok / 1e6)


def _solved(text: str, rng: random.Random) -> str:
    """A train question as a few-shot example: its text and an answer letter among its options."""
    n_options = sum(1 for line in text.splitlines() if len(line) > 2 and line[1:3] == ". " and line[0] in LETTERS)
    return f"{text}\nAnswer: {LETTERS[rng.randrange(max(1, min(n_options, 10)))]}"


def with_prefix(split: dict, pool_texts: list[tuple[str, str]], make, seed: int) -> tuple[list[dict], dict]:
    """Each prompt of split with make(rng, candidates) text before it; pool_texts: (id, text) of train."""
    rng = random.Random(seed)
    out, added = [], {}
    for p in split["prompts"]:
        text = make(rng, pool_texts, p["id"]) + p["text"]
        out.append({**p, "text": text})
        added[p["id"]] = len(text) - len(p["text"])
    return out, added


def fewshot_prefix(rng: random.Random, pool: list[tuple[str, str]], own_id: str) -> str:
    picks = _draw(rng, pool, FEWSHOT_K, own_id)
    return ("The following are multiple choice questions (with answers).\n\n"
            + "\n\n".join(_solved(t, rng) for t in picks) + "\n\n")


def rag_prefix(rng: random.Random, pool: list[tuple[str, str]], own_id: str) -> str:
    picks = _draw(rng, pool, rng.randint(*RAG_PASSAGES), own_id)
    return ("Context:\n" + "\n\n".join(f"[{i + 1}] {t}" for i, t in enumerate(picks))
            + "\n\nAnswer the question using the context where it helps.\nQuestion: ")


def _draw(rng: random.Random, pool: list[tuple[str, str]], k: int, own_id: str) -> list[str]:
    picks: list[str] = []
    while len(picks) < k:
        i, t = pool[rng.randrange(len(pool))]
        if i != own_id:                 # a train prompt never sees itself as an example
            picks.append(t)
    return picks


def build(data: Path, out: Path, seed: int) -> list[str]:
    train, dev = read_split(data / "train"), read_split(data / "dev")
    train_texts = [(p["id"], p["text"]) for p in train["prompts"]]
    made = []
    for name, make in (("fewshot-5", fewshot_prefix), ("long-rag", rag_prefix)):
        for side, split, offset in (("train", train, 0), ("test", dev, 1)):
            prompts, added = with_prefix(split, train_texts, make, seed * 7919 + offset)
            write_split(out / name / side, split, prompts, added_chars=added)
        made.append(name)

    categories = sorted({p["category"] for p in train["prompts"]})
    held = set(random.Random(seed).sample(categories, HELDOUT_CATEGORIES))
    write_split(out / "heldout-cats" / "train", train, [p for p in train["prompts"] if p["category"] not in held])
    write_split(out / "heldout-cats" / "test", dev, [p for p in dev["prompts"] if p["category"] in held])
    (out / "heldout-cats" / "held_out.json").write_text(json.dumps(sorted(held)) + "\n")
    made.append("heldout-cats")

    missing = [m for m in POOL_2 if m not in train["models"]]
    if missing:
        raise ValueError(f"pool-2 needs {missing}, not in {data / 'train'}")
    write_split(out / "pool-2" / "train", train, train["prompts"], models=list(POOL_2))
    write_split(out / "pool-2" / "test", dev, dev["prompts"], models=list(POOL_2))
    made.append("pool-2")

    open_pool = [m for m in train["models"] if not closed_model(m, EvalConfig().closed_model_prefixes)]
    write_split(out / "pool-open" / "train", train, train["prompts"], models=open_pool)
    write_split(out / "pool-open" / "test", dev, dev["prompts"], models=open_pool)
    made.append("pool-open")

    small = random.Random(seed).sample(train["prompts"], min(SMALL_TRAIN, len(train["prompts"])))
    write_split(out / "train-500" / "train", train, small)
    write_split(out / "train-500" / "test", dev, dev["prompts"])
    made.append("train-500")
    return made


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default="../shared/data/mmlu-pro", help="folder with train/ and dev/")
    ap.add_argument("--out", required=True, help="where the suite's folders are written (not the repo)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    made = build(Path(args.data), Path(args.out), args.seed)
    print(f"wrote {', '.join(made)} under {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
