#!/usr/bin/env bash
# Fetches the jars of the Apache Kafka broker that the integration tests
# start (internal/localsvc/kafka.go) with Maven, from scripts/kafka/pom.xml,
# into a cache outside the repository:
#
#   ${LOANFLOW_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/loanflow}/kafka-4.4.0/libs
#
# and prints that directory. The download happens once: a marker file holding
# the pom's checksum says the directory is complete (a changed pom fetches
# again), it is written only after Maven succeeded, and the jars are copied
# into a scratch directory that replaces libs/ only then. An flock serialises
# parallel callers (each `go test` package is its own process).
#
# Exit status: 0 with the libs directory on stdout; 3 when java (or, when
# something has to be downloaded, mvn) is missing; anything else when the
# download failed. Messages go to stderr.
set -euo pipefail

version=4.4.0
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
pom="$here/kafka/pom.xml"
cache="${LOANFLOW_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/loanflow}/kafka-$version"
libs="$cache/libs"
marker="$cache/complete"

hint="install them with \`apt-get install -y default-jre-headless maven\` (Java 17 or newer)"
if ! { [ -n "${JAVA_HOME:-}" ] && [ -x "$JAVA_HOME/bin/java" ]; } && ! command -v java >/dev/null 2>&1; then
  echo "kafka-jars: java not found: the Apache Kafka broker needs a Java 17+ runtime; $hint" >&2
  exit 3
fi

sum="$(sha256sum "$pom" | cut -d' ' -f1)"
complete() { [ -f "$marker" ] && [ "$(cat "$marker")" = "$sum" ] && [ -d "$libs" ]; }

if complete; then
  echo "$libs"
  exit 0
fi

mkdir -p "$cache"
exec 9>"$cache/.lock"
if command -v flock >/dev/null 2>&1; then
  flock 9
fi
# Another process may have finished the download while we waited.
if complete; then
  echo "$libs"
  exit 0
fi

if ! command -v mvn >/dev/null 2>&1; then
  echo "kafka-jars: mvn not found: Maven fetches the Apache Kafka $version jars; $hint" >&2
  exit 3
fi

echo "kafka-jars: fetching Apache Kafka $version jars into $libs" >&2
tmp="$cache/libs.tmp.$$"
rm -rf "$tmp"
trap 'rm -rf "$tmp"' EXIT
# Maven prints its errors on stdout, which is reserved for the result.
if ! mvn -B -q -Dstyle.color=never -f "$pom" dependency:copy-dependencies \
  -DoutputDirectory="$tmp" >&2; then
  echo "kafka-jars: mvn failed to fetch the Apache Kafka $version jars (see above)" >&2
  exit 1
fi
if ! ls "$tmp"/kafka_2.13-"$version".jar >/dev/null 2>&1; then
  echo "kafka-jars: mvn succeeded but $tmp has no kafka_2.13-$version.jar" >&2
  exit 1
fi
rm -f "$marker"
rm -rf "$libs"
mv "$tmp" "$libs"
echo "$sum" >"$marker"
echo "kafka-jars: $(ls "$libs" | wc -l) jars, $(du -sh "$libs" | cut -f1)" >&2
echo "$libs"
