#!/usr/bin/env bash
# LocalStack (SQS only) run natively from its own virtualenv, for machines without Docker.
#
#   scripts/localstack.sh install        create .venv-localstack (Python >= 3.12) once
#   scripts/localstack.sh start [PORT]   start it in the background (default port 4566)
#   scripts/localstack.sh wait [PORT]    block until SQS answers, at most 90 s
#   scripts/localstack.sh stop           stop the instance that `start` started
#
# LOCALSTACK_VENV and LOCALSTACK_STATE move the virtualenv and the state folder.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${LOCALSTACK_VENV:-$ROOT/.venv-localstack}"
STATE="${LOCALSTACK_STATE:-$ROOT/.tools/localstack}"
LOG="$STATE/localstack.log"
PID_FILE="$STATE/localstack.pid"
STAMP="$VENV/.installed"
# localstack-core 2026.3.0 breaks with cbor2 6, pyOpenSSL 25 and cryptography 45.
PACKAGES=("localstack-core[runtime]==2026.3.0" "cbor2<6" "pyopenssl<25" "cryptography<45" service_identity)
WAIT_SECONDS=90

die() {
    echo "localstack.sh: $*" >&2
    exit 1
}

# The environment is written once, in scripts/localstack.env; this adds what is per instance.
localstack_env() {
    local port=$1 caller_log="${LS_LOG:-}" key value
    while IFS='=' read -r key value; do
        [[ -z "$key" || "$key" == \#* ]] && continue
        export "$key=$value"
    done <"$ROOT/scripts/localstack.env"
    export GATEWAY_LISTEN="127.0.0.1:$port"
    export FILESYSTEM_ROOT="$STATE/filesystem"
    export LS_LOG="${caller_log:-$LS_LOG}"
}

find_python() {
    local candidate
    for candidate in python3.13 python3.12 "PYENV_VERSION=3.13.0 python3" "PYENV_VERSION=3.12.1 python3"; do
        # pyenv shims exist for versions that are not selected, so run each one to know.
        if env $candidate -c 'import sys; sys.exit(sys.version_info < (3, 12))' 2>/dev/null; then
            echo "$candidate"
            return 0
        fi
    done
    return 1
}

cmd_install() {
    local wanted="${PACKAGES[*]}"
    if [[ -x "$VENV/bin/python" && -f "$STAMP" && "$(cat "$STAMP")" == "$wanted" ]]; then
        echo "LocalStack is already installed in $VENV"
        return 0
    fi
    local python
    python="$(find_python)" || die "LocalStack needs Python >= 3.12; none of python3.13, python3.12 or pyenv's 3.13.0/3.12.1 runs."
    echo "Installing LocalStack into $VENV with $python"
    env $python -m venv "$VENV"
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "${PACKAGES[@]}"
    echo "$wanted" >"$STAMP"
}

healthy() {
    local port=$1
    [[ -x "$VENV/bin/python" ]] || return 1
    "$VENV/bin/python" - "$port" <<'EOF'
import json, sys, urllib.request
try:
    with urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/_localstack/health", timeout=2) as r:
        status = json.load(r)["services"].get("sqs")
except Exception:
    sys.exit(1)
sys.exit(status not in ("available", "running"))
EOF
}

port_free() {
    "$VENV/bin/python" -c '
import socket, sys
with socket.socket() as sock:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", int(sys.argv[1])))
' "$1" 2>/dev/null
}

running_pid() {
    [[ -f "$PID_FILE" ]] || return 1
    local pid
    pid="$(cat "$PID_FILE")"
    # A stale pid file may name a process that has nothing to do with LocalStack by now.
    if kill -0 "$pid" 2>/dev/null && grep -q localstack "/proc/$pid/cmdline" 2>/dev/null; then
        echo "$pid"
        return 0
    fi
    return 1
}

cmd_start() {
    local port=${1:-4566} pid
    if healthy "$port"; then
        echo "LocalStack already answers on port $port; reusing it"
        return 0
    fi
    if pid="$(running_pid)"; then
        echo "LocalStack is already starting (pid $pid); see $LOG"
        return 0
    fi
    [[ -x "$VENV/bin/python" ]] || die "$VENV is missing; run: $0 install"
    # LocalStack would start anyway, unable to listen, and never become healthy.
    port_free "$port" || die "port $port is taken by something that is not LocalStack"
    mkdir -p "$STATE"
    (
        localstack_env "$port"
        # Its own session, so a Ctrl-C meant for the caller (make, pytest) does not reach it.
        exec setsid "$VENV/bin/python" -m localstack.runtime.main >"$LOG" 2>&1 </dev/null
    ) &
    echo $! >"$PID_FILE"
    echo "LocalStack starting on 127.0.0.1:$port (pid $!), log $LOG"
}

cmd_wait() {
    local port=${1:-4566} deadline=$((SECONDS + WAIT_SECONDS))
    until healthy "$port"; do
        if ((SECONDS >= deadline)); then
            echo "LocalStack did not report SQS ready on port $port within ${WAIT_SECONDS}s" >&2
            [[ -f "$LOG" ]] && tail -n 40 "$LOG" >&2
            exit 1
        fi
        if [[ -f "$PID_FILE" ]] && ! running_pid >/dev/null || grep -qs CannotListenError "$LOG"; then
            echo "LocalStack exited, or could not listen, before it was ready" >&2
            [[ -f "$LOG" ]] && tail -n 40 "$LOG" >&2
            exit 1
        fi
        sleep 0.5
    done
    echo "LocalStack SQS is ready on http://127.0.0.1:$port"
}

cmd_stop() {
    local pid
    if ! pid="$(running_pid)"; then
        rm -f "$PID_FILE"
        echo "LocalStack is not running"
        return 0
    fi
    kill -TERM "$pid"
    for _ in $(seq 1 40); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.25
    done
    if kill -0 "$pid" 2>/dev/null; then
        echo "LocalStack (pid $pid) ignored SIGTERM for 10 s; killing it" >&2
        kill -KILL "$pid"
    fi
    rm -f "$PID_FILE"
    echo "LocalStack stopped"
}

case "${1:-}" in
    install) cmd_install ;;
    start) cmd_start "${2:-}" ;;
    wait) cmd_wait "${2:-}" ;;
    stop) cmd_stop ;;
    *) die "usage: $0 install | start [PORT] | wait [PORT] | stop" ;;
esac
