#!/usr/bin/env bash
# Create .venv with disnet and everything it needs (CPU-only PyTorch). Safe to run again.
set -euo pipefail
cd "$(dirname "$0")"
python="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$python" -m venv .venv
# The CPU build of torch first: pip then keeps it for the project's torch range instead of a CUDA build.
.venv/bin/python -m pip install --quiet --disable-pip-version-check torch==2.13.0
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
echo "disnet is set up in .venv"
