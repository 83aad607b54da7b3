#!/usr/bin/env bash
# Installs LemonLDAP::NG (Debian bookworm, 2.16) for the interop tests (tests/test_e2e_interop_llng.py):
# its portal as an OpenID Connect provider, run by llng-fastcgi-server behind an nginx the test starts.
# Only the packages the portal needs for that: no Recommends but the few it uses. Quick when installed.
set -euo pipefail

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

# lemonldap-ng: the portal, handler and manager, and the common library with lemonldap-ng-sessions
#   (the admin tool the tests revoke users with); lemonldap-ng-fastcgi-server: llng-fastcgi-server;
# libgd-securityimage-perl, libimage-magick-perl: the portal loads its captcha module at start-up
#   even when no captcha is enabled, and that module uses GD::SecurityImage with ImageMagick;
# libio-string-perl: the issuer modules (OpenID Connect among them) use IO::String;
# libstring-random-perl: the OpenID Connect issuer module uses String::Random;
# nginx-light: the web server in front of the FastCGI portal (scripts/test.sh installs it too).
packages=(
  lemonldap-ng
  lemonldap-ng-fastcgi-server
  libgd-securityimage-perl
  libimage-magick-perl
  libio-string-perl
  libstring-random-perl
  nginx-light
)

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q '^install ok installed$'; then
    # nginx from another package (nginx, nginx-full...) is as good as nginx-light
    if [ "$p" = nginx-light ] && command -v nginx >/dev/null; then continue; fi
    missing+=("$p")
  fi
done
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi

echo "installing LemonLDAP::NG packages: ${missing[*]}"
# Debian must not start the services these packages ship (lemonldap-ng-fastcgi-server, nginx):
# the tests start their own, on free loopback ports. A policy-rc.d that says "no" while installing.
created_policy=""
if [ ! -e /usr/sbin/policy-rc.d ]; then
  printf '#!/bin/sh\nexit 101\n' | as_root tee /usr/sbin/policy-rc.d >/dev/null
  as_root chmod 755 /usr/sbin/policy-rc.d
  created_policy=1
fi
cleanup() { if [ -n "$created_policy" ]; then as_root rm -f /usr/sbin/policy-rc.d; fi; }
trap cleanup EXIT

as_root apt-get -o DPkg::Lock::Timeout=600 update -qq
as_root env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq \
  --no-install-recommends "${missing[@]}" >/dev/null
