#!/usr/bin/env bash
# A 3-node Apache Kafka cluster (KRaft, each node broker and controller, static voters) on free loopback
# ports, from the same Maven Central jars as scripts/kafka.sh: replication factor 3, min.insync.replicas 2,
# the transaction state log and the offsets topic likewise (RF 3, min ISR 2). For the cluster fault tests.
#   scripts/kafka-cluster.sh up [DIR] [N]   format and start N nodes (default 3); last line: bootstrap=H:P,H:P,H:P
#   scripts/kafka-cluster.sh down [DIR]     stop every node
#   scripts/kafka-cluster.sh start DIR ID   start node ID (1..N) again, with its data and ports (after a kill)
#   scripts/kafka-cluster.sh pid DIR ID     the node's process id
# DIR (default /tmp/sluice-kafka-cluster) holds one directory per node (node1, node2, ...).
set -euo pipefail
HERE="$(cd "$(dirname "$0")/.." && pwd)"
VERSION=4.3.1
CACHE="${SLUICE_CACHE:-$HOME/.cache/sluice}/kafka-$VERSION"
LIBS="$CACHE/libs"
# shellcheck source=service-lib.sh
source "$HERE/scripts/service-lib.sh"

jopts() {
  echo "-Xms256m -Xmx512m -XX:+UseG1GC -Djava.awt.headless=true -Dkafka.logs.dir=$1/logs -Dlog4j2.configurationFile=$1/log4j2.properties"
}

up() {
  local dir="${1:-/tmp/sluice-kafka-cluster}" n="${2:-3}"
  bash "$HERE/scripts/kafka.sh" install
  down "$dir" 2>/dev/null || true
  rm -rf "$dir"; mkdir -p "$dir"
  local i voters="" bootstrap=""
  declare -A port cport
  for i in $(seq 1 "$n"); do
    port[$i]=$(free_port); cport[$i]=$(free_port)
    voters+="${voters:+,}$i@127.0.0.1:${cport[$i]}"
    bootstrap+="${bootstrap:+,}127.0.0.1:${port[$i]}"
  done
  local id
  for i in $(seq 1 "$n"); do
    local d="$dir/node$i"
    mkdir -p "$d/data" "$d/logs"
    cat > "$d/server.properties" <<PROPS
process.roles=broker,controller
node.id=$i
controller.quorum.voters=$voters
listeners=PLAINTEXT://127.0.0.1:${port[$i]},CONTROLLER://127.0.0.1:${cport[$i]}
advertised.listeners=PLAINTEXT://127.0.0.1:${port[$i]}
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs=$d/data
num.partitions=1
default.replication.factor=$n
min.insync.replicas=2
num.network.threads=2
num.io.threads=2
num.recovery.threads.per.data.dir=1
offsets.topic.replication.factor=$n
offsets.topic.num.partitions=4
transaction.state.log.replication.factor=$n
transaction.state.log.min.isr=2
transaction.state.log.num.partitions=4
share.coordinator.state.topic.replication.factor=$n
share.coordinator.state.topic.min.isr=2
group.initial.rebalance.delay.ms=3000
transaction.abort.timed.out.transaction.cleanup.interval.ms=2000
auto.create.topics.enable=false
PROPS
    cat > "$d/log4j2.properties" <<'PROPS'
status = warn
appender.console.type = Console
appender.console.name = STDOUT
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.stdout.ref = STDOUT
PROPS
    if [ -z "${id:-}" ]; then
      id=$(java -Xmx256m -Dlog4j2.configurationFile="$d/log4j2.properties" -cp "$LIBS/*" kafka.tools.StorageTool random-uuid)
    fi
    # shellcheck disable=SC2046
    java $(jopts "$d") -cp "$LIBS/*" kafka.tools.StorageTool format -t "$id" -c "$d/server.properties" >"$d/logs/format.log" 2>&1
  done
  echo "$bootstrap" > "$dir/bootstrap"
  echo "$n" > "$dir/nodes"
  for i in $(seq 1 "$n"); do spawn "$dir" "$i"; done
  for i in $(seq 1 "$n"); do wait_started "$dir" "$i"; done
  echo "bootstrap=$bootstrap"
}

# spawn DIR ID: start node ID in the background
spawn() {
  local d="$1/node$2"
  local log="$d/logs/stdout.log"
  [ -f "$log" ] && cat "$log" >> "$d/logs/stdout.previous.log" && : > "$log"
  # shellcheck disable=SC2046
  nohup java $(jopts "$d") -cp "$LIBS/*" kafka.Kafka "$d/server.properties" >"$log" 2>&1 &
  echo $! > "$d/kafka.pid"
}

wait_started() {
  local d="$1/node$2"
  for _ in $(seq 1 240); do
    if grep -q "Kafka Server started" "$d/logs/stdout.log"; then return; fi
    kill -0 "$(cat "$d/kafka.pid")" 2>/dev/null || { tail -40 "$d/logs/stdout.log" >&2; exit 1; }
    sleep 0.5
  done
  echo "kafka-cluster.sh: node $2 did not start within 120 s; see $d/logs/stdout.log" >&2
  exit 1
}

down() {
  local dir="${1:-/tmp/sluice-kafka-cluster}" f
  for f in "$dir"/node*/kafka.pid; do [ -f "$f" ] && stop_pidfile "$f" 30; done
  return 0
}

case "${1:-}" in
  up) up "${2:-}" "${3:-3}" ;;
  down) down "${2:-}" ;;
  start) [ -f "$2/node$3/server.properties" ] || { echo "kafka-cluster.sh: no node $3 in $2" >&2; exit 1; }
         spawn "$2" "$3"; wait_started "$2" "$3"; echo "bootstrap=$(cat "$2/bootstrap")" ;;
  pid) cat "$2/node$3/kafka.pid" ;;
  *) echo "usage: scripts/kafka-cluster.sh up [DIR] [N] | down [DIR] | start DIR ID | pid DIR ID" >&2; exit 2 ;;
esac
