#!/usr/bin/env bash
# A private PostgreSQL server for the tests: Debian's `postgresql` package (installed if missing),
# its own `initdb` cluster in a directory of ours, run as an unprivileged user, on a free loopback
# port, with a password. Idempotent: a second `start` reuses the running server.
#
#   scripts/services/postgres.sh start [DIR]   # prints the URL (postgres://fluxd:…@127.0.0.1:PORT/fluxd_test)
#   scripts/services/postgres.sh url [DIR]     # the URL of the running server (exit 1 if none)
#   scripts/services/postgres.sh status [DIR]  # exit 0 if it runs
#   scripts/services/postgres.sh stop [DIR]
#
# DIR defaults to $FLUXD_POSTGRES_DIR, else target/postgres in this checkout (or, as root, when
# the postgres user cannot reach the checkout, a directory under /tmp named for it). Logs go to
# DIR/server.log; everything but the URL goes to stderr. FLUXD_POSTGRES_HOST (default 127.0.0.1)
# is the address a new cluster listens on; another than loopback also lets in password logins
# from its subnet (the other hosts of scripts/netns-cluster.sh).
set -euo pipefail

repo="$(cd "$(dirname "$0")/../.." && pwd)"
action="${1:-start}"
database=fluxd_test
superuser=fluxd
host="${FLUXD_POSTGRES_HOST:-127.0.0.1}"

say() { echo "postgres.sh: $*" >&2; }

# The newest installed server's programs (Debian keeps them out of PATH).
bindir() {
    local found
    found="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1)"
    [[ -n "$found" && -x "$found/initdb" ]] && echo "$found"
}

install_server() {
    say "installing Debian's postgresql package"
    local sudo=()
    if [[ $(id -u) -ne 0 ]]; then
        command -v sudo >/dev/null || { say "not root and no sudo: install postgresql yourself"; exit 1; }
        sudo=(sudo -n)
    fi
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
    # (The package's own cluster is not used.)
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        postgresql >&2
}

# The server must not run as root: as root, run it as the package's `postgres` user.
as_server_user() {
    if [[ $(id -u) -eq 0 ]]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

# Whether the server user can write `dir` (as root, a checkout under /root is out of its reach).
reachable() {
    as_server_user test -w "$1" 2>/dev/null
}

# The cluster's directory: the one given, else target/postgres, unless (as root) the server's
# user cannot reach the checkout (under /root, say): then one under /tmp named for the checkout.
cluster_dir() {
    if [[ -n "${1:-}" ]]; then
        echo "$1"
    elif [[ -n "${FLUXD_POSTGRES_DIR:-}" ]]; then
        echo "$FLUXD_POSTGRES_DIR"
    else
        mkdir -p "$repo/target"
        if [[ $(id -u) -ne 0 ]] || ! id postgres >/dev/null 2>&1 \
            || runuser -u postgres -- test -x "$repo/target" 2>/dev/null; then
            echo "$repo/target/postgres"
        else
            echo "/tmp/fluxd-postgres-$(echo "$repo" | sha256sum | cut -c1-12)"
        fi
    fi
}

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

port_taken() {
    python3 -c 'import socket, sys
s = socket.socket()
try:
    s.bind(("127.0.0.1", int(sys.argv[1])))
except OSError:
    sys.exit(0)
sys.exit(1)' "$1"
}

running() {
    local bin
    bin="$(bindir)" || return 1
    [[ -f "$dir/data/PG_VERSION" ]] && as_server_user "$bin/pg_ctl" -D "$dir/data" status >/dev/null 2>&1
}

url() {
    echo "postgres://$superuser:$(cat "$dir/password")@$host:$(cat "$dir/port")/$database"
}

init_cluster() {
    local bin="$1"
    mkdir -p "$dir"
    if [[ $(id -u) -eq 0 ]]; then
        chown postgres: "$dir"
        if ! reachable "$dir"; then
            say "the postgres user cannot reach $dir; give a directory it can (FLUXD_POSTGRES_DIR)"
            exit 1
        fi
    fi
    python3 -c 'import secrets; print(secrets.token_hex(16))' >"$dir/password"
    chmod 600 "$dir/password"
    [[ $(id -u) -eq 0 ]] && chown postgres: "$dir/password"
    free_port >"$dir/port"
    say "initdb in $dir/data"
    as_server_user "$bin/initdb" -D "$dir/data" -U "$superuser" --pwfile="$dir/password" \
        --auth=scram-sha-256 --encoding=UTF8 --no-locale >"$dir/initdb.log" 2>&1 || {
        cat "$dir/initdb.log" >&2
        exit 1
    }
    # Loopback TCP only (no Unix socket directory to create or share), room for parallel tests.
    as_server_user tee -a "$dir/data/postgresql.conf" >/dev/null <<EOF

# fluxd tests (scripts/services/postgres.sh)
listen_addresses = '$host'
unix_socket_directories = ''
max_connections = 300
EOF
    if [[ $host != 127.0.0.1 ]]; then
        echo "host all all samenet scram-sha-256" | as_server_user tee -a "$dir/data/pg_hba.conf" >/dev/null
    fi
}

start() {
    local bin
    bin="$(bindir)" || { install_server; bin="$(bindir)"; } || { say "no PostgreSQL server programs found"; exit 1; }
    if running; then
        say "reusing the server in $dir"
        url
        return
    fi
    [[ -f "$dir/data/PG_VERSION" ]] || init_cluster "$bin"
    local port
    port="$(cat "$dir/port")"
    if port_taken "$port"; then
        port="$(free_port)"
        echo "$port" >"$dir/port"
    fi
    # The last setting in the file wins.
    echo "port = $port" | as_server_user tee -a "$dir/data/postgresql.conf" >/dev/null
    say "starting PostgreSQL ($("$bin/postgres" --version)) on $host:$port"
    as_server_user "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 start >&2 || {
        tail -n 30 "$dir/server.log" >&2 || true
        exit 1
    }
    if ! PGPASSWORD="$(cat "$dir/password")" "$bin/psql" -h "$host" -p "$port" -U "$superuser" \
        -d postgres -Atqc "SELECT 1 FROM pg_database WHERE datname = '$database'" | grep -q 1; then
        PGPASSWORD="$(cat "$dir/password")" "$bin/createdb" -h "$host" -p "$port" \
            -U "$superuser" "$database"
    fi
    url
}

stop() {
    local bin
    if running; then
        bin="$(bindir)"
        as_server_user "$bin/pg_ctl" -D "$dir/data" -m fast -w stop >&2
    fi
}

dir="$(cluster_dir "${2:-}")"

case "$action" in
    start) start ;;
    stop) stop ;;
    status) running ;;
    url) running && url ;;
    *)
        say "unknown action $action (start, stop, status, url)"
        exit 2
        ;;
esac
