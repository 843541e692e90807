#!/usr/bin/env bash
# The test command: installs what the tests need on a Debian machine that has only
# Rust (scripts/deps.sh), then runs every test. Tests start their own redis-server on
# free loopback ports and librdkafka's mock Kafka cluster in-process; they never
# touch a Redis they did not start.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/deps.sh
cargo test --all-targets "$@"
