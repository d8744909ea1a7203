#!/usr/bin/env bash
# Installs the servers the integration tests start (PostgreSQL server
# binaries, redis-server), the headless browser of the dashboard test,
# Node.js with npm (the CDC conformance test's kafkajs consumer) and
# Prometheus with promtool (package prometheus: deploy/'s tests check the
# config, alert rules and dashboard queries with them), from Debian packages, when
# they are missing and we run as root. Otherwise it only reports what is
# missing.
#
# The Apache Kafka tests (internal/localsvc, testenv.Kafka) need a Java 17+
# runtime and Maven (packages default-jre-headless and maven, installed the
# same way); with both present it also fetches the Kafka jars once into the
# cache outside the repository (scripts/kafka-jars.sh). Without them those
# tests are skipped locally and fail under CI=true.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

missing=()
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && ! command -v initdb >/dev/null 2>&1 && [ -z "${LOANFLOW_PG_BINDIR:-}" ]; then
  missing+=(postgresql)
fi
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
{ command -v promtool && command -v prometheus; } >/dev/null 2>&1 || missing+=(prometheus)
# The CDC conformance test's foreign consumer (connectors/postgres/testdata/conformance).
{ command -v node && command -v npm; } >/dev/null 2>&1 || missing+=(nodejs npm)
if [ "${LOANFLOW_SKIP_BROWSER:-}" = "" ]; then
  command -v chromium >/dev/null 2>&1 || missing+=(chromium)
fi

kafka_missing=()
have_java() { { [ -n "${JAVA_HOME:-}" ] && [ -x "$JAVA_HOME/bin/java" ]; } || command -v java >/dev/null 2>&1; }
have_java || kafka_missing+=(default-jre-headless)
command -v mvn >/dev/null 2>&1 || kafka_missing+=(maven)

# kafka_jars fetches the Apache Kafka jars when java and mvn are there, and
# says what the tests will do otherwise.
kafka_jars() {
  if have_java && command -v mvn >/dev/null 2>&1; then
    if ! bash "$here/kafka-jars.sh" >/dev/null; then
      echo "install-deps: fetching the Apache Kafka jars failed (see above); the Apache Kafka tests will try again" >&2
    fi
    return 0
  fi
  echo "install-deps: java or mvn is missing: the Apache Kafka tests will be skipped locally (and fail under CI=true)" >&2
  echo "install-deps: install them as root, or: sudo apt-get install -y default-jre-headless maven" >&2
}

if [ ${#missing[@]} -eq 0 ] && [ ${#kafka_missing[@]} -eq 0 ]; then
  kafka_jars
  exit 0
fi
if [ "$(id -u)" != "0" ]; then
  if [ ${#missing[@]} -gt 0 ]; then
    echo "install-deps: missing Debian packages: ${missing[*]}" >&2
    echo "install-deps: run as root, or: sudo apt-get install -y ${missing[*]}" >&2
  fi
  kafka_jars
  exit 0
fi
all=("${missing[@]}" "${kafka_missing[@]}")
echo "install-deps: installing ${all[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
# The JRE's postinst links man pages; slim images drop /usr/share/man.
mkdir -p /usr/share/man/man1
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${all[@]}" >/dev/null
kafka_jars
