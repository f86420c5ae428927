#!/usr/bin/env bash
# Serve the shipped model: ./scripts/serve.sh [livedigit serve flags]
# The first start installs the runtime into .venv; later starts install again only when pyproject.toml,
# requirements.txt or constraints.txt changed. The port comes from PORT (default 8000); the last line
# printed at start is the address to open.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/venv.sh
venv_install serve-requirements -r requirements.txt
venv_install serve-package --no-deps -e .
exec .venv/bin/livedigit serve "$@"
