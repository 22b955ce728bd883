"""In-process static predictor latency by encoder window and prompt length: batch-1 p50 on MMLU-Pro dev
prompts (issue 2's target: < 0.3 ms) and the cost per 1,000 tokens of long prompts, plain ASCII and mixed.

    python -m bench.window_latency [--window 64+192] [--out bench/results/window_latency.json]

The windowed predictor is the committed default head read through the window (a manifest edit: the same
weights; latency does not depend on their values). A window with a tail tokenizes the whole prompt (the
tail is its end), then scores max_tokens ids, so its cost grows with the prompt's bytes; the head-only
window stops tokenizing at max_tokens. Long prompts are dev prompts joined until they reach N tokens:
`long` of the plain ASCII ones only, `long_mixed` of all of them (21% hold a non-ASCII character, so nearly
every long text does: the rewrite of predictor_service/bert_rewrite.py, or the chunk path past its bounds).
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.predictor_latency import measure
from bench.report import write_results
from bench.inputs import load_prompts
from predictor_service.artifact import default_artifact_path
from predictor_service.predictor import Predictor

LENGTHS = (1_000, 4_000, 16_000, 60_000)   # tokens; 60k is about 256 KiB of English


def windowed_artifact(window: str, folder: Path) -> Path:
    head, _, tail = window.partition("+")
    shutil.copytree(default_artifact_path(), folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest.update(max_tokens=int(head) + int(tail or 0), tail_tokens=int(tail or 0))
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


def long_prompts(predictor: Predictor, prompts: list[str], n_tokens: int, count: int, *,
                 ascii_only: bool = True) -> list[str]:
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_str(predictor.encoder.tokenizer_json)   # untruncated, to count every token
    pieces = [p for p in prompts if p.isascii()] if ascii_only else prompts
    tokens_per_char = (sum(len(tokenizer.encode(p, add_special_tokens=False).ids) for p in pieces[:200])
                       / sum(len(p) for p in pieces[:200]))
    chars = int(n_tokens / tokens_per_char)
    out, i = [], 0
    for _ in range(count):
        text = ""
        while len(text) < chars:
            text += pieces[i % len(pieces)] + "\n\n"
            i += 1
        out.append(text[:chars])
    return out


def time_batch1(predictor: Predictor, texts: list[str], repeats: int) -> tuple[float, float]:
    """(wall p50, CPU p50) ms. CPU time is this thread's own: on a machine shared by other work, a call of a
    few ms is descheduled part-way and its wall time measures the others' load (8 runnable on 2 cores:
    19 ms wall for ~4 ms of work)."""
    for t in texts:
        predictor.predict([t])
    wall, cpu = [], []
    for _ in range(repeats):
        for t in texts:
            start, start_cpu = time.perf_counter(), time.thread_time()
            predictor.predict([t])
            cpu.append((time.thread_time() - start_cpu) * 1e3)
            wall.append((time.perf_counter() - start) * 1e3)
    return float(np.median(wall)), float(np.median(cpu))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.window_latency", description=__doc__.split("\n")[0])
    parser.add_argument("--window", default="64+192", help="HEAD+TAIL tokens of the windowed predictor")
    parser.add_argument("--calls", type=int, default=400)
    parser.add_argument("--out", type=Path, default=Path("bench/results/window_latency.json"))
    args = parser.parse_args(argv)
    prompts = load_prompts(None, limit=1000)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, path in (("256", default_artifact_path()),
                           (args.window, windowed_artifact(args.window, Path(tmp) / "windowed"))):
            predictor = Predictor.load(path, device="cpu")
            typical = measure(predictor, prompts, 1, args.calls)
            row = {"window": name, "dev_batch1_p50_ms": typical["p50_ms_per_prompt"],
                   "dev_batch1_p99_ms": typical["p99_ms_per_prompt"]}
            print(f"window {name:>8}: dev prompts, batch 1: p50 {row['dev_batch1_p50_ms']:.3f} ms, "
                  f"p99 {row['dev_batch1_p99_ms']:.3f} ms", flush=True)
            for key, ascii_only in (("long", True), ("long_mixed", False)):
                row[key] = {}
                for n in LENGTHS:
                    texts = long_prompts(predictor, prompts, n, 5, ascii_only=ascii_only)
                    p50, cpu = time_batch1(predictor, texts, 20 if n < 30_000 else 8)
                    row[key][str(n)] = {"p50_ms": p50, "cpu_p50_ms": cpu, "cpu_ms_per_1000_tokens": cpu * 1000 / n,
                                        "bytes": int(np.mean([len(t.encode()) for t in texts]))}
                    print(f"window {name:>8}, {key:<10}: {n:>6} tokens (~{row[key][str(n)]['bytes'] // 1024} KiB): "
                          f"p50 {p50:.3f} ms wall, {cpu:.3f} ms CPU = {cpu * 1000 / n:.4f} ms CPU per 1,000 tokens",
                          flush=True)
            rows.append(row)
    write_results(args.out, rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
