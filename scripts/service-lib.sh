# Shared by scripts/kafka.sh and scripts/registry.sh (sourced, not run).

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# stop_pidfile FILE SECONDS: SIGTERM the process in FILE, wait up to SECONDS, then SIGKILL; remove FILE
stop_pidfile() {
  local file="$1" wait="$2"
  [ -f "$file" ] || return 0
  local pid; pid=$(cat "$file")
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 $((wait * 4))); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
  kill -KILL "$pid" 2>/dev/null || true
  rm -f "$file"
}
