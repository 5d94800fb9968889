#!/usr/bin/env bash
# Builds the two images from deploy/docker/Dockerfile: the binaries (a coordinator without
# libtorch, a worker without Polars whose runpath points at /opt/py/torch/lib), their build
# contexts under target/docker (the worker's holds hard links to .deps/py's torch and nvidia
# libraries), then `docker build` of each target.
# Usage: deploy/docker/build.sh [BASE] [TAG]   (defaults: convsweep-base:bookworm, latest)
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$root"
base=${1:-convsweep-base:bookworm}
tag=${2:-latest}
ctx="$root/target/docker"
rm -rf "$ctx"
mkdir -p "$ctx/coordinator" "$ctx/worker/py"

scripts/libtorch.sh
cargo build --quiet -p convsweep --no-default-features --features analysis
cp target/debug/convsweep "$ctx/coordinator/convsweep"
cargo build --quiet -p convsweep --no-default-features --features worker
cp target/debug/convsweep "$ctx/worker/convsweep"
# Back to the full binary the tests and scripts use.
cargo build --quiet -p convsweep
command -v patchelf >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends patchelf >/dev/null
patchelf --set-rpath /opt/py/torch/lib "$ctx/worker/convsweep"
strip --strip-debug "$ctx/coordinator/convsweep" "$ctx/worker/convsweep"
cp -al .deps/py/torch .deps/py/nvidia "$ctx/worker/py/"

for target in coordinator worker; do
    echo "docker: building convsweep-$target:$tag" >&2
    DOCKER_BUILDKIT=0 docker build --quiet --build-arg "BASE=$base" --target "$target" \
        -f deploy/docker/Dockerfile -t "convsweep-$target:$tag" "$ctx/$target" >/dev/null
    size=$(docker image inspect -f '{{.Size}}' "convsweep-$target:$tag")
    echo "docker: convsweep-$target:$tag is $((size / 1000000)) MB"
done
