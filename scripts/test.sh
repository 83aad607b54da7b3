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
command -v redis-sentinel >/dev/null || missing+=(redis-sentinel)
command -v nginx >/dev/null || missing+=(nginx-light)
command -v node >/dev/null || missing+=(nodejs)
command -v npm >/dev/null || missing+=(npm)
command -v wrk >/dev/null || missing+=(wrk)
command -v caddy >/dev/null || missing+=(caddy)
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing Debian packages: ${missing[*]}"
  # Debian starts a package's service on install (redis-server, redis-sentinel, nginx); the tests start
  # their own on free loopback ports, so a policy-rc.d says "no" while installing (removed after if made here).
  created_policy=
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' | as_root tee /usr/sbin/policy-rc.d >/dev/null
    as_root chmod 755 /usr/sbin/policy-rc.d
    created_policy=1
  fi
  trap 'if [ -n "$created_policy" ]; then as_root rm -f /usr/sbin/policy-rc.d; fi' EXIT
  as_root apt-get -o DPkg::Lock::Timeout=600 update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq \
    --no-install-recommends "${missing[@]}" >/dev/null
  if [ -n "$created_policy" ]; then as_root rm -f /usr/sbin/policy-rc.d; fi
  trap - EXIT
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

"$PY" -m pytest -q -p no:cacheprovider "$@"

# The fallback engine (server.http_engine: tornado) under the tests that exercise the connection layer:
# framing and smuggling, limits and timeouts, streaming, WebSockets, TLS, drain and workers. The whole
# suite passes on it too: GATEWAY_TEST_HTTP_ENGINE=tornado bash scripts/test.sh
if [ $# -eq 0 ]; then
  echo "the same connection-layer tests on server.http_engine: tornado"
  GATEWAY_TEST_HTTP_ENGINE=tornado "$PY" -m pytest -q -p no:cacheprovider \
    tests/test_e2e_proxy.py tests/test_e2e_hardening.py tests/test_ops_limits.py tests/test_websocket.py \
    tests/test_tls_server.py tests/test_ops_shutdown.py tests/test_ops_workers.py tests/test_forwarded.py \
    tests/test_e2e_tokens.py tests/test_properties.py
fi
