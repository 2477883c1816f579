#!/usr/bin/env bash
# Create .venv (Python 3.11) with the pinned dependencies and clipbias installed editable.
# Idempotent: a second run only checks that the pins are satisfied.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3
"$PY" -c 'import sys; assert sys.version_info[:2] == (3, 11), f"Python 3.11 required, found {sys.version}"' \
  || { echo "install.sh: Python 3.11 is required (set PYTHON=/path/to/python3.11)" >&2; exit 1; }
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
# torch/torchvision first so that pip takes the local builds this machine provides.
.venv/bin/python -m pip install --disable-pip-version-check -q "torch==2.14.1" "torchvision==0.29.1"
.venv/bin/python -m pip install --disable-pip-version-check -q -r requirements.txt
.venv/bin/python -m pip install --disable-pip-version-check -q --no-deps -e .
echo "install.sh: environment ready in .venv"
