#!/usr/bin/env bash
# GPU check: the kernel tests compiled (TRITON_INTERPRET unset), then the timing table.
#   bench/gpu_check.sh [OUT_JSON]        (PYTHON=... picks an interpreter with a CUDA build of torch)
# On a machine without CUDA it says so and exits 0.
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ -z "${PYTHON:-}" ]]; then
    if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
OUT=${1:-runs/gpu_check.json}
unset TRITON_INTERPRET

if ! "$PYTHON" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    echo "no CUDA device; skipping"
    exit 0
fi
"$PYTHON" -m pytest -q tests/kernels/test_kernels.py
"$PYTHON" -m bench.gpu_check --out "$OUT"
