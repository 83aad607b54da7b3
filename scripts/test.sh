#!/usr/bin/env bash
# Installs everything the test suite needs (Debian packages, Python and npm packages), then runs it.
# Usage: bash scripts/test.sh [pytest args...]
set -euo pipefail
cd "$(dirname "$0")/.."

source scripts/venv.sh  # as_root, and $PY: the project's own virtual environment

# System packages: real nginx, Caddy, Redis and Chromium for the end-to-end tests; wrk for bench/.
missing=()
command -v chromium >/dev/null || missing+=(chromium)
command -v redis-server >/dev/null || missing+=(redis-server)
command -v nginx >/dev/null || missing+=(nginx-light)
command -v node >/dev/null || missing+=(nodejs)
command -v npm >/dev/null || missing+=(npm)
command -v wrk >/dev/null || missing+=(wrk)
command -v caddy >/dev/null || missing+=(caddy)
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing Debian packages: ${missing[*]}"
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Python packages, in the virtual environment: the gateway itself (editable) with its test extras.
"$PY" -m pip install -q --disable-pip-version-check -e ".[test]"

# The certified OpenID Connect provider the browser-login tests run against.
if [ -f tests/idp/package-lock.json ]; then
  (cd tests/idp && npm ci --no-audit --no-fund --loglevel=error)
fi

# Third-party identity providers the interop tests run against (Glewlwyd, LemonLDAP::NG,
# django-oauth-toolkit): each script installs its own peer, as this script does the others.
for peer in scripts/peers/*.sh; do
  [ -e "$peer" ] || continue
  PY="$PY" bash "$peer"
done

exec "$PY" -m pytest -q -p no:cacheprovider "$@"
