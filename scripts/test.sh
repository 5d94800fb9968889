#!/usr/bin/env bash
# Runs the whole test suite: fetches libtorch when missing and the status page's browser
# (Debian's chromium and playwright-core) and PostgreSQL's server (Debian's postgresql), then
# every crate's unit and integration tests (real SQLite and PostgreSQL, gRPC and TLS over
# loopback, libtorch on the CPU, worker processes, headless Chromium).
# Extra arguments go to `cargo test`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
scripts/libtorch.sh
scripts/browser-deps.sh
scripts/postgres-deps.sh
exec cargo test --workspace "$@"
