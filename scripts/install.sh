#!/usr/bin/env bash
# Create .venv (Python 3.11) with the pinned dependencies and clipbias installed editable.
# Idempotent: a second run only checks that the pins are satisfied.
# System packages: Chromium renders the HTML report in the report test; it is installed with
# apt-get when missing and this runs as root (CLIPBIAS_NO_APT=1 skips that). The SLURM
# packages are installed by cluster/slurm-up.sh when a SLURM test starts the cluster.
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

if ! command -v chromium >/dev/null 2>&1; then
  if [ "${CLIPBIAS_NO_APT:-0}" != 1 ] && [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "install.sh: installing Debian's chromium (headless report test) ..."
    export DEBIAN_FRONTEND=noninteractive
    apt_log=$(mktemp -t clipbias-chromium-apt.XXXXXX.log)
    if ! { timeout -s KILL 300 apt-get -o DPkg::Lock::Timeout=120 update -qq \
           && timeout -s KILL 600 apt-get -o DPkg::Lock::Timeout=120 install -y -qq \
              --no-install-recommends chromium; } >"$apt_log" 2>&1; then
      tail -n 20 "$apt_log" >&2
      echo "install.sh: WARNING: chromium could not be installed (log: $apt_log); the report screenshot test will be skipped" >&2
    else
      rm -f "$apt_log"
    fi
  else
    echo "install.sh: NOTE: chromium not found (needs root + apt-get); the report screenshot test will be skipped" >&2
  fi
fi
echo "install.sh: environment ready in .venv"
