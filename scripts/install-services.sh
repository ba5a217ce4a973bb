#!/usr/bin/env bash
# Installs what the tests' servers need (Debian packages) when it is missing: Redis, PostgreSQL, a JRE and Maven.
# Kafka and Cassandra 5.0 run on the JRE 17 (Cassandra 5.0 on Java 11 or 17 only; scripts/cassandra.sh
# prefers a Java 17 under /usr/lib/jvm).
# Apicurio Registry also needs Java 21+ (scripts/registry.sh looks under /usr/lib/jvm or JAVA21).
# The tests start their own instances on loopback ports; nothing is left running.
set -euo pipefail
missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing+=(postgresql)   # scripts/postgres.sh: initdb + pg_ctl
# Kafka (and keytool for its TLS listener), Cassandra
java17() { ls /usr/lib/jvm/*17*/bin/java >/dev/null 2>&1 || java -version 2>&1 | grep -q 'version "17\.'; }
java17 || missing+=(openjdk-17-jre-headless)
command -v mvn >/dev/null 2>&1 || missing+=(maven)                      # fetches Kafka, Cassandra and Apicurio from Maven Central
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "install-services: need root to apt-get install ${missing[*]} (or install them yourself)" >&2
    exit 1
  fi
  echo "install-services: installing ${missing[*]} from Debian packages"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
