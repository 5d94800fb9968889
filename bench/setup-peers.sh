#!/usr/bin/env bash
# Sets up the peers the benchmarks measure against, once, into the git-ignored .deps/:
#   - Ray Tune 2.60.0 in a virtual environment at .deps/ray (`convsweep-bench coordinator`);
#   - PyTorch for `bench/pytorch_reference.py` is the one scripts/libtorch.sh installs into
#     .deps/py (run with PYTHONPATH=.deps/py, or any python3 with torch 2.11.0).
# Idempotent: a peer already installed is left as it is.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

RAY_VERSION=2.60.0
venv=.deps/ray
if "$venv/bin/python" -c 'import ray.tune' 2>/dev/null; then
    echo "setup-peers: Ray Tune is in $venv" >&2
else
    echo "setup-peers: installing ray[tune]==$RAY_VERSION into $venv (a few minutes)" >&2
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "ray[tune]==$RAY_VERSION"
    "$venv/bin/python" -c 'import ray.tune'
    echo "setup-peers: Ray Tune ready in $venv" >&2
fi
