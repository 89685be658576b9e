#!/usr/bin/env bash
# Runs third-party AMQP client test suites (kombu, py-amqp, amqplib, rabbitpy, amqpstorm)
# and our pika scenarios against warren. All arguments go to tests/clients/run_suites.py.
#
#   scripts/client-suites.sh                      # builds warren (release), runs every suite
#   scripts/client-suites.sh --suites pika,kombu  # a subset
#   scripts/client-suites.sh --port 5673          # against a broker that is already running
#   WARREN_BIN=path/to/warren scripts/client-suites.sh
#
# Without --port/--broker-cmd it starts a fresh `warren serve` per suite, on free ports.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
for a in "$@"; do
  case $a in --port|--port=*|--broker-cmd|--broker-cmd=*|--install-only) exec python3 tests/clients/run_suites.py "$@" ;; esac
done
bin=${WARREN_BIN:-}
if [ -z "$bin" ]; then
  cargo build --release --bin warren >&2
  bin=$root/target/release/warren
fi
exec python3 tests/clients/run_suites.py \
  --broker-cmd "$bin serve --amqp-port {port} --http-port {http_port} --data-dir {dir}" "$@"
