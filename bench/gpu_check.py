"""Time the fused kernels against the eager and torch.compile'd references on one CUDA device.

    python -m bench.gpu_check --out runs/gpu_check.json

scoring_head and static_predictor at batch 1..65536 with 32 models, dim 384, hidden 256, in fp32 and
fp16: prints one table and writes machine-readable rows (machine, date, versions, git revision). Without a
CUDA device it prints "no CUDA device; skipping" and exits 0. bench/gpu_check.sh runs the kernel tests
compiled first. About 2 minutes on an H100, most of it torch.compile.
"""

import argparse
import json
import platform
import sys
from pathlib import Path

import torch

from evals.provenance import git_commit, utc_now
from kernels import (
    INTERPRET, scoring_head_forward, scoring_head_reference, static_predictor_forward,
    static_predictor_reference,
)

BATCHES = (1, 64, 1024, 16384, 65536)
N_MODELS, DIM, HIDDEN, VOCAB = 32, 384, 256, 30522
DTYPES = {"fp32": torch.float32, "fp16": torch.float16}
MEAN_PROMPT_TOKENS = 64  # lengths drawn from 1..127: a chat prompt's size in wordpiece tokens
INV_TEMPERATURE = 1.5


def head_params(dtype):
    return dict(
        w1=torch.randn(DIM, HIDDEN, device="cuda", dtype=dtype),
        b1=0.1 * torch.randn(HIDDEN, device="cuda", dtype=dtype),
        quality_emb=torch.randn(N_MODELS, HIDDEN, device="cuda", dtype=dtype) / HIDDEN ** 0.5,
        quality_bias=torch.zeros(N_MODELS, device="cuda", dtype=dtype),
        cost_emb=0.5 * torch.randn(N_MODELS, HIDDEN, device="cuda", dtype=dtype) / HIDDEN ** 0.5,
        cost_bias=torch.full((N_MODELS,), -10.0, device="cuda", dtype=dtype),
        cost_len_coef=torch.full((N_MODELS,), 0.8, device="cuda", dtype=dtype),
    )


def prompts(batch):
    lengths = torch.randint(1, 2 * MEAN_PROMPT_TOKENS, (batch,), device="cuda")
    offsets = torch.zeros(batch + 1, dtype=torch.int64, device="cuda")
    offsets[1:] = lengths.cumsum(0)
    token_ids = torch.randint(0, VOCAB, (int(offsets[-1]),), device="cuda")
    return token_ids, offsets, torch.log1p(4.5 * lengths.float())


def time_ms(fn) -> float:
    import triton.testing  # here, not at the top: the skip path must run where triton is absent

    # do_bench warms up, flushes L2 between runs and times with CUDA events.
    return triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median")


def run_benchmarks():
    # dynamic=True compiles each reference once for all batch sizes instead of once per size (each
    # compile costs ~10-30 s); it gives up some shape specialisation.
    compiled = {"scoring_head": torch.compile(scoring_head_reference, dynamic=True),
                "static_predictor": torch.compile(static_predictor_reference, dynamic=True)}
    rows = []
    for dtype_name, dtype in DTYPES.items():
        head = head_params(dtype)
        table = (0.1 * torch.randn(VOCAB, DIM, device="cuda")).to(dtype)
        for batch in BATCHES:
            x = torch.nn.functional.normalize(torch.randn(batch, DIM, device="cuda"), dim=1).to(dtype)
            token_ids, offsets, log_len = prompts(batch)
            cases = {
                "scoring_head": (
                    lambda fn: fn(x, **head, log_len=log_len, inv_temperature=INV_TEMPERATURE),
                    scoring_head_forward, scoring_head_reference),
                "static_predictor": (
                    lambda fn: fn(token_ids, offsets, table, log_len, **head,
                                  inv_temperature=INV_TEMPERATURE),
                    static_predictor_forward, static_predictor_reference),
            }
            for op, (call, triton_fn, reference_fn) in cases.items():
                timings = {name: time_ms(lambda fn=fn: call(fn)) for name, fn in
                           (("triton", triton_fn), ("eager", reference_fn), ("compile", compiled[op]))}
                quality_err = (call(triton_fn)[0] - call(reference_fn)[0]).abs().max().item()
                rows.append(dict(op=op, dtype=dtype_name, batch=batch,
                                 **{f"{name}_ms": ms for name, ms in timings.items()},
                                 max_abs_err_quality=quality_err))
                print_row(rows[-1])
    return rows


def print_row(row):
    speedup = row["eager_ms"] / row["triton_ms"]
    print(f"{row['op']:<17}{row['dtype']:<6}{row['batch']:>7}{row['triton_ms']:>11.4f}"
          f"{row['eager_ms']:>11.4f}{row['compile_ms']:>11.4f}{speedup:>9.1f}x"
          f"{row['max_abs_err_quality']:>11.1e}", flush=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="where to write the JSON results")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("no CUDA device; skipping")
        return 0
    if INTERPRET:
        print("TRITON_INTERPRET is set: the kernels would run on the host; unset it to time them",
              file=sys.stderr)
        return 2
    torch.manual_seed(0)
    print(f"{'op':<17}{'dtype':<6}{'batch':>7}{'triton ms':>11}{'eager ms':>11}{'compile ms':>11}"
          f"{'vs eager':>10}{'q err':>11}")
    rows = run_benchmarks()
    import triton

    result = dict(
        machine=dict(gpu=torch.cuda.get_device_name(), host=platform.node(), cuda=torch.version.cuda),
        date=utc_now(),
        versions=dict(torch=torch.__version__, triton=triton.__version__, python=platform.python_version()),
        git_revision=git_commit() or "unknown",
        config=dict(n_models=N_MODELS, dim=DIM, hidden=HIDDEN, vocab=VOCAB,
                    mean_prompt_tokens=MEAN_PROMPT_TOKENS, timer="triton.testing.do_bench median"),
        rows=rows,
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
