#!/usr/bin/env bash
# Submit and poll throughput and latency of `fluxd serve` on loopback, beside a bare axum handler
# (crates/fluxd-server/examples/bare_axum.rs) measured in the same run with the same load, and the
# ratios fluxd/bare. Goals (issue 4): durable submit >= 25 % of bare, get_result >= 50 %, p99 < 10 ms.
#
# Usage: scripts/load.sh [--postgres] [--json FILE]
# --postgres: also the same API node on PostgreSQL (a fresh database on the server of
# scripts/services/postgres.sh, started if need be, or of $FLUXD_TEST_POSTGRES_URL), in the same
# run, against the same bare handler; issue 11 sets it the same goals.
# Env: CONNECTIONS (64), DURATION (10, seconds), WARMUP (2, seconds), THREADS (wrk threads, 2),
#      RATE (1000: requests/s offered in the latency rounds, below saturation),
#      KEYS (256 API keys, one tenant, taken in turn by the requests),
#      KEY_LIMIT (unfinished tasks each key may have, 10^9; KEYS × KEY_LIMIT must exceed the
#      submits of a round, or they turn into 429s),
#      WORKER_ROUND (1: also measure with the worker generating, to show the API never waits on
#      the model; 0 skips it),
#      SERVE_ARGS (extra `fluxd serve` arguments, e.g. "--auth-cache-ttl 0s --task-cache-ttl 0s
#      --finetune-cache-ttl 0s" to measure without the read caches).
#
# The load tool is wrk (Debian package, installed with apt-get when missing): it installs in
# seconds where `cargo install oha` compiles a whole HTTP stack for minutes, and its C event loop
# takes less of the CPU that client and server share on a small machine.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

json_out=
postgres=0
while [ $# -gt 0 ]; do
  case "$1" in
    --json) json_out=$(realpath -m "$2"); shift 2 ;;
    --postgres) postgres=1; shift ;;
    -h|--help) sed -n 2,21p "$0"; exit 0 ;;
    *) echo "unknown argument $1 (usage: scripts/load.sh [--postgres] [--json FILE])" >&2
       exit 2 ;;
  esac
done
CONNECTIONS=${CONNECTIONS:-64}; DURATION=${DURATION:-10}; WARMUP=${WARMUP:-2}
THREADS=${THREADS:-2}; RATE=${RATE:-1000}; KEYS=${KEYS:-256}; WORKER_ROUND=${WORKER_ROUND:-1}
KEY_LIMIT=${KEY_LIMIT:-1000000000}
read -r -a serve_args <<<"${SERVE_ARGS:-}"

if ! command -v wrk >/dev/null; then
  echo "installing wrk (apt-get)" >&2
  sudo=; [ "$(id -u)" -eq 0 ] || sudo=sudo
  $sudo apt-get update -qq >/dev/null
  $sudo apt-get install -y -qq wrk >/dev/null
fi

source scripts/load/common.sh
build_release
bare=$root/target/release/examples/bare_axum

# A fresh data directory ($1) with $KEYS keys of unlimited active tasks (listed in $1.keys, the
# first in $key) and a fine-tune `load`, in the data directory's SQLite store or in the database
# $2 if given. Many keys as in service: with one key, each submit's check of that key's
# unfinished tasks would count every task queued so far in the run.
setup_data() {
  local data=$1 i store=(--data-dir "$1")
  [ -n "${2:-}" ] && store+=(--database "$2")
  for i in $(seq "$KEYS"); do
    "$fluxd" keys create --tenant load --max-active-tasks "$KEY_LIMIT" "${store[@]}" \
      2>/dev/null | tail -n1
  done >"$data.keys"
  key=$(head -n1 "$data.keys")
  keys_file=$data.keys
  "$root/target/release/examples/write_random_loras" "$work/loras" >/dev/null
  "$fluxd" finetunes import --tenant load --id load "$work/loras/kohya.safetensors" \
    "${store[@]}" >/dev/null 2>&1
}

# The submit body: the smallest image and one step, so that the worker round's model work is
# short and the queue keeps moving.
body=$work/body.json
printf '%s' '{"finetune_id":"load","prompt":"a red fox in the snow","seed":42,"width":256,"height":256,"steps":1,"output_format":"jpeg"}' >"$body"

# Runs wrk on $1$2 ($3: GET or POST) with the keys of $keys_file after a warm-up, flat out
# (closed loop: throughput) and then at about $RATE req/s (latency below saturation); the results
# are $work/$4.sat.json and $work/$4.rate.json.
measure() {
  local url=$1$2 method=$3 name=$4 post_body= pause
  [ "$method" = POST ] && post_body=$body
  pause=$((CONNECTIONS * 1000 / RATE))
  export LOAD_METHOD=$method LOAD_BODY=$post_body LOAD_KEYS=$keys_file
  LOAD_OUT= LOAD_DELAY_MS=0 \
    wrk -t"$THREADS" -c"$CONNECTIONS" -d"${WARMUP}s" -s scripts/load/wrk.lua "$url" >/dev/null
  LOAD_OUT=$work/$name.sat.json LOAD_DELAY_MS=0 wrk -t"$THREADS" -c"$CONNECTIONS" \
    -d"${DURATION}s" --timeout 10s -s scripts/load/wrk.lua "$url" >/dev/null
  LOAD_OUT=$work/$name.rate.json LOAD_DELAY_MS=$pause wrk -t"$THREADS" -c"$CONNECTIONS" \
    -d"${DURATION}s" --timeout 10s -s scripts/load/wrk.lua "$url" >/dev/null
  echo "  $name: $(cat "$work/$name.sat.json")" >&2
  echo "  $name at $RATE/s: $(cat "$work/$name.rate.json")" >&2
}

# Submits one task and prints its id.
submit_one() {
  curl -sf -H "x-key: $key" -H 'content-type: application/json' --data-binary @"$body" \
    "$1/v1/flux-pro-finetuned" | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])'
}

echo "load: $CONNECTIONS connections, $KEYS keys, ${DURATION}s each after ${WARMUP}s warm-up," \
  "then at $RATE req/s; wrk -t$THREADS" >&2

# The bare server gets the same requests, keys included (it ignores them).
setup_data "$work/api"
start bare "$bare"
measure "$base" /v1/flux-pro-finetuned POST bare_submit
measure "$base" "/v1/get_result?id=$(cat /proc/sys/kernel/random/uuid)" GET bare_get
stop_last

# API node only: the model does not compete for the CPU. The polled task stays Pending.
start fluxd "$fluxd" serve --data-dir "$work/api" --listen 127.0.0.1:0 --no-worker \
  --max-active-tasks 1000000000 ${serve_args[@]+"${serve_args[@]}"}
id=$(submit_one "$base")
measure "$base" /v1/flux-pro-finetuned POST fluxd_submit
curl -sf "$base/metrics" | grep '^fluxd_store_\(commits\|writes\)_total ' >"$work/group_commit.txt" \
  || true
measure "$base" "/v1/get_result?id=$id" GET fluxd_get
stop_last

if [ "$postgres" = 1 ]; then
  # The same API node on PostgreSQL (a fresh database): what each of many nodes does.
  fresh_postgres fluxd_load
  setup_data "$work/pg" "$pg_url"
  start fluxd_pg "$fluxd" serve --data-dir "$work/pg" --database "$pg_url" \
    --listen 127.0.0.1:0 --no-worker --max-active-tasks 1000000000 \
    ${serve_args[@]+"${serve_args[@]}"}
  id=$(submit_one "$base")
  measure "$base" /v1/flux-pro-finetuned POST pg_submit
  measure "$base" "/v1/get_result?id=$id" GET pg_get
  stop_last
fi

if [ "$WORKER_ROUND" = 1 ]; then
  # The same node with its worker generating all along: one task is made Ready first and polled
  # (its answer carries a freshly signed URL); the submits queue up behind the model.
  setup_data "$work/worker"
  start fluxd_worker "$fluxd" serve --data-dir "$work/worker" --listen 127.0.0.1:0 \
    --max-active-tasks 1000000000 ${serve_args[@]+"${serve_args[@]}"}
  id=$(submit_one "$base")
  for _ in $(seq 600); do
    curl -sf -H "x-key: $key" "$base/v1/get_result?id=$id" | grep -q '"Ready"' && break
    sleep 0.1
  done
  measure "$base" /v1/flux-pro-finetuned POST worker_submit
  measure "$base" "/v1/get_result?id=$id" GET worker_get
  curl -sf "$base/metrics" | grep '^fluxd_tasks_finished_total' >"$work/worker_finished.txt" \
    || true
  stop_last
fi

python3 scripts/load/report.py "$work" "$CONNECTIONS" "$DURATION" "$RATE" "$json_out"
