#!/usr/bin/env bash
# Install the runtime into .venv and serve the shipped model: ./scripts/serve.sh [livedigit serve flags]
# The port comes from PORT (default 8000); open the address printed below.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -r requirements.txt
.venv/bin/python -m pip install --quiet --no-deps -e .
exec .venv/bin/livedigit serve "$@"
