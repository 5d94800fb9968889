#!/usr/bin/env bash
# Runs the demo sweep (examples/demo.toml) end to end on this machine: fetches libtorch when
# missing, builds, starts the coordinator in-process and 2 worker processes, trains the 8
# trials, exports Parquet and writes runs/demo/report.md. Extra arguments go to `convsweep run`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
scripts/libtorch.sh
exec cargo run --quiet -p convsweep -- run examples/demo.toml "$@"
