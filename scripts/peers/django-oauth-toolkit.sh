#!/usr/bin/env bash
# Installs django-oauth-toolkit (an OpenID Connect provider built on Django) into the project's
# virtual environment, for tests/test_e2e_interop_dot.py. Pure Python from PyPI: no Debian
# package and no system service. Idempotent: quick when the pinned versions are already there.
# Usage: PY=.venv/bin/python bash scripts/peers/django-oauth-toolkit.sh
set -euo pipefail
cd "$(dirname "$0")/../.."

PY="${PY:-.venv/bin/python}"
DJANGO_VERSION=5.2.19          # the LTS line that runs on Python 3.10 to 3.13
DOT_VERSION=3.4.1              # brings oauthlib, jwcrypto and requests

if "$PY" - "$DJANGO_VERSION" "$DOT_VERSION" <<'PYEOF' 2>/dev/null
import sys
from importlib.metadata import version
sys.exit(0 if (version("django"), version("django-oauth-toolkit")) == (sys.argv[1], sys.argv[2]) else 1)
PYEOF
then
  exit 0
fi

echo "installing django $DJANGO_VERSION and django-oauth-toolkit $DOT_VERSION into $PY"
"$PY" -m pip install -q --disable-pip-version-check "django==$DJANGO_VERSION" "django-oauth-toolkit==$DOT_VERSION"
