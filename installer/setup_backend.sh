#!/usr/bin/env bash
# Set up the backend's virtual environment (default: .venv in the repository) on Linux or macOS:
# a shortcut for installer/setup_backend.py, which picks the right PyTorch build (Windows:
# "py installer\setup_backend.py").
#
#   bash installer/setup_backend.sh              # runtime + test dependencies
#   bash installer/setup_backend.sh --runtime    # runtime only
#   VENV=/path/to/venv bash installer/setup_backend.sh
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${PYTHON:-python3}" installer/setup_backend.py "$@"
