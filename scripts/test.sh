#!/usr/bin/env bash
# Runs the whole test suite: fetches libtorch when missing, the status page's browser (Debian's
# chromium and playwright-core), PostgreSQL's server (Debian's postgresql) and TensorBoard (from
# PyPI, for reading back and viewing `export --tensorboard`), then
# every crate's unit and integration tests (real SQLite and PostgreSQL, gRPC and TLS over
# loopback, libtorch on the CPU, worker processes, headless Chromium).
# Extra arguments go to `cargo test`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
scripts/libtorch.sh
scripts/browser-deps.sh
scripts/postgres-deps.sh
scripts/tensorboard-deps.sh
exec cargo test --workspace "$@"
