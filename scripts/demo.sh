#!/usr/bin/env bash
# The demo command: installs redis-server (and the C tools librdkafka needs) when
# missing, then runs a flash sale on this machine: a private redis-server, an
# embedded Kafka, the worker and a simulated checkout service. Flags go to
# `waitroom-worker demo` (--users, --capacity, --batch, --checkout-time, ...).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/deps.sh
exec cargo run --release -- demo "$@"
