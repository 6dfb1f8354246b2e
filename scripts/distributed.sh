#!/usr/bin/env bash
# The distributed mode of scripts/run.sh (`scripts/run.sh --distributed [--demo]`, which
# builds the binaries and starts Postgres, Redis and the broker first; not meant to be run on
# its own): each service its own process behind the gateway.
#
#   stand-in payment gateway  127.0.0.1:${STAND_IN_GATEWAY_PORT:-8090}
#   order instances           127.0.0.1:$((PORT+1)), 127.0.0.1:$((PORT+2))
#   store instance            127.0.0.1:$((PORT+3))
#   payment instances         127.0.0.1:$((PORT+4)), 127.0.0.1:$((PORT+5))
#   gateway (the entry)       127.0.0.1:$PORT
#
# Logs and pid files in .services/distributed/. Ctrl-C (or the demo's end) stops them all.
set -euo pipefail
cd "$(dirname "$0")/.."

app=$1
demo=$2
secret_hint=$3
dir=.services/distributed
mkdir -p "$dir"

# A real gateway URL is kept; otherwise the stand-in runs as its own process.
stand_in_port=${STAND_IN_GATEWAY_PORT:-8090}
if [ -z "${PAYMENT_GATEWAY_URL:-}" ]; then
    unset PAYMENT_GATEWAY
    export PAYMENT_GATEWAY_URL="http://127.0.0.1:$stand_in_port"
    own_stand_in=true
    payments="the STAND-IN gateway process at $PAYMENT_GATEWAY_URL (approves every charge, no real money)"
else
    own_stand_in=false
    payments="the gateway at PAYMENT_GATEWAY_URL"
fi

pids=()
stop_all() {
    trap - INT TERM EXIT
    if [ ${#pids[@]} -gt 0 ]; then
        echo "stopping ${#pids[@]} processes" >&2
        kill -TERM "${pids[@]}" 2>/dev/null || true
        # Each drains and stops within its grace period; then whatever is left is killed.
        for _ in $(seq 1 100); do
            alive=0
            for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
            [ $alive = 0 ] && break
            sleep 0.1
        done
        kill -KILL "${pids[@]}" 2>/dev/null || true
    fi
    rm -f "$dir"/*.pid
}
trap stop_all EXIT
trap 'exit 130' INT TERM

# start NAME ENV... -- COMMAND...: runs COMMAND with ENV in the background, logging to
# $dir/NAME.log, its pid in $dir/NAME.pid.
start() {
    local name=$1
    shift
    local env=()
    while [ "$1" != "--" ]; do env+=("$1"); shift; done
    shift
    env OTEL_SERVICE_NAME="${OTEL_SERVICE_NAME:-commerce}-$name" "${env[@]}" "$@" >"$dir/$name.log" 2>&1 &
    pids+=($!)
    echo $! >"$dir/$name.pid"
}

wait_ready() {
    local name=$1 url=$2
    for _ in $(seq 1 300); do
        if curl -fsS -o /dev/null "$url" 2>/dev/null; then return 0; fi
        if ! kill -0 "$(cat "$dir/$name.pid")" 2>/dev/null; then
            echo "$name stopped during start-up; its log ($dir/$name.log) ends:" >&2
            tail -20 "$dir/$name.log" >&2
            exit 1
        fi
        sleep 0.2
    done
    echo "$name not ready at $url after 60 s; its log: $dir/$name.log" >&2
    exit 1
}

if $own_stand_in; then
    start stand-in STAND_IN_GATEWAY_PORT="$stand_in_port" -- "$(dirname "$app")/stand-in-gateway"
    wait_ready stand-in "http://127.0.0.1:$stand_in_port/health"
fi

# Services apart: Kafka and Redis are required (set by run.sh); no drain wait (no orchestrator
# here: the gateway's checks take a stopping instance out). Stock is taken by batching, which
# keeps its gain with several order instances on one product (docs/operations.md).
common=(SHUTDOWN_DRAIN_SECS=0 STOCK_STRATEGY="${STOCK_STRATEGY:-batching}")
order_urls=() store_urls=()
for i in 1 2; do
    port=$((PORT + i))
    start "order-$i" "${common[@]}" SERVICE=order PORT=$port -- "$app" serve
    order_urls+=("http://127.0.0.1:$port")
done
start store-1 "${common[@]}" SERVICE=store PORT=$((PORT + 3)) -- "$app" serve
store_urls+=("http://127.0.0.1:$((PORT + 3))")
for i in 1 2; do
    start "payment-$i" "${common[@]}" SERVICE=payment PORT=$((PORT + 3 + i)) -- "$app" serve
done
for name_port in order-1:$((PORT + 1)) order-2:$((PORT + 2)) store-1:$((PORT + 3)) \
    payment-1:$((PORT + 4)) payment-2:$((PORT + 5)); do
    wait_ready "${name_port%%:*}" "http://127.0.0.1:${name_port##*:}/ready"
done

join() { local IFS=,; echo "$*"; }
start gateway GATEWAY_ORDER_URLS="$(join "${order_urls[@]}")" \
    GATEWAY_STORE_URLS="$(join "${store_urls[@]}")" SERVICE=gateway PORT="$PORT" -- "$app" serve
base="http://${BIND:-127.0.0.1}:$PORT"
wait_ready gateway "$base/ready"

cat <<INFO

  commerce-rs order system, distributed, through the gateway on $base
  processes:       gateway :$PORT, order :$((PORT + 1)) :$((PORT + 2)), store :$((PORT + 3)), payment :$((PORT + 4)) :$((PORT + 5))
  logs, pids:      $dir/
  events:          Kafka at $KAFKA_BROKERS
  product cache:   Redis at $REDIS_URL
  payments:        $payments
  customer token:  $("$app" token --sub alice --role customer)
  admin token:     $("$app" token --sub admin --role admin)
  demo:            $secret_hint $app demo --url $base

INFO

if [ "$demo" = true ]; then
    "$app" demo --url "$base"
    exit $?
fi
# Until Ctrl-C, or until one of them stops on its own.
wait -n "${pids[@]}"
echo "a process stopped on its own; see $dir/*.log" >&2
exit 1
