#!/usr/bin/env bash
# A single-node Apache Kafka broker (KRaft) from Maven Central jars — no Docker, no download site.
#   scripts/kafka.sh install        resolve the jars into $SLUICE_CACHE (default ~/.cache/sluice)
#   scripts/kafka.sh up [DIR]       format and start a broker on free loopback ports; last line: bootstrap=HOST:PORT
#   scripts/kafka.sh down [DIR]     stop it
#   scripts/kafka.sh start [DIR]    start the broker of DIR again (its data and ports; after a crash, for fault tests)
# DIR (default /tmp/sluice-kafka) holds the data, logs, config and pid. SLUICE_KAFKA_HOST (default 127.0.0.1)
# is the address the client listeners bind to (a private network namespace's, for the network-loss tests);
# the controller listener stays on 127.0.0.1.
set -euo pipefail
HERE="$(cd "$(dirname "$0")/.." && pwd)"
VERSION=4.3.1
CACHE="${SLUICE_CACHE:-$HOME/.cache/sluice}/kafka-$VERSION"
LIBS="$CACHE/libs"

install() {
  if [ -f "$LIBS/kafka_2.13-$VERSION.jar" ]; then return; fi
  command -v mvn >/dev/null || { echo "kafka.sh: Maven (mvn) is needed to fetch the Kafka jars" >&2; exit 1; }
  command -v java >/dev/null || { echo "kafka.sh: Java 17+ is needed to run Kafka" >&2; exit 1; }
  (cd "$HERE/services/kafka" && mvn -B -q -Dstyle.color=never package -Dkafka.libs="$LIBS.tmp") >&2
  rm -rf "$LIBS"; mv "$LIBS.tmp" "$LIBS"
}

# shellcheck source=service-lib.sh
source "$HERE/scripts/service-lib.sh"

up() {
  local dir="${1:-/tmp/sluice-kafka}"
  install
  down "$dir" 2>/dev/null || true
  rm -rf "$dir"; mkdir -p "$dir/data" "$dir/logs"
  local port cport sport host="${SLUICE_KAFKA_HOST:-127.0.0.1}"
  port=$(free_port); cport=$(free_port); sport=$(free_port)
  # a second listener with SASL/PLAIN over TLS, for the security tests: a self-signed certificate for
  # 127.0.0.1 (keytool, from the JDK) and a random password for the user "sluice"
  mkdir -p "$dir/tls"
  local storepass; storepass=$(python3 -c 'import secrets; print(secrets.token_hex(12))')
  python3 -c 'import secrets; print(secrets.token_urlsafe(18))' > "$dir/sasl_password"
  chmod 600 "$dir/sasl_password"
  keytool -genkeypair -alias broker -keyalg RSA -keysize 2048 -validity 3650 -dname CN=127.0.0.1 \
      -ext SAN=ip:127.0.0.1,dns:localhost -keystore "$dir/tls/broker.p12" -storetype PKCS12 \
      -storepass "$storepass" -keypass "$storepass" >/dev/null 2>&1
  keytool -exportcert -rfc -alias broker -keystore "$dir/tls/broker.p12" -storepass "$storepass" \
      -file "$dir/tls/ca.pem" >/dev/null 2>&1
  cat > "$dir/server.properties" <<PROPS
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=127.0.0.1:$cport
listeners=PLAINTEXT://$host:$port,CONTROLLER://127.0.0.1:$cport,SASL_SSL://$host:$sport
advertised.listeners=PLAINTEXT://$host:$port,SASL_SSL://$host:$sport
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT,SASL_SSL:SASL_SSL
sasl.enabled.mechanisms=PLAIN
listener.name.sasl_ssl.plain.sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required user_sluice="$(cat "$dir/sasl_password")";
ssl.keystore.type=PKCS12
ssl.keystore.location=$dir/tls/broker.p12
ssl.keystore.password=$storepass
ssl.key.password=$storepass
log.dirs=$dir/data
num.partitions=1
num.network.threads=2
num.io.threads=2
num.recovery.threads.per.data.dir=1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=4
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=4
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=3000
transaction.abort.timed.out.transaction.cleanup.interval.ms=2000
auto.create.topics.enable=false
PROPS
  cat > "$dir/log4j2.properties" <<'PROPS'
status = warn
appender.console.type = Console
appender.console.name = STDOUT
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.stdout.ref = STDOUT
PROPS
  local jopts=(-Xms512m -Xmx1g -XX:+UseG1GC -Djava.awt.headless=true -Dkafka.logs.dir="$dir/logs"
               -Dlog4j2.configurationFile="$dir/log4j2.properties")
  local id
  id=$(java -Xmx256m -Dlog4j2.configurationFile="$dir/log4j2.properties" -cp "$LIBS/*" kafka.tools.StorageTool random-uuid)
  java "${jopts[@]}" -cp "$LIBS/*" kafka.tools.StorageTool format -t "$id" -c "$dir/server.properties" --standalone >"$dir/logs/format.log" 2>&1
  echo "$host:$port" > "$dir/bootstrap"
  echo "$host:$sport" > "$dir/sasl_ssl"
  launch "$dir"
}

# launch DIR: start the formatted broker of DIR and wait until it serves
launch() {
  local dir="$1" sport
  sport=$(cut -d: -f2 "$dir/sasl_ssl")
  local jopts=(-Xms512m -Xmx1g -XX:+UseG1GC -Djava.awt.headless=true -Dkafka.logs.dir="$dir/logs"
               -Dlog4j2.configurationFile="$dir/log4j2.properties")
  local log="$dir/logs/stdout.log"
  [ -f "$log" ] && cat "$log" >> "$dir/logs/stdout.previous.log" && : > "$log"
  nohup java "${jopts[@]}" -cp "$LIBS/*" kafka.Kafka "$dir/server.properties" >"$log" 2>&1 &
  echo $! > "$dir/kafka.pid"
  for _ in $(seq 1 120); do
    if grep -q "Kafka Server started" "$dir/logs/stdout.log"; then
      echo "sasl_ssl=$(cat "$dir/sasl_ssl") user=sluice password_file=$dir/sasl_password ca=$dir/tls/ca.pem"
      echo "bootstrap=$(cat "$dir/bootstrap")"
      return
    fi
    kill -0 "$(cat "$dir/kafka.pid")" 2>/dev/null || { tail -40 "$dir/logs/stdout.log" >&2; exit 1; }
    sleep 0.5
  done
  echo "kafka.sh: the broker did not start within 60 s; see $dir/logs/stdout.log" >&2
  exit 1
}

down() {
  stop_pidfile "${1:-/tmp/sluice-kafka}/kafka.pid" 30
}

case "${1:-}" in
  install) install ;;
  up) up "${2:-}" ;;
  start) d="${2:-/tmp/sluice-kafka}"; [ -f "$d/server.properties" ] || { echo "kafka.sh: no broker in $d" >&2; exit 1; }; launch "$d" ;;
  down) down "${2:-}" ;;
  *) echo "usage: scripts/kafka.sh install | up [DIR] | down [DIR] | start [DIR]" >&2; exit 2 ;;
esac
