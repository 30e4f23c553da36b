# Shared by scripts/load.sh and scripts/queue-bench.sh (sourced, with $root the checkout): the
# release build, servers started in the background and stopped on exit, and fresh databases on
# the PostgreSQL server of scripts/services/postgres.sh, dropped on exit.

# Builds fluxd and the load tools in release mode; sets $fluxd.
build_release() {
  echo "building (release)" >&2
  cargo build --quiet --release -p fluxd --bin fluxd -p fluxd-server --example bare_axum \
    -p fluxd-engine --example write_random_loras
  fluxd=$root/target/release/fluxd
}

work=$(mktemp -d)
pids=()
databases=()
cleanup() {
  local pid db
  for pid in "${pids[@]}"; do
    kill -TERM "$pid" 2>/dev/null || true
  done
  for pid in "${pids[@]}"; do
    wait "$pid" 2>/dev/null || true
  done
  for db in "${databases[@]}"; do
    psql "$pg_admin" -Atqc "DROP DATABASE IF EXISTS $db" >/dev/null 2>&1 || true
  done
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Starts a server in the background ($1: name, rest: command), waits for the `... listening on
# http://ADDR` line and sets $base. Its stdout and log are $work/NAME.out and $work/NAME.log.
start() {
  local name=$1; shift
  "$@" >"$work/$name.out" 2>"$work/$name.log" &
  pids+=("$!")
  local pid=$! i
  for i in $(seq 600); do
    base=$(sed -n 's/^.* listening on \(http:.*\)$/\1/p' "$work/$name.out")
    [ -n "$base" ] && return 0
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.05
  done
  echo "$name did not start:" >&2; cat "$work/$name.log" >&2; exit 1
}

# Waits until the server at $1 says it is ready (a worker: its model is loaded).
wait_ready() {
  local i
  for i in $(seq 1200); do
    curl -sf "$1/readyz" >/dev/null && return 0
    sleep 0.05
  done
  echo "$1 never became ready" >&2; exit 1
}

# Stops the server started last.
stop_last() {
  local pid=${pids[-1]}
  kill -TERM "$pid"; wait "$pid" || true
  unset 'pids[-1]'
}

# A fresh database ($1: its name's stem) on the PostgreSQL server of scripts/services/postgres.sh
# (started if it is not running; $FLUXD_TEST_POSTGRES_URL names another server), dropped on exit;
# sets $pg_url to its URL.
fresh_postgres() {
  if [ -z "${pg_admin:-}" ]; then
    pg_admin=${FLUXD_TEST_POSTGRES_URL:-$("$root/scripts/services/postgres.sh" start)}
  fi
  local db
  db="$1_$$_$(date +%s)"
  psql "$pg_admin" -Atqc "CREATE DATABASE $db" >/dev/null
  databases+=("$db")
  pg_url="${pg_admin%/*}/$db"
}
