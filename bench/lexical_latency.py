"""In-process batch-1 latency of the static predictor with and without a lexical part, on MMLU-Pro dev
prompts (issue 2's target: p50 < 0.3 ms), wall and thread CPU time.

    python -m bench.lexical_latency [--with ARTIFACT] [--without ARTIFACT] [--out bench/results/lexical_latency.json]

`--with` is an artifact that has a lexical part (default: the committed default artifact, which has one
since issue 14), `--without` one that has none (default: `--with`'s, loaded with its part left out: the same
head and table, so only the part's cost differs). The lexical part adds a gather of n + (n - 1) rows of n_models
floats per prompt (its tokens and hashed bigrams) to the compiled loop.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from bench.report import write_results
from bench.inputs import load_prompts
from bench.window_latency import time_batch1
from predictor_service.artifact import Artifact, default_artifact_path
from predictor_service.predictor import Predictor


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.lexical_latency", description=__doc__.split("\n")[0])
    parser.add_argument("--with", dest="with_part", type=Path, default=default_artifact_path(),
                        help="artifact with a lexical part (default: the committed default artifact)")
    parser.add_argument("--without", type=Path, help="artifact without one (default: --with's, its part left out)")
    parser.add_argument("--prompts", type=int, default=500, help="dev prompts, each timed `--repeats` times")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("bench/results/lexical_latency.json"))
    args = parser.parse_args(argv)
    prompts = load_prompts(None, limit=args.prompts)
    rows = []
    for name, path in (("without lexical part", args.without or args.with_part), ("with lexical part", args.with_part)):
        artifact = Artifact.load(path)
        if args.without is None and name == "without lexical part":
            artifact.lexical = None
        predictor = Predictor(artifact, artifact.load_encoder(), device="cpu")
        if (predictor.lexical is not None) != (name == "with lexical part"):
            parser.error(f"{path}: expected an artifact {name}")
        wall, cpu = time_batch1(predictor, prompts, args.repeats)
        rows.append({"artifact": str(path), "lexical": predictor.lexical is not None, "batch1_wall_p50_ms": wall,
                     "batch1_cpu_p50_ms": cpu})
        print(f"{name:>22}: batch 1, {len(prompts)} dev prompts x {args.repeats}: p50 {wall:.3f} ms wall, "
              f"{cpu:.3f} ms CPU", flush=True)
    write_results(args.out, rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
