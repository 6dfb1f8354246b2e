#!/usr/bin/env bash
# Runs every test of the workspace against real servers (Postgres, Redis, the Kafka-protocol
# broker), starting or installing them first, then the API's contract test (schemathesis
# against the served OpenAPI document, scripts/contract.sh, served by the app and then through
# the gateway in front of it), then the request decoders' fuzz targets for 20 s each
# (scripts/fuzz.sh --short). The workspace's tests include the fault suite's short mode
# (reference-app/tests/faults.rs; scripts/faults.sh runs its full mode). Extra arguments go
# to `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/services.sh up
cargo test --workspace --all-features --locked "$@"
scripts/contract.sh
scripts/contract.sh --through-gateway
scripts/fuzz.sh --short
