#!/usr/bin/env bash
# The long run of the property tests (hostile request heads against the real gateway, generated claim sets
# through the token path): CI runs 150 examples of each, this runs many more.
# Usage: bash bench/properties.sh [EXAMPLES]   (default 5000; about 70 s per 5000 here)
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${GATEWAY_VENV:-.venv}/bin/python"
[ -x "$PY" ] || PY=python3
GATEWAY_PROPERTY_EXAMPLES="${1:-5000}" exec "$PY" -m pytest -q -p no:cacheprovider tests/test_properties.py
