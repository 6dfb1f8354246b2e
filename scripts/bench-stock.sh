#!/usr/bin/env bash
# The stock strategies side by side, as in docs/performance.md: every strategy (the bare
# one-row UPDATE ceiling included) on the hot, spread, sell-out and flash-sale scenarios, then
# 5,000 clients on the hot product in closed and open loop, then the same through the
# reference app over HTTP. Prints the tables and writes JSON and SVG plots to docs/img/.
# Extra arguments go to every stock-load run (e.g. --duration 5). Takes about 15 minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/services.sh up postgres redis
cargo build --release --locked -p commerce-examples --bin stock-load
load=target/release/stock-load
mkdir -p docs/img
echo "== $(date -u +%FT%TZ) $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg)"
psql "${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}" -Atc \
    "SELECT 'postgres ' || version(); SELECT 'synchronous_commit ' || current_setting('synchronous_commit'); SELECT 'fsync ' || current_setting('fsync'); SELECT 'shared_buffers ' || current_setting('shared_buffers'); SELECT 'max_connections ' || current_setting('max_connections');" \
    2>/dev/null || true
echo "== 32 clients, every strategy, every scenario"
$load --strategies conditional-update,redis-lock,local-lock,batching,bare-update \
    --scenarios hot,spread,sellout,flash \
    --json docs/img/stock-load.json --plot docs/img/stock-load.svg "$@"
echo "== 32 clients, what a deployment runs (--realistic): two instances with their own pools,"
echo "   the outbox hook, an idempotency key on every order, 50 cancellations and 10 receipts a second"
$load --realistic --strategies conditional-update,redis-lock,batching,bare-update \
    --scenarios hot,spread --json docs/img/stock-load-realistic.json "$@"
echo "== 5,000 clients on the hot product, closed loop"
$load --clients 5000 --strategies conditional-update,redis-lock,batching,bare-update \
    --scenarios hot "$@"
echo "== 5,000 clients on the hot product, closed loop: batching with 1, 2 (the default) and 3"
echo "   batches in flight, and with batches of up to 1,000 (what bounds it: wtx/s, ord/tx, cores)"
for flight in 1 2 3; do
    echo "-- --batch-in-flight $flight"
    $load --clients 5000 --strategies batching --scenarios hot --batch-in-flight "$flight" "$@"
done
echo "-- --batch-max 1000"
$load --clients 5000 --strategies batching --scenarios hot --batch-max 1000 "$@"
echo "== 5,000 clients on the hot product, open loop at 5,000 orders/s"
$load --clients 5000 --rate 5000 --strategies conditional-update,redis-lock,batching,bare-update \
    --scenarios hot "$@"
echo "== through the reference app over HTTP"
$load --http --strategies conditional-update,redis-lock,batching,bare-update \
    --scenarios hot,flash --flash-clients 2000 \
    --json docs/img/stock-load-http.json --plot docs/img/stock-load-http.svg "$@"
