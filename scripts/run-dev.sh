#!/usr/bin/env bash
# `make run`: the service for local development, with the embedded defaults (SQLite, console SMS),
# LocalStack SQS started natively unless an endpoint is configured, and a consumer beside the
# service printing every outcome the moment it is decided. Ctrl-C stops all of it.
# WEBHOOK=1 (`make run WEBHOOK=1`) also starts `python -m notifier webhook` on WEBHOOK_PORT (9000)
# and points a webhook endpoint named "dev" at it, with a secret made for the run: both channels.
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

if [[ -n "${WEBHOOK:-}" && "${WEBHOOK}" != 0 ]]; then
    webhook_port="${WEBHOOK_PORT:-9000}"
    secret="${VERIFY_WEBHOOK_SECRETS:-whsec_$("$BIN/python" -c 'import base64, os; print(base64.b64encode(os.urandom(32)).decode())')}"
    # The receiver reads VERIFY_WEBHOOK_SECRETS; the service the endpoint's own variable.
    export VERIFY_WEBHOOK_SECRETS="$secret" VERIFY_WEBHOOKS_DEV_SECRETS="$secret"
    export VERIFY_WEBHOOKS_ENDPOINTS="[{\"name\": \"dev\", \"url\": \"http://127.0.0.1:$webhook_port/\", \"allow_private\": true}]"
    echo "make run: webhooks to http://127.0.0.1:$webhook_port/ (python -m notifier webhook)" >&2
fi

cleanup() {
    [[ -n "${consumer:-}" ]] && kill "$consumer" 2>/dev/null || true
    [[ -n "${receiver:-}" ]] && kill "$receiver" 2>/dev/null || true
    [[ -n "$started_localstack" ]] && scripts/localstack.sh stop || true
}
trap cleanup EXIT

"$BIN/python" -m notifier --create &
consumer=$!
if [[ -n "${webhook_port:-}" ]]; then
    "$BIN/python" -m notifier webhook --port "$webhook_port" &
    receiver=$!
fi
"$BIN/python" -m service
