#!/usr/bin/env bash
# The Durable Functions phone-verification lab's HTTP sequence, as curl commands, against this
# service: start E4_SmsPhoneVerification, read the code, raise SmsChallengeResponse with it (a JSON
# number, as the lab sends it), then poll the status URL until the instance is decided.
#
#   scripts/durable-lab.sh [PHONE]          (default +14155550100)
#
# BASE      the service (default http://127.0.0.1:8080)
# KEY       an API key, sent as Functions' ?code=; unset when authentication is off
# SMS_LOG   a file the console sender's "SMS to ..." lines go to (`make run`'s output): the code
#           is read from the first new line for PHONE
# TWILIO    the fake Twilio's URL (python -m tests.support.twilio): the code is read from its
#           GET /_test/messages
# Neither: the script asks for the code. It exits 0 when the output is true, 1 otherwise.
set -euo pipefail

PHONE="${1:-+14155550100}"
BASE="${BASE:-http://127.0.0.1:8080}"
STARTER="$BASE/api/orchestrators/E4_SmsPhoneVerification${KEY:+?code=$KEY}"

show() { printf '+ %s\n' "$*" >&2; }
field() { sed -n "s/.*\"$1\":\"\\([^\"]*\\)\".*/\\1/p"; }
sms_lines() { grep -F "SMS to $PHONE:" "$SMS_LOG" 2>/dev/null || true; }

# The code: the last run of 4 to 10 digits in the message after the number.
code_in() { sed 's/^.*SMS to [^:]*: //' | grep -oE '[0-9]+' | awk 'length >= 4 && length <= 10' | tail -n 1; }

read_code() {
    if [[ -n "${SMS_LOG:-}" ]]; then
        for _ in $(seq 100); do
            line="$(sms_lines | sed -n "$((seen + 1))p")"
            [[ -n "$line" ]] && { code_in <<<"$line"; return; }
            sleep 0.1
        done
        echo "no SMS to $PHONE in $SMS_LOG" >&2; exit 2
    elif [[ -n "${TWILIO:-}" ]]; then
        for _ in $(seq 100); do
            found="$(curl -s "$TWILIO/_test/messages?to=${PHONE/+/%2B}" | grep -oE '"code": ?"[0-9]+"' | tail -n 1 | grep -oE '[0-9]+' || true)"
            [[ -n "$found" ]] && { echo "$found"; return; }
            sleep 0.1
        done
        echo "no SMS to $PHONE at $TWILIO" >&2; exit 2
    else
        read -rp "The code sent to $PHONE: " typed
        echo "$typed"
    fi
}

seen=0
[[ -n "${SMS_LOG:-}" ]] && seen="$(sms_lines | wc -l)"

# 1. Start: the phone number as a JSON string.
show curl -si -X POST "$STARTER" -H "Content-Type: application/json" -d "\"$PHONE\""
started="$(curl -si -X POST "$STARTER" -H "Content-Type: application/json" -d "\"$PHONE\"")"
printf '%s\n\n' "$started"
status_uri="$(field statusQueryGetUri <<<"$started")"
event_uri="$(field sendEventPostUri <<<"$started")"
[[ -n "$status_uri" && -n "$event_uri" ]] || { echo "the start was refused" >&2; exit 2; }

# 2. The code from the SMS; sent as the lab sends it, a number, which loses leading zeros.
code="$(read_code)"
[[ -n "$code" ]] || exit 2
number="$((10#$code))"
echo "code $code, sent as $number" >&2

# 3. Answer: raise SmsChallengeResponse; 202, never the verdict.
raise_uri="${event_uri/\{eventName\}/SmsChallengeResponse}"
show curl -si -X POST "$raise_uri" -H "Content-Type: application/json" -d "$number"
curl -si -X POST "$raise_uri" -H "Content-Type: application/json" -d "$number"
printf '\n\n'

# 4. Poll the status until it is no longer 202 (Running).
show curl -si "$status_uri"
for _ in $(seq 100); do
    answer="$(curl -si "$status_uri")"
    head -n 1 <<<"$answer" | grep -q " 202 " || break
    sleep 0.2
done
printf '%s\n' "$answer"
grep -q '"output":true' <<<"$answer"
