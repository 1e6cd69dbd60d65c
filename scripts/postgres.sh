#!/usr/bin/env bash
# PostgreSQL 15 run natively, for machines without Docker: a server of one's own for local use.
#
#   scripts/postgres.sh start DIR PORT   initialise DIR if empty, start on 127.0.0.1:PORT (socket in DIR)
#   scripts/postgres.sh stop DIR         stop the server of DIR (fast: sessions are disconnected)
#   scripts/postgres.sh url PORT         print the URL of its superuser, postgres
#
# Trust authentication: anyone on this machine connects as anyone. Local development only.
# The server's log is DIR/server.log. initdb refuses to run as root, so as root DIR belongs to the
# user postgres and the server runs as it (DIR's parents must let that user through).
set -euo pipefail

#: The user the server runs as when this is run as root.
SERVER_USER=postgres
START_SECONDS=60
# A Unix socket's path (DIR/.s.PGSQL.PORT) has at most 107 bytes.
SOCKET_PATH_MAX=107

die() {
    echo "postgres.sh: $*" >&2
    exit 1
}

# `pg_config --bindir`'s, else Debian's newest: as tests/support/postgres.py finds them.
bindir() {
    local candidate candidates=()
    if command -v pg_config >/dev/null; then
        candidates+=("$(pg_config --bindir)")
    fi
    # Debian's pg_config may come from libpq-dev and name /usr/bin, where no initdb is.
    while IFS= read -r candidate; do
        candidates+=("$candidate")
    done < <(printf '%s\n' /usr/lib/postgresql/*/bin | sort -t/ -k5,5nr)
    for candidate in "${candidates[@]}"; do
        if [[ -x "$candidate/initdb" && -x "$candidate/pg_ctl" ]]; then
            echo "$candidate"
            return 0
        fi
    done
    return 1
}

require_bindir() {
    BIN="$(bindir)" || die "PostgreSQL's server (initdb, pg_ctl) is not installed: run" \
        "\`apt-get install postgresql-15\` (Debian), or set VERIFY_DATABASE_URL to a running" \
        "server's URL (postgresql://user@host:port/database)."
}

# pg_ctl and initdb as the server's user; from /, where that user surely may be.
as_server() {
    if ((EUID == 0)); then
        (cd / && runuser -u "$SERVER_USER" -- "$@")
    else
        "$@"
    fi
}

data_dir() {
    [[ -n "$1" ]] || die "DIR is empty"
    # Absolute: the server runs from /, and the socket path is given to it.
    realpath -m -- "$1"
}

check_port() {
    if ! [[ "$1" =~ ^[0-9]{1,5}$ ]] || ((10#$1 == 0 || 10#$1 > 65535)); then
        die "PORT must be a port number, not '$1'"
    fi
}

# The port the server of DIR listens on, if it runs: postmaster.pid's fourth line.
running_port() {
    local dir=$1
    as_server "$BIN/pg_ctl" -D "$dir" status >/dev/null 2>&1 || return 1
    sed -n 4p "$dir/postmaster.pid"
}

cmd_start() {
    local dir port running output
    dir="$(data_dir "$1")"
    check_port "$2"
    port=$((10#$2))
    require_bindir
    # pg_ctl hands the options to a shell: a quote in DIR would end the one around it.
    [[ "$dir" != *\'* ]] || die "DIR must not contain a single quote: $dir"
    ((${#dir} + ${#port} + 10 <= SOCKET_PATH_MAX)) ||
        die "DIR is too long for a Unix socket in it (at most $((SOCKET_PATH_MAX - 10 - ${#port})) bytes): $dir"
    if running="$(running_port "$dir")"; then
        [[ "$running" == "$port" ]] ||
            die "the server of $dir already runs on port $running, not $port; stop it first: $0 stop $dir"
        echo "PostgreSQL of $dir already runs on 127.0.0.1:$port; reusing it"
        return 0
    fi
    mkdir -p "$dir"
    if ((EUID == 0)); then
        # Also an existing cluster: one made by another user cannot be started as this one.
        [[ -f "$dir/PG_VERSION" ]] || chown "$SERVER_USER:" "$dir"
        [[ "$(stat -c %U "$dir")" == "$SERVER_USER" ]] ||
            die "$dir belongs to $(stat -c %U "$dir"), not $SERVER_USER, who runs the server as root"
        runuser -u "$SERVER_USER" -- test -x "$(dirname "$dir")" ||
            die "the user $SERVER_USER may not enter $(dirname "$dir"); choose a DIR elsewhere (/tmp, /var/tmp)"
    fi
    if [[ ! -f "$dir/PG_VERSION" ]]; then
        [[ -z "$(ls -A "$dir")" ]] || die "$dir is neither empty nor a PostgreSQL data directory"
        chmod 700 "$dir"
        # The superuser is postgres whoever runs this; trust: a loopback server for development.
        output="$(as_server "$BIN/initdb" -D "$dir" -A trust --no-sync -U postgres -E UTF8 --locale=C 2>&1)" ||
            die "initdb -D $dir failed:"$'\n'"$output"
        echo "PostgreSQL initialised in $dir"
    fi
    # -w: pg_ctl returns once the server takes connections, or fails if it exited (a taken port).
    if ! output="$(as_server "$BIN/pg_ctl" -D "$dir" -l "$dir/server.log" -w -t "$START_SECONDS" \
        -o "-p $port -k '$dir' -c listen_addresses=127.0.0.1" start 2>&1)"; then
        echo "postgres.sh: PostgreSQL of $dir did not start on 127.0.0.1:$port:" >&2
        echo "$output" >&2
        tail -n 20 "$dir/server.log" >&2 2>/dev/null || true
        exit 1
    fi
    echo "PostgreSQL $("$BIN/postgres" --version | awk '{print $3}') runs on 127.0.0.1:$port from $dir, log $dir/server.log"
}

cmd_stop() {
    local dir
    dir="$(data_dir "$1")"
    require_bindir
    if ! running_port "$dir" >/dev/null; then
        echo "PostgreSQL of $dir is not running"
        return 0
    fi
    as_server "$BIN/pg_ctl" -D "$dir" -m fast -w -t "$START_SECONDS" stop >/dev/null ||
        die "PostgreSQL of $dir did not stop within ${START_SECONDS}s; see $dir/server.log"
    echo "PostgreSQL of $dir stopped"
}

cmd_url() {
    check_port "$1"
    echo "postgresql://postgres@127.0.0.1:$((10#$1))/postgres"
}

usage() {
    die "usage: $0 start DIR PORT | stop DIR | url PORT"
}

case "${1:-}" in
    start) (($# == 3)) || usage; cmd_start "$2" "$3" ;;
    stop) (($# == 2)) || usage; cmd_stop "$2" ;;
    url) (($# == 2)) || usage; cmd_url "$2" ;;
    *) usage ;;
esac
