#!/usr/bin/env bash
# Makes sure the status-page test has its browser: Debian's chromium (installed with apt-get
# when /usr/bin/chromium is missing; needs root, as CI has) and playwright-core, which drives
# it, in the git-ignored .deps/node. Idempotent. CHROMIUM may name another Chromium binary.
set -euo pipefail

PLAYWRIGHT_VERSION=1.64.1
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

chromium=${CHROMIUM:-/usr/bin/chromium}
if [ ! -x "$chromium" ]; then
    if [ "$(id -u)" != 0 ]; then
        echo "browser-deps: $chromium is missing; install Debian's chromium (apt-get install chromium) or set CHROMIUM" >&2
        exit 1
    fi
    echo "browser-deps: installing chromium with apt-get" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends chromium >/dev/null
fi

dest="$root/.deps/node"
if [ ! -f "$dest/node_modules/playwright-core/package.json" ] ||
   ! grep -q "\"version\": \"$PLAYWRIGHT_VERSION\"" "$dest/node_modules/playwright-core/package.json"; then
    command -v npm >/dev/null || { echo "browser-deps: npm is needed to install playwright-core" >&2; exit 1; }
    echo "browser-deps: installing playwright-core $PLAYWRIGHT_VERSION into $dest" >&2
    mkdir -p "$dest"
    (cd "$dest" && npm install --no-audit --no-fund --silent --no-save "playwright-core@$PLAYWRIGHT_VERSION")
fi
