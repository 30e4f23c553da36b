#!/usr/bin/env bash
# The project's test command (README): everything a fresh machine needs, then the whole suite.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --workspace --locked "$@"
