#!/usr/bin/env bash
# Durable submit throughput of two fluxd binaries on PostgreSQL, in interleaved rounds on one
# machine (with a bare axum round first and last), for before/after comparisons of the submit
# path on a machine whose load varies: rounds of one binary can differ by ±30 % on a shared
# 2-core machine, so compare the means of several alternations, not single rounds.
#
# Usage: scripts/load/submit-ab.sh BEFORE_BINARY AFTER_BINARY
# Each binary gets a fresh database of its own on the server of scripts/services/postgres.sh (or
# $FLUXD_TEST_POSTGRES_URL), with its own schema version, $KEYS keys and the fine-tune `load`;
# the request is scripts/load.sh's. Env: ROUNDS (4 alternations), DURATION (6 s each, after a
# 2 s warm-up), KEYS (256), CONNECTIONS (64).
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
[ $# -eq 2 ] || { sed -n 2,11p "$0"; exit 2; }
binaries=("$(realpath "$1")" "$(realpath "$2")")
ROUNDS=${ROUNDS:-4}; DURATION=${DURATION:-6}; KEYS=${KEYS:-256}; CONNECTIONS=${CONNECTIONS:-64}

source scripts/load/common.sh
# (load.sh's build, so that the two share one set of compiled dependencies.)
build_release
"$root/target/release/examples/write_random_loras" "$work/loras" >/dev/null
body=$work/body.json
printf '%s' '{"finetune_id":"load","prompt":"a red fox in the snow","seed":42,"width":256,"height":256,"steps":1,"output_format":"jpeg"}' >"$body"

urls=()
for side in 0 1; do
  fresh_postgres "fluxd_ab$side"
  urls+=("$pg_url")
  for _ in $(seq "$KEYS"); do
    "${binaries[$side]}" keys create --tenant load --max-active-tasks 1000000000 \
      --data-dir "$work/data$side" --database "$pg_url" 2>/dev/null | tail -n1
  done >"$work/keys$side"
  "${binaries[$side]}" finetunes import --tenant load --id load \
    "$work/loras/kohya.safetensors" --data-dir "$work/data$side" --database "$pg_url" \
    >/dev/null 2>&1
done

# One round: $1 its name, $2 the keys file, then the server's command.
round() {
  local name=$1 keys=$2; shift 2
  start "$name" "$@"
  export LOAD_METHOD=POST LOAD_BODY=$body LOAD_KEYS=$keys
  LOAD_OUT= LOAD_DELAY_MS=0 wrk -t2 -c"$CONNECTIONS" -d2s -s scripts/load/wrk.lua \
    "$base/v1/flux-pro-finetuned" >/dev/null
  LOAD_OUT=$work/sat.json LOAD_DELAY_MS=0 wrk -t2 -c"$CONNECTIONS" -d"${DURATION}s" \
    --timeout 10s -s scripts/load/wrk.lua "$base/v1/flux-pro-finetuned" >/dev/null
  python3 -c "import json, sys; d = json.load(open(sys.argv[1])); print(sys.argv[2], round(d['rps']))" \
    "$work/sat.json" "$name" | tee -a "$work/results" >&2
  stop_last
}

bare=$root/target/release/examples/bare_axum
round bare "$work/keys0" "$bare"
for _ in $(seq "$ROUNDS"); do
  for side in 0 1; do
    name=$([ "$side" = 0 ] && echo before || echo after)
    round "$name" "$work/keys$side" "${binaries[$side]}" serve --data-dir "$work/data$side" \
      --database "${urls[$side]}" --listen 127.0.0.1:0 --no-worker --max-active-tasks 1000000000
  done
done
round bare "$work/keys0" "$bare"
python3 - "$work/results" <<'PY'
import collections, sys
rounds = collections.defaultdict(list)
for line in open(sys.argv[1]):
    name, rps = line.split()
    rounds[name].append(int(rps))
bare = sum(rounds["bare"]) / len(rounds["bare"])
for name in ("bare", "before", "after"):
    v = rounds[name]
    mean = sum(v) / len(v)
    print(f"{name:7} {mean:8.0f}/s  {100 * mean / bare:5.1f} % of bare  rounds {v}")
PY
