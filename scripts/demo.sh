#!/usr/bin/env bash
# The demo command: installs redis-server (and the C tools librdkafka needs) when
# missing, then runs a flash sale on this machine: a private redis-server, an
# embedded Kafka, the worker and a simulated checkout service. Flags go to
# `waitroom-worker demo` (--users, --capacity, --batch, --checkout-time, --stock,
# --fail-rate, ...; `--help` lists them).
#
# The demo replaces this script's process (exec of the built binary, not of cargo),
# so a signal sent to the script's pid (Ctrl-C, kill, `timeout 30 ./scripts/demo.sh`,
# a supervisor) reaches the demo itself: it stops, prints its summary so far and
# stops its redis-server.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/deps.sh
# Build, and take the binary's path from cargo (wherever its target dir is).
bin=$(cargo build --release --message-format=json-render-diagnostics |
  sed -n 's/.*"executable":"\([^"]*waitroom-worker\)".*/\1/p' | tail -n 1)
if [ -z "$bin" ] || [ ! -x "$bin" ]; then
  echo "demo.sh: cargo built no waitroom-worker binary" >&2
  exit 1
fi
exec "$bin" demo "$@"
