#!/usr/bin/env bash
# Install everything the tests need (Python packages into .venv, Debian's chromium for the browser tests,
# the fonts the generated non-digits are drawn from) and run the whole suite: ./scripts/test.sh [pytest arguments]
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
# train/negatives.py's PACKAGES
FONTS="hershey-fonts-data fonts-dkg-handwriting fonts-bwht fonts-breip fonts-humor-sans fonts-dejavu-core fonts-liberation"
if command -v apt-get >/dev/null && { [ ! -x /usr/bin/chromium ] || ! dpkg -s $FONTS >/dev/null 2>&1; }; then
  if [ "$(id -u)" = 0 ]; then SUDO=""; elif command -v sudo >/dev/null; then SUDO="sudo -n"; else SUDO=none; fi
  if [ "$SUDO" != none ]; then
    echo "installing Debian's chromium and fonts for the tests ..."
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium chromium-driver $FONTS >/dev/null
  fi
fi
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -c constraints.txt -e ".[train,dev]"
exec .venv/bin/python -m pytest "$@"
