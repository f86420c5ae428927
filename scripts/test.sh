#!/usr/bin/env bash
# Install everything the tests need (Python packages into .venv, Debian's chromium for the browser tests,
# Debian's postgresql for the label storage tests) and run the whole suite: ./scripts/test.sh [pytest arguments]
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
PACKAGES=()
[ -x /usr/bin/chromium ] || PACKAGES+=(chromium chromium-driver fonts-dejavu-core)
compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || PACKAGES+=(postgresql)
if [ ${#PACKAGES[@]} -gt 0 ] && command -v apt-get >/dev/null; then
  if [ "$(id -u)" = 0 ]; then SUDO=""; elif command -v sudo >/dev/null; then SUDO="sudo -n"; else SUDO=none; fi
  if [ "$SUDO" != none ]; then
    echo "installing Debian's ${PACKAGES[*]} for the tests ..."
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${PACKAGES[@]}" >/dev/null
  fi
fi
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -c constraints.txt -e ".[train,dev]"
exec .venv/bin/python -m pytest "$@"
