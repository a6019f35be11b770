#!/usr/bin/env bash
# Create (or refresh) the project's virtualenv in .venv and install the package with its test and fleet extras.
# Sourced by scripts/demo and scripts/test; safe to run again.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
py="${PYTHON:-python3}"
venv="$here/.venv"
stamp="$venv/.installed"
if [ ! -x "$venv/bin/python" ]; then
    "$py" -m venv "$venv"
fi
if [ ! -f "$stamp" ] || [ "$here/pyproject.toml" -nt "$stamp" ]; then
    "$venv/bin/python" -m pip install --quiet --upgrade pip
    "$venv/bin/python" -m pip install --quiet -e "$here[test,fleet]"
    touch "$stamp"
fi
export PATH="$venv/bin:$PATH"
