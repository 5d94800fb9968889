#!/usr/bin/env bash
# Renders every overlay with `kubectl kustomize`, validates the output offline with
# `kubernetes-validate --strict` against Kubernetes 1.29 and 1.37 (custom resources only warn:
# invariants.py checks the fields their operators require),
# and checks the invariants schemas cannot see (invariants.py), then that those checks catch a
# manifest broken in each way they guard against (invariants.py --self-test). Run by CI.
# kubernetes-validate is installed into the git-ignored .deps/py-tools when missing.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
tools="$root/.deps/py-tools"
if ! PYTHONPATH="$tools" python3 -c "import kubernetes_validate" 2>/dev/null; then
    echo "kubernetes: installing kubernetes-validate into $tools" >&2
    python3 -m pip install --quiet --no-input --disable-pip-version-check --target "$tools" "kubernetes-validate==1.37.0"
fi
command -v kubectl >/dev/null || { echo "kubernetes: kubectl is needed to render the overlays" >&2; exit 1; }
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
checks=()
for overlay in cpu gpu cpu-job postgres postgres-single; do
    kubectl kustomize "$here/overlays/$overlay" > "$out/$overlay.yaml"
    for version in 1.29 1.37; do
        if ! PYTHONPATH="$tools" python3 -m kubernetes_validate --strict --quiet -k "$version" "$out/$overlay.yaml"; then
            echo "kubernetes: overlay $overlay does not validate against $version" >&2
            exit 1
        fi
    done
    echo "kubernetes: overlay $overlay validates against 1.29 and 1.37"
    checks+=("$overlay=$out/$overlay.yaml")
done
PYTHONPATH="$tools" python3 "$here/invariants.py" "${checks[@]}"
# The checks themselves: a manifest broken in each way they guard against must fail them.
PYTHONPATH="$tools" python3 "$here/invariants.py" --self-test "${checks[@]}"
