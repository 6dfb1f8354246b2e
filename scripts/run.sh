#!/usr/bin/env bash
# The main job: makes the servers ready, then runs the reference app end to end against them.
# Extra arguments go to the reference app.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/services.sh up
# The main job runs scaled-out style: Redis for the product cache (unset REDIS_URL= for in-process).
export REDIS_URL=${REDIS_URL-redis://127.0.0.1:6379}
# ...and Kafka for the order events (set KAFKA_BROKERS= to run without events).
export KAFKA_BROKERS=${KAFKA_BROKERS-127.0.0.1:9092}
cargo run --release --locked -p reference-app -- "$@"
