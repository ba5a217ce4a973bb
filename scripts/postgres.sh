#!/usr/bin/env bash
# A throwaway PostgreSQL cluster (Debian's `postgresql` package: initdb + pg_ctl, no systemd).
#   scripts/postgres.sh up [DIR]     initdb and start on a free loopback port; last line: dsn=postgresql://…
#   scripts/postgres.sh down [DIR]   stop it and delete its data
# DIR (default /tmp/sluice-postgres) keeps the pid of record: the data directory's path and the password.
# The data directory itself is made with mktemp under /tmp, because the server runs as the `postgres` user
# (initdb refuses root) and must be able to traverse every parent of it (pytest's temp dirs are 0700).
# fsync is off: a cluster for tests, not for data anyone wants to keep.
set -euo pipefail
HERE="$(cd "$(dirname "$0")/.." && pwd)"
# shellcheck source=service-lib.sh
source "$HERE/scripts/service-lib.sh"

pgbin() {
  local initdb
  initdb=$(ls -d /usr/lib/postgresql/*/bin/initdb 2>/dev/null | sort -V | tail -1 || true)
  [ -n "$initdb" ] || { echo "postgres.sh: PostgreSQL is not installed: run scripts/install-services.sh" >&2; exit 1; }
  dirname "$initdb"
}

# as_pg CMD…: run as the postgres user when we are root (initdb and postgres refuse root), else as ourselves
as_pg() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

up() {
  local dir="${1:-/tmp/sluice-postgres}"
  local bin; bin=$(pgbin)
  down "$dir" 2>/dev/null || true
  mkdir -p "$dir"
  local data port password
  data=$(mktemp -d /tmp/sluice-pgdata-XXXXXX)
  [ "$(id -u)" = 0 ] && chown postgres:postgres "$data"
  chmod 700 "$data"
  echo "$data" > "$dir/datadir"
  port=$(free_port)
  password=$(python3 -c 'import secrets; print(secrets.token_urlsafe(18))')
  (umask 077; echo "$password" > "$dir/password")
  local pwfile="$data/.pw"
  (umask 077; echo "$password" > "$pwfile")
  [ "$(id -u)" = 0 ] && chown postgres:postgres "$pwfile"
  as_pg "$bin/initdb" -D "$data/db" -U postgres --auth-local=trust --auth-host=scram-sha-256 \
      --pwfile="$pwfile" -E UTF8 --no-sync >"$data/initdb.log" 2>&1 || { cat "$data/initdb.log" >&2; exit 1; }
  rm -f "$pwfile"
  cat >> "$data/db/postgresql.conf" <<EOF
listen_addresses = '127.0.0.1'
port = $port
unix_socket_directories = '$data'
fsync = off
synchronous_commit = off
full_page_writes = off
max_connections = 100
max_prepared_transactions = 20
EOF
  as_pg "$bin/pg_ctl" -D "$data/db" -l "$data/log" -w -t 30 start >/dev/null || { tail -30 "$data/log" >&2; exit 1; }
  echo "$port" > "$dir/port"
  echo "log=$data/log"
  echo "dsn=postgresql://postgres:$password@127.0.0.1:$port/postgres"
}

# restart DIR: stop (fast) and start the same cluster again, on the same port (for the restart tests)
restart() {
  local dir="${1:-/tmp/sluice-postgres}"
  local bin; bin=$(pgbin)
  local data; data=$(cat "$dir/datadir")
  as_pg "$bin/pg_ctl" -D "$data/db" -m "${2:-fast}" -w -t 30 stop >/dev/null
  as_pg "$bin/pg_ctl" -D "$data/db" -l "$data/log" -w -t 30 start >/dev/null
}

down() {
  local dir="${1:-/tmp/sluice-postgres}"
  [ -f "$dir/datadir" ] || return 0
  local data; data=$(cat "$dir/datadir")
  local bin; bin=$(pgbin)
  if [ -f "$data/db/postmaster.pid" ]; then
    as_pg "$bin/pg_ctl" -D "$data/db" -m fast -w -t 30 stop >/dev/null 2>&1 || \
      kill -KILL "$(head -1 "$data/db/postmaster.pid")" 2>/dev/null || true
  fi
  case "$data" in /tmp/sluice-pgdata-*) rm -rf "$data" ;; esac
  rm -f "$dir/datadir" "$dir/port" "$dir/password"
}

case "${1:-}" in
  up) up "${2:-}" ;;
  restart) restart "${2:-}" "${3:-}" ;;
  down) down "${2:-}" ;;
  *) echo "usage: scripts/postgres.sh up [DIR] | restart [DIR] [fast|immediate] | down [DIR]" >&2; exit 2 ;;
esac
