#!/usr/bin/env bash
# Queue throughput (issue 11): tasks claimed and completed per second by WORKERS `fluxd worker`
# processes on PostgreSQL, each with its own data directory (as on its own machine), sharing one
# database and one blob directory, on the tiny model at 256², 1 step; beside, in the same run on
# the same machine, the same tasks on PostgreSQL with one worker process and on SQLite with
# `fluxd serve`'s own worker. The tasks are submitted to an API node (`serve --no-worker`) once
# every worker is ready; the rate is tasks / (last completion - first start), read from the
# tasks' own start_time and end_time in the database.
#
# Usage: scripts/queue-bench.sh [--json FILE]
# Env: TASKS (200 per round), WORKERS (8).
#
# Each worker's engine spreads its work over every core, so on a machine with fewer cores than
# workers the figure is the CPU's, shared: the queue's own cost shows as the gap between one
# worker on SQLite and one or WORKERS workers on PostgreSQL.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

json_out=
while [ $# -gt 0 ]; do
  case "$1" in
    --json) json_out=$(realpath -m "$2"); shift 2 ;;
    -h|--help) sed -n 2,15p "$0"; exit 0 ;;
    *) echo "unknown argument $1 (usage: scripts/queue-bench.sh [--json FILE])" >&2; exit 2 ;;
  esac
done
TASKS=${TASKS:-200}; WORKERS=${WORKERS:-8}

source scripts/load/common.sh
build_release
results=$work/results.jsonl

# Submits $TASKS tasks to the API at $1 with key $2 over one keep-alive connection.
submit_all() {
  python3 - "$1" "$2" "$TASKS" <<'EOF'
import http.client, json, sys, urllib.parse
base, key, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
conn = http.client.HTTPConnection(urllib.parse.urlsplit(base).netloc)
for n in range(count):
    body = json.dumps({"prompt": f"a red fox in the snow, take {n}", "seed": n, "width": 256,
                       "height": 256, "steps": 1, "output_format": "jpeg"})
    conn.request("POST", "/v1/flux-dev", body, {"x-key": key, "content-type": "application/json"})
    reply = conn.getresponse()
    answer = reply.read()
    if reply.status != 200:
        sys.exit(f"submit {n}: {reply.status} {answer.decode()}")
EOF
}

# Runs SQL $2 against the store $1 (a postgres:// URL or a SQLite file); prints rows as
# `a|b|...` lines.
query() {
  case "$1" in
    postgres://*) psql "$1" -Atqc "$2" ;;
    *) python3 -c 'import sqlite3, sys
for row in sqlite3.connect(sys.argv[1]).execute(sys.argv[2]):
    print("|".join(str(v) for v in row))' "$1" "$2" ;;
  esac
}

# Waits until the store $1 holds $TASKS finished tasks, then records round $2's figures.
finish_round() {
  local store=$1 name=$2 i finished=0
  for i in $(seq 36000); do
    finished=$(query "$store" "SELECT count(*) FROM tasks WHERE status <> 'Pending'")
    [ "$finished" -ge "$TASKS" ] && break
    sleep 0.1
  done
  [ "$finished" -ge "$TASKS" ] || { echo "$name: only $finished of $TASKS tasks finished" >&2; exit 1; }
  query "$store" "SELECT count(*) FILTER (WHERE status = 'Ready'), min(start_time),
      max(end_time), sum(end_time - start_time) FROM tasks" \
    | python3 -c 'import json, sys
ready, first, last, busy = sys.stdin.read().strip().split("|")
name, workers, tasks = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
span = float(last) - float(first)
print(json.dumps({"round": name, "workers": workers, "tasks": tasks, "ready": int(ready),
                  "seconds": span, "tasks_per_s": tasks / span,
                  "mean_task_s": float(busy) / tasks}))' "$name" "$3" "$TASKS" \
    | tee -a "$results" >&2
}

# One key of unlimited active tasks in the store of `fluxd ARGS`; printed.
make_key() {
  "$fluxd" keys create --tenant bench --max-active-tasks 1000000000 "$@" 2>/dev/null | tail -n1
}

echo "queue: $TASKS tasks a round, tiny model 256², 1 step; $(nproc) cores" >&2

# SQLite: one process, its own worker.
key=$(make_key --data-dir "$work/sqlite")
start sqlite "$fluxd" serve --data-dir "$work/sqlite" --listen 127.0.0.1:0 \
  --max-active-tasks 1000000000
wait_ready "$base"
submit_all "$base" "$key"
finish_round "$work/sqlite/fluxd.sqlite" sqlite 1
stop_last

# PostgreSQL: an API node and $1 worker processes on a fresh database and shared blobs.
postgres_round() {
  local workers=$1 i
  fresh_postgres fluxd_queue
  local blobs=file://$work/pg-blobs-$workers
  key=$(make_key --data-dir "$work/pg-api-$workers" --database "$pg_url")
  start "api-$workers" "$fluxd" serve --no-worker --data-dir "$work/pg-api-$workers" \
    --database "$pg_url" --blobs "$blobs" --listen 127.0.0.1:0 --max-active-tasks 1000000000
  local api=$base worker_bases=()
  for i in $(seq "$workers"); do
    start "worker-$workers-$i" "$fluxd" worker --data-dir "$work/pg-worker-$i" \
      --database "$pg_url" --blobs "$blobs" --public-url "$api" --listen 127.0.0.1:0
    worker_bases+=("$base")
  done
  for i in "${worker_bases[@]}"; do
    wait_ready "$i"
  done
  submit_all "$api" "$key"
  finish_round "$pg_url" "postgres-$workers" "$workers"
  # Who did the work: tasks each worker finished.
  for i in "${worker_bases[@]}"; do
    curl -sf "$i/metrics" | sed -n 's/^fluxd_tasks_finished_total{status="Ready"} //p'
  done | tr '\n' ' ' | sed 's/^/  tasks per worker: /; s/$/\n/' >&2
  for i in $(seq $((workers + 1))); do
    stop_last
  done
}
postgres_round 1
postgres_round "$WORKERS"

python3 - "$results" "$json_out" <<'EOF'
import json, sys
rounds = [json.loads(line) for line in open(sys.argv[1])]
base = rounds[0]["tasks_per_s"]
print(f"{'':16}{'workers':>8}{'tasks':>7}{'seconds':>9}{'tasks/s':>9}{'per task s':>11}"
      f"{'vs sqlite':>10}")
for r in rounds:
    print(f"{r['round']:16}{r['workers']:8}{r['tasks']:7}{r['seconds']:9.1f}"
          f"{r['tasks_per_s']:9.2f}{r['mean_task_s']:11.2f}{r['tasks_per_s'] / base:10.0%}")
if sys.argv[2]:
    json.dump(rounds, open(sys.argv[2], "w"), indent=2)
EOF
