"""In-process predictor latency per prompt, both encoders, batch 1 and 64: median and p99 (issue 2's figure).

    python -m bench.predictor_latency [--out bench/results/predictor_latency.json] [--calls 400]

The static predictor is the committed default artifact; the minilm one is bench's cached artifact
(bench.inputs.ensure_artifact trains it once). Calls go over real MMLU-Pro dev prompts. Steady state: one
warm-up pass over every prompt first, as a server that has run a while has seen the vocabulary (the static
tokenizer's chunk cache); `cold_p50_ms_per_prompt` is batch 1 on a fresh predictor, nothing seen before.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from bench.report import write_results
from bench.inputs import ensure_artifact, load_prompts
from predictor_service.artifact import default_artifact_path
from predictor_service.predictor import Predictor

BATCHES = (1, 64)


def measure(predictor: Predictor, prompts: list[str], batch: int, calls: int) -> dict:
    batches = [prompts[(i * batch) % len(prompts):][:batch] for i in range(calls)]
    batches = [b if len(b) == batch else prompts[:batch] for b in batches]
    for start in range(0, len(prompts), 64):
        predictor.predict(prompts[start:start + 64])
    per_prompt_ms = []
    for b in batches:
        start = time.perf_counter()
        predictor.predict(b)
        per_prompt_ms.append((time.perf_counter() - start) * 1e3 / batch)
    ms = np.asarray(per_prompt_ms)
    return {"batch": batch, "calls": calls, "p50_ms_per_prompt": float(np.median(ms)),
            "p99_ms_per_prompt": float(np.percentile(ms, 99)), "prompts_per_s": float(1e3 / ms.mean())}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.predictor_latency", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("bench/results/predictor_latency.json"))
    parser.add_argument("--calls", type=int, default=400, help="timed calls per (encoder, batch)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (Triton's model uses 1)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    prompts = load_prompts(None, limit=1000)
    artifacts = {"static": default_artifact_path(), "minilm": ensure_artifact("minilm")}
    rows = []
    for encoder, path in artifacts.items():
        predictor = Predictor.load(path, device="cpu")
        cold = []
        for text in prompts[: 50 if encoder == "static" else 5]:
            start = time.perf_counter()
            predictor.predict([text])
            cold.append((time.perf_counter() - start) * 1e3)
        print(f"{encoder:<7} batch   1, cold: p50 {np.median(cold):.3f} ms/prompt", flush=True)
        rows.append({"encoder": encoder, "batch": 1, "cold_p50_ms_per_prompt": float(np.median(cold))})
        for batch in BATCHES:
            calls = args.calls if encoder == "static" else max(20, args.calls // (20 if batch == 1 else 100))
            row = {"encoder": encoder, **measure(predictor, prompts, batch, calls)}
            rows.append(row)
            print(f"{encoder:<7} batch {batch:>3}: p50 {row['p50_ms_per_prompt']:.3f} ms/prompt, "
                  f"p99 {row['p99_ms_per_prompt']:.3f}, {row['prompts_per_s']:.0f} prompts/s", flush=True)
    write_results(args.out, rows, torch_threads=args.threads)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
