"""onnxruntime latency of the exported `static` graph with and without a lexical part, on MMLU-Pro dev
prompts: what the part (bigram hash + a second ragged mean, predictor_service/onnx_lexical.py) costs a host
that serves the ONNX graph.

    python -m bench.onnx_latency [--artifact A] [--batches 1,64] [--threads 1] [--out bench/results/onnx_latency.json]

`--artifact` must have a lexical part (default: the committed default artifact); "without" is the same
artifact exported with its part left out, so only the part's cost differs. Tokenization is outside the
timed call, as it is outside the graph.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.inputs import load_prompts
from bench.report import write_results
from predictor_service.artifact import Artifact, default_artifact_path
from predictor_service.head import log_lengths
from predictor_service.onnx_export import export_static_predictor

WARMUP = 5   # onnxruntime's first runs allocate their arenas


def time_graph(session, feeds: dict, repeats: int) -> float:
    """p50 wall ms of session.run on the same feeds."""
    for _ in range(WARMUP):
        session.run(None, feeds)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        session.run(None, feeds)
        times.append(time.perf_counter() - started)
    return float(np.median(times) * 1e3)


def main(argv: list[str] | None = None) -> int:
    import onnxruntime as ort

    parser = argparse.ArgumentParser(prog="python -m bench.onnx_latency", description=__doc__.split("\n")[0])
    parser.add_argument("--artifact", type=Path, default=default_artifact_path(), help="artifact with a lexical part")
    parser.add_argument("--batches", default="1,64", help="comma-separated prompts per call (default 1,64)")
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads (default 1)")
    parser.add_argument("--repeats", type=int, default=50, help="timed calls per batch size")
    parser.add_argument("--out", type=Path, default=Path("bench/results/onnx_latency.json"))
    args = parser.parse_args(argv)
    batches = [int(b) for b in args.batches.split(",")]
    prompts = load_prompts(None, limit=max(batches))
    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for with_part in (False, True):
            artifact = Artifact.load(args.artifact)
            if artifact.lexical is None:
                parser.error(f"{args.artifact}: has no lexical part")
            if not with_part:
                artifact.lexical = None
            encoder = artifact.load_encoder()
            graph = export_static_predictor(artifact, Path(folder) / f"{with_part}.onnx", table=encoder.table)
            session = ort.InferenceSession(str(graph), options, providers=["CPUExecutionProvider"])
            for batch in batches:
                texts = prompts[:batch]
                tokens = encoder.tokenize(texts)
                feeds = {"TOKEN_IDS": tokens.token_ids.numpy(), "OFFSETS": tokens.offsets.numpy(),
                         "LOG_LEN": log_lengths(texts).numpy()}
                p50 = time_graph(session, feeds, args.repeats)
                rows.append({"lexical": with_part, "batch": batch, "n_tokens": int(tokens.offsets[-1]),
                             "p50_ms": p50})
                print(f"{'with' if with_part else 'without':>7} lexical part, batch {batch:>3} "
                      f"({int(tokens.offsets[-1])} tokens): p50 {p50:.3f} ms", flush=True)
    write_results(args.out, rows, artifact=str(args.artifact), threads=args.threads, repeats=args.repeats,
                  onnxruntime=ort.__version__)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
