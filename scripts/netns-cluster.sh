#!/usr/bin/env bash
# Scale-out across hosts: the run of crates/fluxd/tests/scale_out.rs, but each role on a host of
# its own, made with network namespaces on this machine (root needed). A database+S3 host
# (PostgreSQL from scripts/services/postgres.sh, SeaweedFS from scripts/services/s3.sh), two API
# hosts (`fluxd serve --no-worker`), two worker hosts (`fluxd worker`) and a client host (this
# script's requests and the webhook receiver), each with one veth on a bridge, on 10.231.0.0/24.
#
# The run: tasks go round-robin to both API hosts, two thirds with webhooks; worker A is
# `kill -9`ed mid-task and started again; worker B's host is partitioned mid-task by taking its
# link down on the bridge (`ip link set ... down`: its packets vanish, nothing is refused) for
# $PARTITION seconds, then brought back. Every task must end Ready exactly once (one completion
# in the worker logs; two runs for the killed task, one for the others, B keeping its task
# through the partition), be readable and its image downloadable through both API hosts, equal
# to the object in the bucket, and have its webhook delivered and verified at least once.
#
# Usage: sudo scripts/netns-cluster.sh
# Env: PARTITION (6, seconds), LEASE (15s: worker B's lease, longer than the partition),
#      DATABASE_TIMEOUT (2s: --database-timeout of every node), TASKS (12),
#      FLUXD_TEST_S3_PORT (18360). Builds fluxd in release mode first.
# Not a CI test: CI machines need not grant root or network namespaces.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

PARTITION=${PARTITION:-6}; LEASE=${LEASE:-15s}; DATABASE_TIMEOUT=${DATABASE_TIMEOUT:-2s}
TASKS=${TASKS:-12}; S3_PORT=${FLUXD_TEST_S3_PORT:-18360}
LONG='"steps":50,"width":512,"height":512'
SHORT='"steps":4'

say() { echo "netns-cluster: $*" >&2; }
fail() { say "FAILED: $*"; exit 1; }

[ "$(id -u)" -eq 0 ] || fail "needs root for network namespaces (sudo $0)"
command -v ip >/dev/null || fail "needs iproute2's ip"

prefix=fxc
net=10.231.0
hosts=(client db api0 api1 wa wb)
declare -A addr=([client]=$net.2 [db]=$net.10 [api0]=$net.20 [api1]=$net.21 [wa]=$net.30
  [wb]=$net.31)

on() { local host=$1; shift; ip netns exec "$prefix-$host" "$@"; }

# Scratch space the postgres user can reach (the server runs as it).
work=$(mktemp -d /tmp/fluxd-netns.XXXXXX)
chmod 755 "$work"
pids=()
cleanup() {
  local pid h
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  if ip netns list | grep -q "^$prefix-db\b"; then
    FLUXD_SERVICES_DIR=$work/services FLUXD_TEST_S3_HOST=${addr[db]} \
      FLUXD_TEST_S3_PORT=$S3_PORT on db scripts/services/s3.sh stop || true
    on db scripts/services/postgres.sh stop "$work/pg" 2>/dev/null || true
  fi
  for h in "${hosts[@]}" net; do ip netns del "$prefix-$h" 2>/dev/null || true; done
  if [ "${KEEP:-0}" = 1 ]; then say "kept $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- the hosts ------------------------------------------------------------------------------
for h in "${hosts[@]}" net; do
  ip netns del "$prefix-$h" 2>/dev/null || true
done
ip netns add "$prefix-net"
ip -n "$prefix-net" link add br0 type bridge
ip -n "$prefix-net" link set br0 up
for h in "${hosts[@]}"; do
  ip netns add "$prefix-$h"
  ip link add "$prefix-e-$h" type veth peer name "$prefix-v-$h"
  ip link set "$prefix-e-$h" netns "$prefix-$h"
  ip link set "$prefix-v-$h" netns "$prefix-net"
  ip -n "$prefix-$h" link set "$prefix-e-$h" name eth0
  ip -n "$prefix-$h" addr add "${addr[$h]}/24" dev eth0
  ip -n "$prefix-$h" link set eth0 up
  ip -n "$prefix-$h" link set lo up
  ip -n "$prefix-net" link set "$prefix-v-$h" master br0 up
done
say "hosts: $(for h in "${hosts[@]}"; do printf '%s=%s ' "$h" "${addr[$h]}"; done)"

# --- builds and installs (with the registries in reach) ---------------------------------------
say "building (release)"
cargo build --quiet --release -p fluxd --bin fluxd -p fluxd-engine --example write_random_loras
fluxd=$root/target/release/fluxd
FLUXD_SERVICES_DIR=$work/services scripts/services/s3.sh install
receiver_py=$root/target/netns-cluster/receiver-venv/bin/python
if [ ! -x "$receiver_py" ]; then
  python3 -m venv "$root/target/netns-cluster/receiver-venv"
  "$receiver_py" -m pip install --quiet --disable-pip-version-check standardwebhooks==1.1.0
fi

# --- the database+S3 host ---------------------------------------------------------------------
database=$(FLUXD_POSTGRES_HOST=${addr[db]} on db scripts/services/postgres.sh start "$work/pg")
eval "$(FLUXD_SERVICES_DIR=$work/services FLUXD_TEST_S3_HOST=${addr[db]} \
  FLUXD_TEST_S3_PORT=$S3_PORT on db scripts/services/s3.sh start)"
blobs=$FLUXD_TEST_S3_URL
export FLUXD_DATABASE_TIMEOUT=$DATABASE_TIMEOUT
say "database postgres://…@${addr[db]}, blobs $blobs at $AWS_ENDPOINT_URL"

# --- an operator's machine (the client host) makes the key and the fine-tune ------------------
key=$(on client "$fluxd" keys create --tenant acme --data-dir "$work/cli" --database "$database" \
  2>/dev/null | tail -n1)
"$root/target/release/examples/write_random_loras" "$work/loras" >/dev/null
on client "$fluxd" finetunes import --tenant acme --id my-finetune --data-dir "$work/cli" \
  --database "$database" --blobs "$blobs" "$work/loras/kohya.safetensors" >/dev/null 2>&1
# (`exec`, here and in `launch`: $! is then the server's own pid, which `kill -9` must hit.)
(RECEIVER_HOST=${addr[client]} exec ip netns exec "$prefix-client" "$receiver_py" \
  crates/fluxd/tests/webhook_receiver.py "$work/deliveries.jsonl" >"$work/receiver.out") &
pids+=("$!")
for _ in $(seq 100); do grep -q listening "$work/receiver.out" && break; sleep 0.1; done
hooks="http://${addr[client]}:$(awk '/listening/ {print $2}' "$work/receiver.out")"

webhook_options=(--webhook-allow-private --webhook-retry-base 1s --webhook-timeout 2s)

# Starts `fluxd ARGS...` on host $1, logging to $work/$2.log; the pid goes to pids and $last.
launch() {
  local host=$1 name=$2; shift 2
  (RUST_LOG=${RUST_LOG:-warn,fluxd_server::worker=info} exec ip netns exec "$prefix-$host" \
    "$fluxd" "$@" >"$work/$name.out" 2>"$work/$name.log") &
  last=$!
  pids+=("$last")
}

# Waits until http://$1/readyz answers from the client host.
wait_ready() {
  for _ in $(seq 1200); do
    on client curl -sf -o /dev/null "http://$1/readyz" && return 0
    sleep 0.1
  done
  fail "$1 never became ready"
}

worker() { # host name lease
  launch "$1" "$2" worker --data-dir "$work/$1" --database "$database" --blobs "$blobs" \
    --public-url "http://${addr[api0]}:8080" --task-lease "$3" --listen "${addr[$1]}:9000" \
    "${webhook_options[@]}"
}

# --- two API hosts ----------------------------------------------------------------------------
nodes=()
for i in 0 1; do
  h=api$i
  launch "$h" "$h" serve --no-worker --data-dir "$work/$h" --database "$database" \
    --blobs "$blobs" --listen "${addr[$h]}:8080" --public-url "http://${addr[$h]}:8080" \
    "${webhook_options[@]}"
  nodes+=("${addr[$h]}:8080")
done
for n in "${nodes[@]}"; do wait_ready "$n"; done

# Submits task $2 ($3: its size and steps) to API host $1 (0 or 1); prints its id.
submit() {
  local n=$2 body hook=
  [ $((n % 3)) != 2 ] && hook=$(python3 - "$hooks" "$n" <<'PY'
import base64, sys
hooks, n = sys.argv[1], int(sys.argv[2])
secret = f"s3cret-{n}" if n % 2 else "whsec_" + base64.b64encode(f"wh-key-{n}".encode()).decode()
print(f',"webhook_url":"{hooks}/hook/{n}","webhook_secret":"{secret}"')
PY
)
  body="{\"finetune_id\":\"my-finetune\",\"prompt\":\"a photo of TOK number $n\",\"seed\":$n,$3$hook}"
  on client curl -sf -H "x-key: $key" -H 'content-type: application/json' -d "$body" \
    "http://${nodes[$1]}/v1/flux-pro-finetuned" \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])'
}

result() { on client curl -sf -H "x-key: $key" "http://${nodes[$1]}/v1/get_result?id=$2"; }

# Waits until task $2 runs (progress > 0), asking API host $1.
wait_running() {
  for _ in $(seq 1200); do
    result "$1" "$2" | python3 -c 'import json,sys
b = json.load(sys.stdin)
assert b["status"] == "Pending", f"finished too early: {b}"
sys.exit(0 if (b.get("progress") or 0) > 0 else 1)' && return 0
    sleep 0.05
  done
  fail "task $2 never ran"
}

ids=()
# Worker A takes a long task and is killed mid-run.
worker wa wa-0 2s
a=$last
wait_ready "${addr[wa]}:9000"
ids+=("$(submit 0 0 "$LONG")")
wait_running 0 "${ids[0]}"
kill -9 "$a"
wait "$a" 2>/dev/null || true
say "worker A killed mid-task"

# Worker B runs a long task of its own and loses its link mid-run.
worker wb wb $LEASE
b=$last
wait_ready "${addr[wb]}:9000"
ids+=("$(submit 1 1 "$LONG")")
wait_running 1 "${ids[1]}"
ip -n "$prefix-net" link set "$prefix-v-wb" down
cut_at=$(date +%s.%N)
say "worker B's host partitioned (its link on the bridge down)"

# Meanwhile A comes back and the short tasks arrive, in turn at both API hosts.
worker wa wa-1 2s
for n in $(seq 2 $((TASKS - 1))); do ids+=("$(submit $((n % 2)) "$n" "$SHORT")"); done
sleep "$(python3 -c "print(max(0, $PARTITION - ($(date +%s.%N) - $cut_at)))")"
ip -n "$prefix-net" link set "$prefix-v-wb" up
partitioned=$(python3 -c "print(round($(date +%s.%N) - $cut_at, 1))")
say "worker B's host back after $partitioned s"
# (The short tasks' submits may stretch the partition on a busy machine.)
python3 -c "import sys; sys.exit(0 if $partitioned < ${LEASE%s} else 1)" \
  || fail "the partition ($partitioned s) outlasted B's lease ($LEASE): raise LEASE"

# --- the checks -------------------------------------------------------------------------------
for i in "${!ids[@]}"; do
  id=${ids[$i]}
  for _ in $(seq 3000); do
    status=$(result $((i % 2)) "$id" | python3 -c 'import json,sys; print(json.load(sys.stdin)["status"])')
    [ "$status" = Pending ] || break
    sleep 0.1
  done
  [ "$status" = Ready ] || fail "task $i ($id) ended $status"
  on client curl -sf --aws-sigv4 "aws:amz:$AWS_REGION:s3" \
    --user "$AWS_ACCESS_KEY_ID:$AWS_SECRET_ACCESS_KEY" \
    "$AWS_ENDPOINT_URL/${blobs#s3://}/samples/$id.jpeg" -o "$work/object-$i.jpeg" \
    || fail "task $i: no image in the bucket"
  for node in 0 1; do
    sample=$(result $node "$id" | python3 -c 'import json,sys; print(json.load(sys.stdin)["result"]["sample"])')
    case $sample in "http://${nodes[$node]}/"*) ;; *) fail "task $i: $sample is not API host $node's" ;; esac
    on client curl -sf "$sample" -o "$work/download-$i-$node.jpeg" \
      || fail "task $i: download through API host $node"
    cmp -s "$work/object-$i.jpeg" "$work/download-$i-$node.jpeg" \
      || fail "task $i: API host $node served other bytes than the bucket holds"
  done
done
say "${#ids[@]} tasks Ready, the same image through both API hosts and in the bucket"

# Exactly once: one completion per task in all the worker logs; attempts from the database.
for i in "${!ids[@]}"; do
  id=${ids[$i]}
  done_count=$(cat "$work"/w[ab]*.log | grep "task_id=$id" | grep -c "task ready" || true)
  [ "$done_count" = 1 ] || fail "task $i ($id) completed $done_count times"
  runs=$(on client psql "$database" -Atqc "SELECT attempts FROM tasks WHERE id = '$id'")
  want=1; [ "$i" = 0 ] && want=2
  [ "$runs" = "$want" ] || fail "task $i ($id) ran $runs times, not $want"
done
grep "task_id=${ids[1]}" "$work/wb.log" | grep -q "task ready" \
  || fail "worker B did not keep its task through the partition"
say "each task completed once; B kept its task through the partition"

# Every webhook arrives, verified, at least once.
hooked=()
for i in "${!ids[@]}"; do [ $((i % 3)) != 2 ] && hooked+=("${ids[$i]}"); done
for _ in $(seq 600); do
  python3 - "$work/deliveries.jsonl" "${hooked[@]}" <<'PY' && break
import json, sys
seen = [json.loads(l) for l in open(sys.argv[1])] if open(sys.argv[1]).read() else []
ok = {d.get("task_id") for d in seen if d.get("ok")}
sys.exit(0 if set(sys.argv[2:]) <= ok else 1)
PY
  sleep 0.1
done
python3 - "$work/deliveries.jsonl" "${hooked[@]}" <<'PY' || fail "webhooks"
import json, sys
seen = [json.loads(l) for l in open(sys.argv[1])]
ok = {d.get("task_id") for d in seen if d.get("ok")}
missing = set(sys.argv[2:]) - ok
bad = [d for d in seen if not d.get("ok")]
assert not missing, f"never delivered: {missing}"
assert not bad, f"failing verification: {bad}"
assert any(d["answered"] == 503 for d in seen), "the receiver's 503s were never retried"
print(f"netns-cluster: {len(seen)} deliveries for {len(sys.argv) - 2} webhooks, all verified",
      file=sys.stderr)
PY
say "passed"
