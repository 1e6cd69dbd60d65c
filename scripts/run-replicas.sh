#!/usr/bin/env bash
# `make run-replicas`: three replicas of the service sharing one PostgreSQL, on
# http://127.0.0.1:8081, 8082 and 8083, with LocalStack SQS and one consumer printing every
# outcome, as `make run` has them (console SMS, authentication off unless VERIFY_AUTH_API_KEYS).
#
# PostgreSQL is started natively by scripts/postgres.sh (data kept in .run/replicas/postgres, port
# 5433) unless VERIFY_DATABASE_URL names a server, which is then used as it is. The replicas share
# one code secret, .run/replicas/code.secret (created by the first to start): a code sent by one
# is checked by another. Each replica's output goes to .run/replicas/replica-N.log and to the
# terminal, prefixed by its port. A replica that exits is reported and the others keep running;
# when none is left, all stops. Ctrl-C stops all that this started.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
STATE=.run/replicas
PG_DIR="$STATE/postgres"
PG_PORT=5433
LS_PORT=4566
PORTS=(8081 8082 8083)
HEALTH_SECONDS=60
# A replica stops within server.shutdown_grace_seconds (5 s) and about 1 s more; then SIGKILL.
STOP_SECONDS=8

die() {
    echo "run-replicas: $*" >&2
    exit 1
}

port_free() {
    "$BIN/python" -c '
import socket, sys
with socket.socket() as sock:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", int(sys.argv[1])))
' "$1" 2>/dev/null
}

answers() {
    "$BIN/python" - "$1" <<'EOF'
import sys, urllib.request
try:
    with urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/healthz", timeout=2) as r:
        sys.exit(r.status != 200)
except Exception:
    sys.exit(1)
EOF
}

# Copies its input to the file LOG and to the terminal, each line prefixed by [TAG].
prefix() {
    local tag=$1 log=$2 line
    # A Ctrl-C reaches the whole process group: this must outlive its replica, to show its stop.
    trap '' INT
    while IFS= read -r line || [[ -n "$line" ]]; do
        printf '%s\n' "$line" >&3
        printf '[%s] %s\n' "$tag" "$line"
    done 3>"$log"
}

# The URL with its password, if any, replaced by ***, fit for the terminal.
masked() {
    sed -E 's#^([^:/]+://[^:/@]+):[^@]*@#\1:***@#' <<<"$1"
}

# The last line of a replica's log; of a JSON line, only its message.
last_message() {
    tail -n 1 "$1" | sed -E 's/^\{.*"message": "(.*)"\}$/\1/'
}

how_it_ended() {
    local status=$1
    if ((status > 128)); then
        echo "killed by SIG$(kill -l $((status - 128)))"
    else
        echo "exited with status $status"
    fi
}

# Bash reports a job killed by a signal ("line N: PID Killed  VERIFY_SERVER_PORT=...") on its
# stderr when it reaps it, mostly while a command runs: muted here, as report_exits says it better.
quietly_sleep() {
    { sleep "$1"; } 2>/dev/null
}

# Reports each replica (and the consumer) that exited since the last call, once.
report_exits() {
    local i status log how
    for i in "${!pids[@]}"; do
        [[ "${states[i]}" != exited ]] || continue
        kill -0 "${pids[i]}" 2>/dev/null && continue
        status=0
        wait "${pids[i]}" || status=$?
        log="$STATE/replica-$((i + 1)).log"
        if [[ "${states[i]}" == starting ]]; then
            sleep 0.1 # its last line, on its way to the log
            how="$(how_it_ended "$status") before it answered /healthz: $(last_message "$log")"
        else
            how="$(how_it_ended "$status")"
        fi
        states[i]=exited
        echo "run-replicas: replica $((i + 1)) (port ${PORTS[i]}, pid ${pids[i]}) $how" >&2
        if running; then
            echo "run-replicas: the other replicas keep running; its log is $log" >&2
        fi
    done
    if [[ -n "$consumer" ]] && ! kill -0 "$consumer" 2>/dev/null; then
        status=0
        wait "$consumer" || status=$?
        echo "run-replicas: the consumer (pid $consumer) $(how_it_ended "$status"); see $STATE/consumer.log" >&2
        consumer=""
    fi
}

# Marks each starting replica that answers /healthz as up; true while one still does not.
still_starting() {
    local i starting=1
    for i in "${!pids[@]}"; do
        [[ "${states[i]}" == starting ]] || continue
        if answers "${PORTS[i]}"; then
            states[i]=up
            if [[ -n "$announced" ]]; then
                echo "run-replicas: replica $((i + 1)) (port ${PORTS[i]}, pid ${pids[i]}) answers now" >&2
            fi
        else
            starting=0
        fi
    done
    return "$starting"
}

running() {
    local state
    for state in "${states[@]}"; do
        [[ "$state" == exited ]] || return 0
    done
    return 1
}

for port in "${PORTS[@]}"; do
    # A replica unable to listen exits, but the port's owner would answer /healthz in its place.
    port_free "$port" || die "port $port is taken; stop what listens there (another run-replicas?)"
done
mkdir -p "$STATE"

pids=() states=() consumer="" started_postgres="" started_localstack="" announced=""

# shellcheck disable=SC2329  # run by the EXIT trap
cleanup() {
    local status=$? i pid deadline live=()
    # See the stop through: a second Ctrl-C must not leave the rest running.
    trap '' INT TERM
    echo "run-replicas: stopping" >&2
    for i in "${!pids[@]}"; do
        if [[ "${states[i]}" != exited ]]; then
            live+=("${pids[i]}")
        fi
    done
    if [[ -n "$consumer" ]]; then
        live+=("$consumer")
    fi
    for pid in "${live[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    deadline=$((SECONDS + STOP_SECONDS))
    for pid in "${live[@]}"; do
        while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do
            sleep 0.2
        done
        if kill -0 "$pid" 2>/dev/null; then
            echo "run-replicas: pid $pid ignored SIGTERM for ${STOP_SECONDS}s; killing it" >&2
            kill -KILL "$pid" 2>/dev/null || true
        fi
    done
    wait 2>/dev/null || true
    if [[ -n "$started_localstack" ]]; then
        scripts/localstack.sh stop || true
    fi
    # After the replicas: they write until they are gone.
    if [[ -n "$started_postgres" ]]; then
        scripts/postgres.sh stop "$PG_DIR" || true
    fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

if [[ -z "${VERIFY_DATABASE_URL:-}" ]]; then
    # Set first: a Ctrl-C during the start must stop what did start.
    started_postgres=1
    scripts/postgres.sh start "$PG_DIR" "$PG_PORT"
    VERIFY_DATABASE_URL="$(scripts/postgres.sh url "$PG_PORT")"
fi
export VERIFY_DATABASE_URL
export VERIFY_DATABASE_SECRET_FILE="${VERIFY_DATABASE_SECRET_FILE:-$STATE/code.secret}"

endpoint="${VERIFY_QUEUE_ENDPOINT_URL:-${AWS_ENDPOINT_URL_SQS:-${AWS_ENDPOINT_URL:-}}}"
if [[ -z "$endpoint" ]]; then
    started_localstack=1
    scripts/localstack.sh start "$LS_PORT"
    scripts/localstack.sh wait "$LS_PORT"
    export VERIFY_QUEUE_ENDPOINT_URL="http://127.0.0.1:$LS_PORT"
    # LocalStack takes any credentials; these only keep botocore from looking further.
    export AWS_ACCESS_KEY_ID="${AWS_ACCESS_KEY_ID:-test}" AWS_SECRET_ACCESS_KEY="${AWS_SECRET_ACCESS_KEY:-test}"
fi
export VERIFY_QUEUE_CREATE="${VERIFY_QUEUE_CREATE:-true}"

if [[ -z "${VERIFY_AUTH_API_KEYS:-}" ]]; then
    export VERIFY_AUTH_ALLOW_UNAUTHENTICATED="${VERIFY_AUTH_ALLOW_UNAUTHENTICATED:-true}"
    echo "make run-replicas: NO API KEY SET - authentication is OFF for local development." \
         "Set VERIFY_AUTH_API_KEYS to require one." >&2
fi
# Piped, Python would hold its output (the console SMS among it) in a buffer.
export PYTHONUNBUFFERED=1

# $! of `cmd > >(prefix ...) &` is cmd's own pid: the one to report, and to kill.
"$BIN/python" -m notifier --create > >(prefix consumer "$STATE/consumer.log") 2>&1 &
consumer=$!
for i in "${!PORTS[@]}"; do
    VERIFY_SERVER_PORT="${PORTS[i]}" "$BIN/python" -m service \
        > >(prefix "${PORTS[i]}" "$STATE/replica-$((i + 1)).log") 2>&1 &
    pids[i]=$!
    states[i]=starting
done

deadline=$((SECONDS + HEALTH_SECONDS))
while still_starting && ((SECONDS < deadline)); do
    report_exits
    running || die "no replica started; see $STATE/replica-*.log"
    quietly_sleep 0.5
done
report_exits
running || die "no replica started; see $STATE/replica-*.log"

{
    echo
    echo "== ${#PORTS[@]} replicas of the service on $(masked "$VERIFY_DATABASE_URL") =="
    for i in "${!PORTS[@]}"; do
        case "${states[i]}" in
            up) state="pid ${pids[i]}" ;;
            starting) state="pid ${pids[i]}, not answering /healthz after ${HEALTH_SECONDS}s" ;;
            exited) state="exited; see $STATE/replica-$((i + 1)).log" ;;
        esac
        echo "   http://127.0.0.1:${PORTS[i]}   $state"
    done
    echo "Failover: start a verification on one, \`kill -9\` its pid; the verifications it held"
    echo "move to the others within the lease time: send the code to another. Ctrl-C stops all."
    echo
} >&2
announced=1

while running; do
    quietly_sleep 1
    report_exits
    still_starting || true
done
die "no replica is left running"
