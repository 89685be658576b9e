#!/usr/bin/env bash
# Runs every test warren has, installing what the tests need under .deps/ (a Python venv
# with the client libraries, the amqplib npm package, cargo-fuzz). CI runs exactly this.
#
#   scripts/test.sh                 # everything
#   WARREN_TEST_ONLY=build,unit scripts/test.sh    # some steps: build unit hostile clients cluster browser fuzz sim
#
# Steps: build (release, must be warning-free) · unit (cargo test: unit, property and
# end-to-end tests against real warren processes) · hostile (the hostile-client suite,
# tests/hostile: attacks on a real warren, each followed by liveness, bystander, memory and
# ledger checks; prints a table of them) · clients (third-party client suites: Python,
# Node and the Go client, whose Debian packages golang-go and
# golang-github-rabbitmq-amqp091-go-dev are installed if missing; and scenarios with pika
# and the Java client, default-jdk-headless and librabbitmq-client-java) · cluster (three warren processes as one cluster, pika publishing with
# confirms and consuming while the leader is killed with SIGKILL and cut off with iptables,
# installed if missing) · browser (the management web UI in headless Chromium: Debian's chromium
# package, installed if missing, driven by Playwright for Python from .deps/ui-venv; its
# screenshots and timings go to target/ui-test) · fuzz (bounded cargo-fuzz runs) · sim (a
# batch of simulator seeds and the madsim tests).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
export CARGO_TERM_COLOR=never
only=${WARREN_TEST_ONLY:-build,unit,hostile,clients,cluster,browser,fuzz,sim}
fuzz_seconds=${WARREN_FUZZ_SECONDS:-60}
failed=()
started=$(date +%s)

want() { [[ ",$only," == *",$1,"* ]]; }
step() { echo; echo "=== $1 ($(( $(date +%s) - started ))s elapsed)"; }
run() {
  local name=$1; shift
  local t0=$(date +%s)
  if "$@"; then
    echo "--- $name: ok in $(( $(date +%s) - t0 ))s"
  else
    echo "--- $name: FAILED in $(( $(date +%s) - t0 ))s"
    failed+=("$name")
  fi
}

build_warning_free() {
  local log
  log=$(mktemp)
  cargo build --release --workspace --all-targets 2>&1 | tee "$log"
  local status=${PIPESTATUS[0]}
  if [ "$status" -ne 0 ]; then rm -f "$log"; return "$status"; fi
  if grep -qE '^warning' "$log"; then
    echo "the build printed warnings"
    rm -f "$log"
    return 1
  fi
  rm -f "$log"
}

fuzz_targets() {
  if ! [ -x .deps/cargo/bin/cargo-fuzz ]; then
    cargo install cargo-fuzz --locked --root .deps/cargo
  fi
  local target ok=0
  for target in $(ls fuzz/fuzz_targets | sed 's/\.rs$//'); do
    echo "fuzzing $target for ${fuzz_seconds}s"
    # A freeze (an input still running after 5 s) and a memory blow-up are crashes too.
    (cd fuzz && ../.deps/cargo/bin/cargo-fuzz run -s none "$target" -- \
        -max_total_time="$fuzz_seconds" -timeout=5 -rss_limit_mb=2048 \
        -print_final_stats=1 2>&1 | tail -n 15) || ok=1
  done
  return $ok
}

install_package() {
  if [ "$(id -u)" -eq 0 ]; then
    apt-get install -y -q "$1" >/dev/null || { apt-get update -q && apt-get install -y -q "$1" >/dev/null; }
  else
    sudo apt-get install -y -q "$1" >/dev/null
  fi
}

cluster_test() {
  command -v iptables >/dev/null || install_package iptables
  local venv=.deps/cluster-venv
  if ! [ -x "$venv/bin/python" ] || ! "$venv/bin/python" -c "import pika" 2>/dev/null; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q --disable-pip-version-check "$(grep -i '^pika==' tests/clients/requirements.txt)"
  fi
  "$venv/bin/python" tests/cluster/failover.py --warren target/release/warren
}

browser_test() {
  [ -x /usr/bin/chromium ] || install_package chromium
  local venv=.deps/ui-venv
  if ! [ -x "$venv/bin/python" ] || ! "$venv/bin/python" -c "import playwright" 2>/dev/null; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q --disable-pip-version-check -r tests/browser/requirements.txt
  fi
  "$venv/bin/python" tests/browser/test_ui.py --warren target/release/warren \
    --out target/ui-test --chromium /usr/bin/chromium
}

if want build; then
  step "build"
  run build build_warning_free
fi
# The hostile suite has a step of its own, where its table is shown.
hostile_test=hostile_clients_cannot_crash_freeze_or_bloat_warren
if want unit; then
  step "unit, property and end-to-end tests"
  run unit cargo test --release --workspace -- --skip "$hostile_test"
fi
if want hostile; then
  step "hostile-client suite"
  run hostile cargo test --release --test hostile -- --nocapture --test-threads=1 "$hostile_test"
fi
clients_test() {
  # The Go client's suite: Debian's Go and the client's sources with their tests.
  command -v go >/dev/null || install_package golang-go
  [ -d /usr/share/gocode/src/github.com/rabbitmq/amqp091-go ] ||
    install_package golang-github-rabbitmq-amqp091-go-dev
  # The Java client's scenarios: a JDK and the client (with the logging API it needs).
  command -v java >/dev/null || install_package default-jdk-headless
  [ -f /usr/share/java/amqp-client.jar ] || install_package librabbitmq-client-java
  python3 tests/clients/run_suites.py \
    --broker-cmd "$root/target/release/warren serve --amqp-port {port} --http-port {http_port} --data-dir {dir}"
}

if want clients; then
  step "third-party client suites"
  run clients clients_test
fi
if want cluster; then
  step "cluster failover"
  run cluster cluster_test
fi
if want browser; then
  step "management web UI in a browser"
  run browser browser_test
fi
if want fuzz; then
  step "fuzzing"
  run fuzz fuzz_targets
fi
if want sim && [ -x scripts/sim.sh ]; then
  step "simulation"
  run sim scripts/sim.sh
fi

echo
echo "=== done in $(( $(date +%s) - started ))s"
if [ ${#failed[@]} -gt 0 ]; then
  echo "FAILED: ${failed[*]}"
  exit 1
fi
echo "all steps passed"
