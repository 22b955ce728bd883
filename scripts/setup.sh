#!/usr/bin/env bash
# Idempotent set-up: one project venv, reused when its requirements have not changed.
# Offline-safe: only the package registries are used. Nothing is derived on this machine: the default
# artifact carries its static embedding table (`routoo prepare` distils new ones, for training only).
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
