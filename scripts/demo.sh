#!/usr/bin/env bash
# Installs the gateway into its own virtual environment (.venv) and runs `gateway demo` on loopback.
# Usage: bash scripts/demo.sh [--port N]
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/venv.sh
"$PY" -m pip install -q --disable-pip-version-check .
exec "$VENV/bin/gateway" demo "$@"
