#!/usr/bin/env bash
# Set up the backend's virtual environment (default: .venv in the repository).
#
#   bash installer/setup_backend.sh            # runtime + test dependencies
#   VENV=/path/to/venv bash installer/setup_backend.sh
#
# torch is installed first and pinned, so that accelerate/diffusers do not pull
# another (multi-GB) build. On Linux with an NVIDIA GPU, PyPI's torch 2.13.0 is
# the CUDA build; on a machine without one it can be the CPU build.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv}"
PYTHON="${PYTHON:-python3}"

"$PYTHON" - <<'PY'
import sys
if sys.version_info < (3, 11):
    sys.exit(f"the backend needs Python 3.11 or newer (diffusers 0.42), this is {sys.version.split()[0]}")
PY

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --upgrade pip
"$VENV/bin/python" -m pip install --quiet "torch==2.13.0"
"$VENV/bin/python" -m pip install --quiet -r requirements-test.txt
echo "backend environment ready: $VENV/bin/python"
