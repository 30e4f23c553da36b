#!/usr/bin/env bash
# Creates the Python environment of the reference implementation (diffusers on CPU).
# Usage: scripts/reference/setup_venv.sh [VENV_DIR]   (default: .venv-ref in the repo root)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
venv=${1:-"$here/../../.venv-ref"}
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
"$venv/bin/pip" install --quiet --disable-pip-version-check -r "$here/requirements.txt"
echo "$venv"
