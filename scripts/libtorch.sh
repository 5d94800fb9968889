#!/usr/bin/env bash
# Makes sure libtorch (PyTorch 2.11.0 from PyPI) is installed in .deps/py, the folder that
# .cargo/config.toml points LIBTORCH at. Idempotent and atomic: a half-finished install is never
# mistaken for a complete one. Skipped when LIBTORCH is already set in the environment.
set -euo pipefail

TORCH_VERSION=2.11.0
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
dest="$root/.deps/py"
stamp="$dest/.torch-$TORCH_VERSION"

if [ -n "${LIBTORCH:-}" ]; then
    echo "libtorch: using LIBTORCH=$LIBTORCH from the environment" >&2
    exit 0
fi
if [ -f "$stamp" ] && [ -f "$dest/torch/lib/libtorch_cpu.so" ]; then
    exit 0
fi

command -v python3 >/dev/null || { echo "libtorch: python3 is needed to fetch PyTorch $TORCH_VERSION from PyPI" >&2; exit 1; }
echo "libtorch: installing PyTorch $TORCH_VERSION from PyPI into $dest (about 4.6 GB, a few minutes)" >&2
tmp="$dest.partial"
rm -rf "$tmp"
python3 -m pip install --quiet --no-input --disable-pip-version-check --no-compile \
    --target "$tmp" "torch==$TORCH_VERSION"
rm -rf "$dest"
mv "$tmp" "$dest"
touch "$stamp"
echo "libtorch: ready in $dest/torch" >&2
