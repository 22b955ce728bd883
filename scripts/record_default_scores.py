"""Records the committed default artifact's scores on a fixed set of prompts (tests/data/
default_artifact_scores.json), so that tests/predictor_service/test_artifact_portability.py checks that
every path and every machine gives them. Run after `make train-default`:
  .venv/bin/python scripts/record_default_scores.py
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from evals.provenance import machine_summary
from predictor_service.artifact import default_artifact_path
from predictor_service.predictor import Predictor

OUT = Path(__file__).resolve().parents[1] / "tests" / "data" / "default_artifact_scores.json"
# Every branch of the CPU path: plain ASCII (one compiled call), non-ASCII and added tokens (tokenizer),
# past max_tokens (truncated), and a prompt with no known token (the prior).
PROMPTS = [
    "What is 2 + 2?",
    "A ball is thrown straight up at 20 m/s. How long is it in the air?\nA. 2.0 s\nB. 4.1 s\nC. 5.1 s",
    "Which court has jurisdiction over a contract dispute between citizens of two states?",
    "Ünïcödé prompt — 日本語のテキストと emoji 🚀 mixed in",
    "see [UNK] and [PAD] here",
    "Explain the Krebs cycle in detail. " * 200,
    "Line one\nline two\n\ttabbed line three",
    "\u200b\u200d",
]


def main() -> None:
    folder = default_artifact_path()
    predictor = Predictor.load(folder, device="cpu")
    quality, cost = predictor.predict(PROMPTS)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps({
        "head_sha256": hashlib.sha256((folder / "head.safetensors").read_bytes()).hexdigest(),
        "table_digest": predictor.artifact.manifest.encoder_table_digest,
        "lexical_sha256": predictor.artifact.manifest.lexical.get("sha256"),   # None: no lexical part
        "recorded_on": machine_summary(),
        "prompts": PROMPTS,
        "quality": quality.tolist(),
        "expected_cost_usd": cost.tolist(),
    }, indent=1) + "\n")
    print(f"recorded {len(PROMPTS)} prompts x {quality.shape[1]} models -> {OUT}")


if __name__ == "__main__":
    main()
