#!/usr/bin/env bash
# Makes a local Debian base image for the convsweep images where no registry is reachable:
# `mmdebstrap --variant=minbase bookworm` (plus tini and the C++ runtime libtorch needs), then
# `docker import`. Usage: deploy/docker/base.sh [IMAGE]   (default convsweep-base:bookworm)
set -euo pipefail
image=${1:-convsweep-base:bookworm}
if docker image inspect "$image" >/dev/null 2>&1; then
    echo "docker: base image $image exists"
    exit 0
fi
command -v mmdebstrap >/dev/null || {
    echo "docker: installing mmdebstrap" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends mmdebstrap >/dev/null
}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
echo "docker: building $image with mmdebstrap (about 90 s)" >&2
mmdebstrap --quiet --variant=minbase --include=tini,libstdc++6,libgomp1,ca-certificates \
    bookworm "$tmp/rootfs.tar"
docker import --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    "$tmp/rootfs.tar" "$image" >/dev/null
echo "docker: base image $image ready"
