#!/usr/bin/env bash
# A single-node Apache Cassandra 5 from Maven Central jars (cassandra-all; no tarball is published there).
#   scripts/cassandra.sh install        resolve the jars into $SLUICE_CACHE (default ~/.cache/sluice)
#   scripts/cassandra.sh up [DIR]       a fresh server on free loopback ports; last line: contact=HOST:PORT
#   scripts/cassandra.sh start [DIR]    start the server of DIR again (same data, same ports)
#   scripts/cassandra.sh down [DIR]     stop it (SIGTERM: Cassandra flushes and stops; SIGKILL after 60 s)
# DIR (default /tmp/sluice-cassandra) holds the data, logs, config and pid. The default superuser is
# cassandra/cassandra (services/cassandra/cassandra.yaml). Start-up takes 20–30 s on a busy 2-core machine.
set -euo pipefail
HERE="$(cd "$(dirname "$0")/.." && pwd)"
VERSION=5.0.9
CACHE="${SLUICE_CACHE:-$HOME/.cache/sluice}/cassandra-$VERSION"
LIBS="$CACHE/libs"

install() {
  if [ -f "$LIBS/cassandra-all-$VERSION.jar" ]; then return; fi
  command -v mvn >/dev/null || { echo "cassandra.sh: Maven (mvn) is needed to fetch the Cassandra jars" >&2; exit 1; }
  (cd "$HERE/services/cassandra" && mvn -B -q -Dstyle.color=never package -Dcassandra.libs="$LIBS.tmp") >&2
  rm -rf "$LIBS"; mv "$LIBS.tmp" "$LIBS"
}

# Cassandra 5.0 runs on Java 11 or 17: CASSANDRA_JAVA if set, else a Java 17 under /usr/lib/jvm, else java on PATH
java17() {
  for j in "${CASSANDRA_JAVA:-}" /usr/lib/jvm/*17*/bin/java "$(command -v java || true)"; do
    [ -n "$j" ] && [ -x "$j" ] && { echo "$j"; return; }
  done
  echo "cassandra.sh: Java 17 is needed to run Cassandra 5.0 (scripts/install-services.sh installs it)" >&2
  exit 1
}

# shellcheck source=service-lib.sh
source "$HERE/scripts/service-lib.sh"

up() {
  local dir="${1:-/tmp/sluice-cassandra}"
  install
  down "$dir" 2>/dev/null || true
  rm -rf "$dir"; mkdir -p "$dir/data" "$dir/logs" "$dir/conf"
  local native storage ssl jmx
  native=$(free_port); storage=$(free_port); ssl=$(free_port); jmx=$(free_port)
  sed -e "s|@DIR@|$dir|g" -e "s|@NATIVE_PORT@|$native|g" -e "s|@STORAGE_PORT@|$storage|g" \
      -e "s|@SSL_STORAGE_PORT@|$ssl|g" "$HERE/services/cassandra/cassandra.yaml" > "$dir/conf/cassandra.yaml"
  cp "$HERE/services/cassandra/logback.xml" "$dir/conf/logback.xml"
  echo "$native" > "$dir/native_port"
  echo "$jmx" > "$dir/jmx_port"
  start "$dir"
}

start() {
  local dir="${1:-/tmp/sluice-cassandra}"
  [ -f "$dir/conf/cassandra.yaml" ] || { echo "cassandra.sh: no server in $dir; use 'up' first" >&2; exit 1; }
  install
  local native jmx
  native=$(cat "$dir/native_port"); jmx=$(cat "$dir/jmx_port")
  local jpms=()
  while read -r line; do
    case "$line" in -*) jpms+=("$line") ;; esac
  done < "$HERE/services/cassandra/jvm17.options"
  # the -D settings below cut start-up from ~60 s: no ring delay or gossip settling on a single node
  local java; java=$(java17)
  mkdir -p "$dir/triggers"
  local jopts=(-Xms512m -Xmx1g -Xss512k -XX:+UseG1GC -XX:+ExitOnOutOfMemoryError -Djava.awt.headless=true -Djava.net.preferIPv4Stack=true
               "${jpms[@]}"
               -Dcassandra.config="file://$dir/conf/cassandra.yaml"
               -Dlogback.configurationFile="file://$dir/conf/logback.xml"
               -Dcassandra.logdir="$dir/logs" -Dcassandra.storagedir="$dir/data" -Dcassandra.triggers_dir="$dir/triggers"
               -Dcassandra-foreground=yes
               -Dcassandra.jmx.local.port="$jmx" -Dcassandra.ring_delay_ms=100
               -Dcassandra.skip_wait_for_gossip_to_settle=0 -Dcassandra.superuser_setup_delay_ms=0)
  : > "$dir/logs/system.log"
  nohup "$java" "${jopts[@]}" -cp "$dir/conf:$LIBS/*" org.apache.cassandra.service.CassandraDaemon \
      >"$dir/logs/stdout.log" 2>&1 &
  echo $! > "$dir/cassandra.pid"
  for _ in $(seq 1 360); do
    if grep -q "Startup complete" "$dir/logs/system.log" 2>/dev/null &&
       python3 -c "import socket,sys; socket.create_connection(('127.0.0.1', int(sys.argv[1])), 1).close()" "$native" 2>/dev/null; then
      echo "contact=127.0.0.1:$native"
      return
    fi
    kill -0 "$(cat "$dir/cassandra.pid")" 2>/dev/null || { tail -n 40 "$dir/logs/system.log" "$dir/logs/stdout.log" >&2; exit 1; }
    sleep 0.5
  done
  echo "cassandra.sh: the server did not start within 180 s; see $dir/logs/system.log" >&2
  exit 1
}

down() {
  stop_pidfile "${1:-/tmp/sluice-cassandra}/cassandra.pid" 60
}

case "${1:-}" in
  install) install ;;
  up) up "${2:-}" ;;
  start) start "${2:-}" ;;
  down) down "${2:-}" ;;
  *) echo "usage: scripts/cassandra.sh install | up [DIR] | start [DIR] | down [DIR]" >&2; exit 2 ;;
esac
