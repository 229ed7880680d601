#!/usr/bin/env bash
# Installs SecantusDB (PyPI `SecantusDB`), the MongoDB-compatible server the store tests run
# against, into `.venv-mongo` at the repository root. Idempotent: does nothing when the server
# binary is already there. Prints the binary's path.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
venv="$root/.venv-mongo"
bin="$venv/bin/secantusd-py"

if [ ! -x "$bin" ]; then
    if [ ! -x "$venv/bin/pip" ]; then
        python3 -m venv "$venv"
    fi
    "$venv/bin/pip" install --quiet --disable-pip-version-check SecantusDB
fi

if [ ! -x "$bin" ]; then
    echo "install-secantus: $bin is missing after installing SecantusDB" >&2
    exit 1
fi
echo "$bin"
