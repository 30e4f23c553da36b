#!/usr/bin/env bash
# The project's test command (README): everything a fresh machine needs, then the whole suite.
set -euo pipefail
cd "$(dirname "$0")/.."

# A real PostgreSQL server for the Postgres store's tests (installed and started by our own
# script; reused if it already runs, and then left running). A URL already in the environment
# points the tests at another server instead.
if [[ -z "${FLUXD_TEST_POSTGRES_URL:-}" ]]; then
    if ! scripts/services/postgres.sh status; then
        trap 'scripts/services/postgres.sh stop' EXIT
    fi
    FLUXD_TEST_POSTGRES_URL="$(scripts/services/postgres.sh start)"
    export FLUXD_TEST_POSTGRES_URL
fi

cargo test --workspace --locked "$@"
