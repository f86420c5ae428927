#!/usr/bin/env bash
# Install everything the tests need (Python packages into .venv, Debian's chromium for the browser tests,
# Debian's postgresql for the label storage tests, the fonts the generated non-digits are drawn from, a C
# compiler for the compiled preprocessing, which the tests compare with numpy's),
# check lint, formatting and types, and run the whole suite: ./scripts/test.sh [pytest arguments]
# The quick loop, without the tests marked slow (browser, training, fuzzing, load...): ./scripts/test.sh -m "not slow"
set -euo pipefail
cd "$(dirname "$0")/.."
# train/negatives.py's PACKAGES
FONTS="hershey-fonts-data fonts-dkg-handwriting fonts-bwht fonts-breip fonts-humor-sans fonts-dejavu-core fonts-liberation"
PACKAGES=()
[ -x /usr/bin/chromium ] || PACKAGES+=(chromium chromium-driver fonts-dejavu-core)
compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || PACKAGES+=(postgresql)
command -v cc >/dev/null || PACKAGES+=(gcc)
[ -f "$("${PYTHON:-python3}" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')/Python.h" ] || PACKAGES+=(python3-dev)
command -v dpkg >/dev/null && ! dpkg -s $FONTS >/dev/null 2>&1 && PACKAGES+=($FONTS)
if [ ${#PACKAGES[@]} -gt 0 ] && command -v apt-get >/dev/null; then
  if [ "$(id -u)" = 0 ]; then SUDO=""; elif command -v sudo >/dev/null; then SUDO="sudo -n"; else SUDO=none; fi
  if [ "$SUDO" != none ]; then
    echo "installing Debian's ${PACKAGES[*]} for the tests ..."
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${PACKAGES[@]}" >/dev/null
  fi
fi
source scripts/venv.sh
venv_install test-install -c constraints.txt -e ".[train,dev]"

# Every check runs even when one before it fails, so that one run reports everything.
failed=()
.venv/bin/ruff check --quiet . || failed+=("ruff check")
.venv/bin/ruff format --check --quiet . || failed+=("ruff format --check")
.venv/bin/mypy || failed+=(mypy)
.venv/bin/python -m pytest "$@" || failed+=(pytest)
if [ ${#failed[@]} -gt 0 ]; then
  echo "failed: ${failed[*]}" >&2
  exit 1
fi
