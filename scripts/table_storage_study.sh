#!/usr/bin/env bash
# Measures what the static table's storage costs in quality (docs/evaluation.md, "Table storage"):
# distils an fp32 table here, trains the default recipe on it rounded to fp32 / fp16 / int8 (the head is
# trained on the values it stores), and scores each on mmlu-pro/dev. ~6 min on 2 idle cores.
# Usage: scripts/table_storage_study.sh [OUT_DIR] (default /tmp/routoo-table-storage)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-/tmp/routoo-table-storage}
DATA=${ROUTOO_DATA:-../shared/data/mmlu-pro}
R=.venv/bin/routoo
mkdir -p "$OUT"
table=$($R prepare --float32 | sed -n 's/^static embedding table ready: \([^ ]*\) .*/\1/p')
for storage in fp32 fp16 int8; do
  $R train --data "$DATA/train" --dev "$DATA/dev" --static-table "$table" --table-storage "$storage" \
    --skip-tfidf --out "$OUT/$storage" > "$OUT/$storage.train.log" 2>&1
  $R eval --train "$DATA/train" --test "$DATA/dev" --artifact "$OUT/$storage" --skip-tfidf \
    --out-json "$OUT/$storage.eval.json" > "$OUT/$storage.eval.log" 2>&1
done
.venv/bin/python - "$OUT" <<'PY'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
print(f"{'storage':<8}{'table MB':>10}{'artifact MB':>13}{'log loss':>10}{'AUROC':>8}{'frontier AUC':>14}{'gap':>8}")
for storage in ("fp32", "fp16", "int8"):
    folder = out / storage
    size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) / 1e6
    table = (folder / "encoder" / "table.safetensors").stat().st_size / 1e6
    head = json.loads((folder / "manifest.json").read_text())["dev_metrics"]["head"]
    summary = json.loads((out / f"{storage}.eval.json").read_text())["pools"]["full"]["summary"]
    row = next(v for k, v in summary.items() if k.startswith("routoo") and k.endswith("/ tradeoff"))
    print(f"{storage:<8}{table:>10.1f}{size:>13.1f}{head['log_loss']:>10.4f}{head['auroc_mean']:>8.4f}"
          f"{row['auc']:>14.4f}{row['gap_recovered']:>8.3f}")

# The rounding alone, without retraining: the fp32 head scored on dev with its table rounded.
from predictor_service.artifact import Artifact
from training.data import load_dataset
from predictor_service.head import log_lengths, reference_score
from training.metrics import quality_metrics
import numpy as np
import os
artifact = Artifact.load(out / "fp32")
encoder = artifact.load_encoder()
dev = load_dataset(os.environ.get("ROUTOO_DATA", "../shared/data/mmlu-pro") + "/dev").select_models(
    artifact.manifest.model_names)
log_len = log_lengths(dev.texts).numpy()
base = None
print(f"\nfp32 head, table rounded   log loss   AUROC   max |quality change|")
for storage in ("fp32", "fp16", "int8"):
    rounded = encoder.rounded(storage)
    quality, _ = reference_score(artifact.weights, rounded.encode(dev.texts), log_len, artifact.manifest.inv_temperature)
    base = quality if base is None else base
    m = quality_metrics(dev.quality, quality)
    print(f"{storage:<27}{m['log_loss']:>8.4f}{m['auroc_mean']:>8.4f}{np.abs(quality - base).max():>14.2e}")
PY
