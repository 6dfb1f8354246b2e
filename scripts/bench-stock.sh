#!/usr/bin/env bash
# The stock strategies side by side, as in docs/performance.md: every strategy (the bare
# one-row UPDATE ceiling included) on the hot, spread, sell-out and flash-sale scenarios, then
# 5,000 clients on the hot product in closed and open loop, then the same through the
# reference app over HTTP; then the outbox relay's throughput and its commit-to-publish
# latency at 1,000 events/s (short runs of outbox-load). Prints the tables and writes JSON and
# SVG plots to docs/img/. Extra arguments go to every stock-load run (e.g. --duration 5), not
# to the relay's. Takes about 18 minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/services.sh up postgres redis kafka
cargo build --release --locked -p commerce-examples --bin stock-load --bin outbox-load
load=target/release/stock-load
relay=target/release/outbox-load
mkdir -p docs/img
echo "== $(date -u +%FT%TZ) $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg)"
psql "${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}" -Atc \
    "SELECT 'postgres ' || version(); SELECT 'synchronous_commit ' || current_setting('synchronous_commit'); SELECT 'fsync ' || current_setting('fsync'); SELECT 'shared_buffers ' || current_setting('shared_buffers'); SELECT 'max_connections ' || current_setting('max_connections'); SELECT 'autovacuum ' || current_setting('autovacuum');" \
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
echo "== through the reference app over HTTP, each row after the same strategy through the crate"
echo "   (the saga's line: the ratio of the two, and on a row whose saga kept pace, what an"
echo "   order costs the machine's cores each way against what half the crate's rate allows)"
$load --http --with-crate --strategies conditional-update,redis-lock,batching,bare-update \
    --scenarios hot,flash --flash-clients 2000 \
    --json docs/img/stock-load-http.json --plot docs/img/stock-load-http.svg "$@"
echo "== the gateway's hop and the distributed mode: the hot row over HTTP straight to the"
echo "   all-in-one app, through the gateway, and to the services apart (two order instances,"
echo "   Kafka, Redis) behind it"
$load --http --strategies batching,batching+gateway,batching+apart --scenarios hot "$@"
echo "== the outbox relay, on a broker of its own started empty (tansu's memory storage answers"
echo "   slower the more a test suite left in it): the broker alone (send-to-ack of single"
echo "   messages at 1,000/s), the relay's throughput (200,000 prefilled events, batch 1,000,"
echo "   2 workers), then commit-to-publish at 1,000 events/s (4 writers, 2 workers, 10 s after a"
echo "   2 s warm-up); docs/outbox.md's bars: at least 20,000 events/s, p99 at most 10 ms"
bench_broker=127.0.0.1:${BENCH_BROKER_PORT:-19092}
bench_state=.services/bench-broker
stop_bench_broker() { SERVICES_STATE=$bench_state KAFKA_BROKERS=$bench_broker scripts/services.sh down >/dev/null; }
stop_bench_broker
trap stop_bench_broker EXIT
SERVICES_STATE=$bench_state KAFKA_BROKERS=$bench_broker scripts/services.sh up kafka
KAFKA_BROKERS=$bench_broker $relay broker --rate 1000 --seconds 10 --linger 0
KAFKA_BROKERS=$bench_broker $relay throughput --events 200000 --aggregates 10000 --batch 1000 --workers 2
KAFKA_BROKERS=$bench_broker $relay latency --rate 1000 --seconds 10 --writers 4 --workers 2
