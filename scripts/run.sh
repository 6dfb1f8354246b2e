#!/usr/bin/env bash
# The main job: builds and serves the commerce-rs order system in the foreground until Ctrl-C.
#
#   scripts/run.sh                     on Postgres alone: events in-process, cache in-process
#   scripts/run.sh --with-redis-kafka  the same with Redis (cache) and the Kafka broker (events);
#                                      installs and starts the broker first if needed
#   scripts/run.sh --distributed       each service its own process behind the gateway: the
#                                      stand-in payment gateway, two order instances, two
#                                      payment instances, one store instance and the gateway on
#                                      $PORT, on Postgres, Redis and the broker; logs and pid
#                                      files in .services/distributed/; Ctrl-C stops them all
#   scripts/run.sh --distributed --demo  the same, runs the demo through the gateway, stops
#                                      everything and exits with the demo's audit
#
# Listens on 127.0.0.1:${PORT:-8080}; the database (DATABASE_URL, default
# postgres://postgres@127.0.0.1:5432/commerce) is created and migrated at start-up. Prints the
# URL, the API docs page and a customer and an admin token to try it with. Every setting is an
# environment variable (README, docs/reference-app.md); REDIS_URL / KAFKA_BROKERS set by hand
# switch those on too. Payments go to PAYMENT_GATEWAY_URL when it is set; otherwise this
# script chooses the stand-in gateway (PAYMENT_GATEWAY=stand-in, inside the process, approves
# every charge: no real money) and says so.
set -euo pipefail
cd "$(dirname "$0")/.."

with_redis_kafka=false
distributed=false
demo=false
for arg in "$@"; do
    case "$arg" in
        --with-redis-kafka) with_redis_kafka=true ;;
        --distributed) distributed=true ;;
        --demo) demo=true ;;
        -h|--help) sed -n '2,/^set -euo/{/^#/s/^# \{0,1\}//p}' "$0"; exit 0 ;;
        *) echo "unknown argument $arg (see --help)" >&2; exit 2 ;;
    esac
done

if $demo && ! $distributed; then
    echo "--demo goes with --distributed (against the all-in-one process: reference-app demo --url ...)" >&2
    exit 2
fi
$distributed && with_redis_kafka=true

if $with_redis_kafka; then
    export REDIS_URL=${REDIS_URL:-redis://127.0.0.1:6379}
    export KAFKA_BROKERS=${KAFKA_BROKERS:-127.0.0.1:9092}
    scripts/services.sh up postgres redis kafka
else
    # The embedded default needs Postgres only: it does not wait for the broker's install.
    services=(postgres)
    [ -n "${REDIS_URL:-}" ] && services+=(redis)
    [ -n "${KAFKA_BROKERS:-}" ] && services+=(kafka)
    scripts/services.sh up "${services[@]}"
fi

export PORT=${PORT:-8080}
# No load balancer to take a local run out of rotation: Ctrl-C stops without the drain.
export SHUTDOWN_DRAIN_SECS=${SHUTDOWN_DRAIN_SECS:-0}
# A secret of this checkout's own, kept between runs so tokens printed earlier stay valid.
secret_hint='COMMERCE_JWT_SECRET=<yours>'
if [ -z "${COMMERCE_JWT_SECRET:-}" ]; then
    mkdir -p .services
    [ -s .services/jwt-secret ] || head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >.services/jwt-secret
    COMMERCE_JWT_SECRET=$(cat .services/jwt-secret)
    secret_hint='COMMERCE_JWT_SECRET=$(cat .services/jwt-secret)'
fi
export COMMERCE_JWT_SECRET

# The app itself refuses to start without a gateway (it fails closed); a local run chooses the
# stand-in explicitly, and the banner says so.
if [ -n "${PAYMENT_GATEWAY_URL:-}" ]; then
    payments="the gateway at PAYMENT_GATEWAY_URL"
else
    export PAYMENT_GATEWAY=${PAYMENT_GATEWAY:-stand-in}
    payments="the STAND-IN gateway inside the process (PAYMENT_GATEWAY=stand-in): it approves every charge, no real money moves"
fi
events="in-process (Postgres alone)"
[ -n "${KAFKA_BROKERS:-}" ] && events="Kafka at $KAFKA_BROKERS"
cache="in-process"
[ -n "${REDIS_URL:-}" ] && cache="Redis at $REDIS_URL"

cargo build --release --locked -p reference-app --bins
app=target/release/reference-app
base="http://${BIND:-127.0.0.1}:$PORT"

if $distributed; then
    exec scripts/distributed.sh "$app" "$demo" "$secret_hint"
fi
cat <<INFO

  commerce-rs order system on $base
  API docs:        $base/docs   (OpenAPI: $base/api-docs/openapi.json)
  events:          $events
  product cache:   $cache
  payments:        $payments
  customer token:  $("$app" token --sub alice --role customer)
  admin token:     $("$app" token --sub admin --role admin)
  try:             curl -H "Authorization: Bearer <admin token>" $base/api/v1/admin/audit
  demo:            $secret_hint $app demo --url $base

INFO
exec "$app" serve
