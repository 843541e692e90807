#!/usr/bin/env bash
# The test command: installs what the tests need on a Debian machine that has only
# Rust (redis-server, and make/gcc for the bundled librdkafka), then runs every test.
# Tests start their own redis-server on free loopback ports and librdkafka's mock
# Kafka cluster in-process; they never touch a Redis they did not start.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
command -v make >/dev/null 2>&1 || need+=(make)
command -v cc >/dev/null 2>&1 || need+=(gcc)
command -v g++ >/dev/null 2>&1 || need+=(g++)
if ((${#need[@]})); then
  sudo=""
  if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
  echo "installing: ${need[*]}" >&2
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}"
fi

cargo test --all-targets "$@"
