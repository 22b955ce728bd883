"""Which steps of distilling the static table give other bits on another machine (docs/serving.md,
"Portable artifacts"). Runs model2vec's distillation of the MiniLM wheel in a child process per setting and
prints the sha256 prefix of each step's output: MiniLM forward passes (torch), PCA (numpy/scikit-learn
LAPACK through OpenBLAS), SIF weighting, and the final fp16 rounding. A setting stands in for another CPU by
forcing other kernels: torch's ATEN_CPU_CAPABILITY, OpenBLAS's OPENBLAS_CORETYPE, thread counts.
~1 min per setting on 2 cores.  Usage: .venv/bin/python scripts/table_bits_study.py
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

SETTINGS = {
    "this machine": {},
    "this machine, again": {},
    "1 thread (OMP_NUM_THREADS=1)": {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"},
    "torch AVX2 kernels (ATEN_CPU_CAPABILITY=avx2)": {"ATEN_CPU_CAPABILITY": "avx2"},
    "OpenBLAS Haswell kernels (OPENBLAS_CORETYPE=Haswell)": {"OPENBLAS_CORETYPE": "Haswell"},
}


def _digest(array) -> str:
    import numpy as np

    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()[:12]


def child() -> None:
    """One distillation with each step's output digested."""
    import numpy as np
    from model2vec.distill import distillation

    from predictor_service.encoders import STATIC_DIMS, minilm_path

    steps: dict[str, str] = {}
    create, pca = distillation.create_embeddings, distillation.apply_pca

    def create_embeddings(*args, **kwargs):
        out = create(*args, **kwargs)
        steps["1 MiniLM forward passes"] = _digest(np.asarray(out, dtype=np.float32))
        return out

    def apply_pca(embeddings, dims):
        out = pca(embeddings, dims)
        steps["2 PCA"] = _digest(np.asarray(out, dtype=np.float32))
        return out

    distillation.create_embeddings, distillation.apply_pca = create_embeddings, apply_pca
    model = distillation.distill(model_name=str(minilm_path()), pca_dims=STATIC_DIMS, quantize_to="float32")
    steps["3 SIF weighting (fp32 table)"] = _digest(np.asarray(model.embedding, dtype=np.float32))
    steps["4 fp16 rounding"] = _digest(np.asarray(model.embedding, dtype=np.float32).astype(np.float16))
    print(json.dumps(steps))


def main() -> None:
    rows = {}
    for name, env in SETTINGS.items():
        out = subprocess.run([sys.executable, __file__, "--child"], env={**os.environ, **env, "HF_HUB_OFFLINE": "1"},
                             capture_output=True, text=True, check=True)
        rows[name] = json.loads(out.stdout.strip().splitlines()[-1])
        print(name, rows[name], flush=True)
    steps = list(next(iter(rows.values())))
    print("\n| setting | " + " | ".join(steps) + " |")
    print("|---" * (len(steps) + 1) + "|")
    for name, digests in rows.items():
        print(f"| {name} | " + " | ".join(digests[s] for s in steps) + " |")


if __name__ == "__main__":
    child() if "--child" in sys.argv else main()
