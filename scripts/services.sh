#!/usr/bin/env bash
# Makes the servers commerce-rs needs ready, and is safe to run any number of times.
#
#   scripts/services.sh up      check Postgres and Redis (start them if installed here but
#                               stopped), install the Kafka-protocol broker tansu if missing,
#                               start it in the background and wait until it answers
#   scripts/services.sh up postgres [redis] [kafka]
#                               the same for the named servers only
#   scripts/services.sh status  one line per service
#   scripts/services.sh down    stop the broker this script started (Postgres and Redis belong
#                               to the machine and are left alone)
#
# Configuration (environment, with defaults):
#   DATABASE_URL   postgres://postgres@127.0.0.1:5432/postgres
#   REDIS_URL      redis://127.0.0.1:6379
#   KAFKA_BROKERS  127.0.0.1:9092
#   TANSU_VERSION  0.6.0
#   SERVICES_STATE .services (where the broker's pid and log files go: give a second broker,
#                  on another KAFKA_BROKERS port, a directory of its own)
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
state=${SERVICES_STATE:-"$root/.services"} # pid and log files (another dir for a second broker)
DATABASE_URL=${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}
REDIS_URL=${REDIS_URL:-redis://127.0.0.1:6379}
KAFKA_BROKERS=${KAFKA_BROKERS:-127.0.0.1:9092}
TANSU_VERSION=${TANSU_VERSION:-0.6.0}
broker=${KAFKA_BROKERS%%,*}
broker_host=${broker%:*}
broker_port=${broker##*:}
tansu_bin="${CARGO_HOME:-$HOME/.cargo}/bin/tansu"

say() { printf '%-9s %-6s %s\n' "$1" "$2" "$3"; }

is_local() { case "$1" in *127.0.0.1*|*localhost*|*'[::1]'*) return 0 ;; *) return 1 ;; esac; }

postgres_ready() { pg_isready -q -d "$DATABASE_URL" -t 2 >/dev/null 2>&1; }
redis_ready() { [ "$(redis-cli -u "$REDIS_URL" ping 2>/dev/null)" = "PONG" ]; }

# Sends a Kafka Metadata (v0) request and checks that a well-formed reply comes back.
kafka_ready() {
    python3 - "$broker_host" "$broker_port" <<'PY' 2>/dev/null
import socket, struct, sys
host, port = sys.argv[1], int(sys.argv[2])
client = b"commerce-rs-services"
body = struct.pack(">hhih", 3, 0, 7, len(client)) + client + struct.pack(">i", 0)
with socket.create_connection((host, port), timeout=2) as s:
    s.settimeout(3)
    s.sendall(struct.pack(">i", len(body)) + body)
    head = b""
    while len(head) < 8:
        chunk = s.recv(8 - len(head))
        if not chunk:
            sys.exit(1)
        head += chunk
    size, correlation = struct.unpack(">ii", head)
    sys.exit(0 if correlation == 7 and size >= 8 else 1)
PY
}

wait_for() { # name check seconds
    local i
    for ((i = 0; i < $3 * 4; i++)); do
        if "$2"; then return 0; fi
        sleep 0.25
    done
    return 1
}

postgres_up() {
    if postgres_ready; then say postgres ok "$DATABASE_URL"; return 0; fi
    if is_local "$DATABASE_URL" && command -v pg_ctlcluster >/dev/null && [ -d /etc/postgresql ]; then
        pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n 1)" main start >/dev/null 2>&1 || true
        if wait_for postgres postgres_ready 30; then say postgres ok "$DATABASE_URL (started)"; return 0; fi
    fi
    say postgres FAIL "$DATABASE_URL does not answer: start PostgreSQL or set DATABASE_URL to a running server"
    return 1
}

redis_up() {
    if redis_ready; then say redis ok "$REDIS_URL"; return 0; fi
    if is_local "$REDIS_URL" && command -v redis-server >/dev/null; then
        mkdir -p /var/lib/redis /var/log/redis 2>/dev/null || true
        redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
            --dir /var/lib/redis --logfile /var/log/redis/ci.log >/dev/null 2>&1 || true
        if wait_for redis redis_ready 15; then say redis ok "$REDIS_URL (started)"; return 0; fi
    fi
    say redis FAIL "$REDIS_URL does not answer: start Redis or set REDIS_URL to a running server"
    return 1
}

tansu_installed() { [ -x "$tansu_bin" ] && "$tansu_bin" --version 2>/dev/null | grep -q "$TANSU_VERSION"; }

kafka_up() {
    if kafka_ready; then say kafka ok "$broker"; return 0; fi
    if ! is_local "$broker"; then
        say kafka FAIL "$broker does not answer a metadata request: start the broker or fix KAFKA_BROKERS"
        return 1
    fi
    mkdir -p "$state"
    if ! tansu_installed; then
        say kafka wait "installing tansu $TANSU_VERSION from crates.io (about 10 to 15 minutes, once per machine; log: $state/tansu-install.log)"
        if ! cargo install tansu --locked --version "$TANSU_VERSION" --features dynostore,postgres \
            >"$state/tansu-install.log" 2>&1; then
            tail -n 20 "$state/tansu-install.log" >&2
            say kafka FAIL "cargo install tansu failed (see $state/tansu-install.log): check crates.io access and disk space"
            return 1
        fi
    fi
    if [ -f "$state/tansu.pid" ] && kill -0 "$(cat "$state/tansu.pid")" 2>/dev/null; then
        kill "$(cat "$state/tansu.pid")" 2>/dev/null || true # alive but not answering: restart it
        sleep 1
    fi
    # setsid: the broker must outlive this script and the shell that ran it.
    setsid "$tansu_bin" broker \
        --listener-url "tcp://$broker" \
        --advertised-listener-url "tcp://$broker" \
        --storage-engine memory://tansu/ \
        >"$state/tansu.log" 2>&1 </dev/null &
    echo $! >"$state/tansu.pid"
    if wait_for kafka kafka_ready 30; then
        say kafka ok "$broker (tansu $TANSU_VERSION started, pid $(cat "$state/tansu.pid"), log $state/tansu.log)"
        return 0
    fi
    tail -n 20 "$state/tansu.log" >&2 || true
    say kafka FAIL "tansu did not answer on $broker within 30 s: see $state/tansu.log (is the port taken?)"
    return 1
}

status() {
    local rc=0
    if postgres_ready; then say postgres ok "$DATABASE_URL"; else say postgres down "$DATABASE_URL (run: scripts/services.sh up)"; rc=1; fi
    if redis_ready; then say redis ok "$REDIS_URL"; else say redis down "$REDIS_URL (run: scripts/services.sh up)"; rc=1; fi
    if kafka_ready; then say kafka ok "$broker"; else say kafka down "$broker (run: scripts/services.sh up)"; rc=1; fi
    return $rc
}

down() {
    if [ -f "$state/tansu.pid" ] && kill -0 "$(cat "$state/tansu.pid")" 2>/dev/null; then
        kill "$(cat "$state/tansu.pid")"
        rm -f "$state/tansu.pid"
        say kafka down "stopped the broker this script started"
    else
        say kafka down "no broker started by this script is running"
    fi
}

case "${1:-up}" in
    up)
        shift || true
        wanted=("$@")
        [ ${#wanted[@]} -eq 0 ] && wanted=(postgres redis kafka)
        rc=0
        for service in "${wanted[@]}"; do
            case "$service" in
                postgres) postgres_up || rc=1 ;;
                redis) redis_up || rc=1 ;;
                kafka) kafka_up || rc=1 ;;
                *) echo "unknown service $service (postgres, redis, kafka)" >&2; rc=2 ;;
            esac
        done
        exit $rc
        ;;
    status) status ;;
    down) down ;;
    *) echo "usage: $0 up [postgres] [redis] [kafka] | status | down" >&2; exit 2 ;;
esac
