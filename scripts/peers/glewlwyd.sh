#!/usr/bin/env bash
# Installs Glewlwyd (Debian package glewlwyd, 2.7.5 on bookworm), the third-party OpenID Connect
# provider of tests/test_e2e_interop_glewlwyd.py. The tests start it themselves (their own config,
# sqlite database and port in a temp dir): no system service is started or enabled here.
set -euo pipefail

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

if command -v glewlwyd >/dev/null 2>&1 && [ -d /usr/share/glewlwyd/webapp ] \
   && [ -f /usr/share/dbconfig-common/data/glewlwyd/install/sqlite3 ] && [ -f /usr/share/glewlwyd/templates/config.json ]; then
  exit 0
fi

# Debian would start (and enable) the glewlwyd service on install: forbid it for the install only.
policy=/usr/sbin/policy-rc.d
created_policy=0
if [ ! -e "$policy" ]; then
  as_root sh -c "printf '#!/bin/sh\nexit 101\n' > $policy && chmod 755 $policy"
  created_policy=1
fi
cleanup() { if [ "$created_policy" = 1 ]; then as_root rm -f "$policy"; fi; }
trap cleanup EXIT

echo "installing Debian package: glewlwyd"
as_root apt-get -o DPkg::Lock::Timeout=600 update -qq
DEBIAN_FRONTEND=noninteractive as_root apt-get -o DPkg::Lock::Timeout=600 install -y -qq \
  --no-install-recommends glewlwyd >/dev/null
