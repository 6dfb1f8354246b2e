#!/usr/bin/env bash
# The main job: makes the servers ready, then runs the reference app end to end against them.
# Extra arguments go to the reference app.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/services.sh up
cargo run --release --locked -p reference-app -- "$@"
