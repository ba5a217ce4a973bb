#!/usr/bin/env bash
# Installs the servers the tests run against (from Debian packages) when they are missing.
# The tests start their own instances on loopback ports; nothing is left running.
set -euo pipefail
missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "install-services: need root to apt-get install ${missing[*]} (or install them yourself)" >&2
    exit 1
  fi
  echo "install-services: installing ${missing[*]} from Debian packages"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
