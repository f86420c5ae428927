# Sourced by serve.sh and test.sh: the project's virtual environment in .venv. A start installs into it only
# when something it depends on changed, so starting again is quick and quiet.
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
  .venv/bin/python -m pip install --quiet --disable-pip-version-check --upgrade pip
fi

# venv_install NAME PIP_INSTALL_ARGUMENTS...: run pip install, unless it already ran with these arguments
# and the same pyproject.toml, setup.py, the compiled preprocessing's source, requirements.txt and
# constraints.txt (their hash is kept in .venv/.NAME).
venv_install() {
  local stamp=".venv/.$1"
  shift
  local hash
  hash=$({ cat pyproject.toml setup.py livedigit/_draw.c requirements.txt constraints.txt; echo "$*"; } | sha256sum | cut -d' ' -f1)
  if [ "$(cat "$stamp" 2>/dev/null)" != "$hash" ]; then
    .venv/bin/python -m pip install --quiet --disable-pip-version-check "$@"
    echo "$hash" >"$stamp"
  fi
}
