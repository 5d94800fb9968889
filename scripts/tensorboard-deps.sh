#!/usr/bin/env bash
# Makes sure the TensorBoard export test has TensorBoard's own reader and server: the
# `tensorboard` package from PyPI in the git-ignored .deps/tb (a `pip --target` folder, on
# PYTHONPATH for the test). Idempotent.
set -euo pipefail

TENSORBOARD_VERSION=2.21.0
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
dest="$root/.deps/tb"
stamp="$dest/.tensorboard-$TENSORBOARD_VERSION"
if [ -f "$stamp" ]; then
    exit 0
fi
command -v python3 >/dev/null || { echo "tensorboard-deps: python3 is needed to install tensorboard from PyPI" >&2; exit 1; }
echo "tensorboard-deps: installing tensorboard $TENSORBOARD_VERSION into $dest" >&2
tmp="$dest.partial"
rm -rf "$tmp"
python3 -m pip install --quiet --no-input --disable-pip-version-check --no-compile \
    --target "$tmp" "tensorboard==$TENSORBOARD_VERSION"
rm -rf "$dest"
mv "$tmp" "$dest"
touch "$stamp"
