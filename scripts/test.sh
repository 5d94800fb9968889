#!/usr/bin/env bash
# Runs the whole test suite: fetches libtorch when missing, then every crate's unit and
# integration tests (real SQLite, gRPC over loopback, libtorch on the CPU, worker processes).
# Extra arguments go to `cargo test`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
scripts/libtorch.sh
exec cargo test --workspace "$@"
