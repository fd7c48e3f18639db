#!/usr/bin/env bash
# Run a command inside the project's virtual environment, creating it first if needed.
# The environment lives outside the clone, keyed by a hash of requirements.txt and the
# Python version, so a new clone (or CI) reuses it instead of reinstalling torch.
#   scripts/with_venv.sh python sleep.py demo
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${PYTHON:-python3}"
key="$( (cat "$here/requirements.txt"; "$python" -c 'import sys; print(sys.version)') | sha256sum | cut -c1-16)"
cache="${SLEEP_VENV_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/sleep}"
venv="$cache/venv-$key"
if [ ! -x "$venv/bin/python" ]; then
  echo "setting up $venv (first run only; a few minutes)..." >&2
  mkdir -p "$cache"
  partial="$venv.partial"
  rm -rf "$partial"
  "$python" -m venv "$partial"
  "$partial/bin/python" -m pip install --quiet --upgrade pip >&2
  "$partial/bin/python" -m pip install --quiet -r "$here/requirements.txt" >&2
  # Renamed only once complete, so an interrupted install is never taken for a finished
  # one. Console-script shebangs keep the old name: always call `python -m tool`.
  mv "$partial" "$venv"
fi
export PATH="$venv/bin:$PATH"
export VIRTUAL_ENV="$venv"
cd "$here"
exec "$@"
