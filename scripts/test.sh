#!/usr/bin/env bash
# The project's test command (README): everything a fresh machine needs, then the whole suite.
set -euo pipefail
cd "$(dirname "$0")/.."

# A real S3-compatible server (SeaweedFS) for the blob tests: started here, its variables
# exported (FLUXD_TEST_S3_URL and AWS_*), and stopped on the way out unless it was already up.
if ! scripts/services/s3.sh status; then
  trap 'scripts/services/s3.sh stop' EXIT
fi
s3_env=$(scripts/services/s3.sh start)
eval "$s3_env"

cargo test --workspace --locked "$@"
