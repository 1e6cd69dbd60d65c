#!/usr/bin/env bash
# `make run`: the service for local development, with the embedded defaults (SQLite, console SMS),
# LocalStack SQS started natively unless an endpoint is configured, and a consumer beside the
# service printing every outcome the moment it is decided. Ctrl-C stops all of it.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
PORT=4566

endpoint="${VERIFY_QUEUE_ENDPOINT_URL:-${AWS_ENDPOINT_URL_SQS:-${AWS_ENDPOINT_URL:-}}}"
started_localstack=""
if [[ -z "$endpoint" ]]; then
    scripts/localstack.sh start "$PORT"
    scripts/localstack.sh wait "$PORT"
    started_localstack=1
    export VERIFY_QUEUE_ENDPOINT_URL="http://127.0.0.1:$PORT"
    # LocalStack takes any credentials; these only keep botocore from looking further.
    export AWS_ACCESS_KEY_ID="${AWS_ACCESS_KEY_ID:-test}" AWS_SECRET_ACCESS_KEY="${AWS_SECRET_ACCESS_KEY:-test}"
fi
export VERIFY_QUEUE_CREATE="${VERIFY_QUEUE_CREATE:-true}"

if [[ -z "${VERIFY_AUTH_API_KEYS:-}" ]]; then
    export VERIFY_AUTH_ALLOW_UNAUTHENTICATED="${VERIFY_AUTH_ALLOW_UNAUTHENTICATED:-true}"
    echo "make run: NO API KEY SET - authentication is OFF for local development." \
         "Set VERIFY_AUTH_API_KEYS to require one." >&2
fi

cleanup() {
    [[ -n "${consumer:-}" ]] && kill "$consumer" 2>/dev/null || true
    [[ -n "$started_localstack" ]] && scripts/localstack.sh stop || true
}
trap cleanup EXIT

"$BIN/python" -m notifier --create &
consumer=$!
"$BIN/python" -m service
