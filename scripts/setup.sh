#!/usr/bin/env bash
# Set up shortcut-kd in a virtual environment (.venv) beside this checkout.
# torch is capped below 2.14 in pyproject.toml so a CPU-only machine keeps its CPU build.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e ".[test]"
.venv/bin/python -c "import torch, monai, shortcut_kd; print('shortcut-kd ready: torch', torch.__version__, '| monai', monai.__version__)"
