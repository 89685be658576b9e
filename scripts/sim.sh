#!/usr/bin/env bash
# CI's share of the simulation: a batch of seeds, a determinism check, the madsim tests.
# Reuses the release build of scripts/test.sh (the madsim build has its own folder).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
exec env SIM_TARGET_DIR="$root/target" "$root/sim/ci.sh" "$@"
