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
# A venv hard-codes its own path in its scripts, so it is built in place; the marker file
# written last tells a finished install from an interrupted one, which is rebuilt.
mkdir -p "$cache"
exec 9>"$cache/.setup.lock"
flock 9  # two commands started at once: one builds, the other waits for it
if [ ! -f "$venv/.sleep-complete" ]; then
  echo "setting up $venv (first run only; a few minutes)..." >&2
  rm -rf "$venv"
  "$python" -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --upgrade pip >&2
  "$venv/bin/python" -m pip install --quiet -r "$here/requirements.txt" >&2
  touch "$venv/.sleep-complete"
fi
exec 9>&-
export PATH="$venv/bin:$PATH"
export VIRTUAL_ENV="$venv"
cd "$here"
exec "$@"
