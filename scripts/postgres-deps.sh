#!/usr/bin/env bash
# Makes sure the store's tests have a PostgreSQL server to start: Debian's postgresql package
# (installed with apt-get when no /usr/lib/postgresql/*/bin/postgres exists; needs root, as CI
# has). The package's own cluster is not created: each test process starts its own server in a
# temporary folder, as the postgres user, and stops it (testkit/src/postgres.rs). Idempotent.
# CONVSWEEP_PG_BIN may name another folder with a postgres binary.
set -euo pipefail

if [ -n "${CONVSWEEP_PG_BIN:-}" ]; then
    [ -x "$CONVSWEEP_PG_BIN/postgres" ] || { echo "postgres-deps: no postgres in CONVSWEEP_PG_BIN=$CONVSWEEP_PG_BIN" >&2; exit 1; }
    exit 0
fi
if compgen -G "/usr/lib/postgresql/*/bin/postgres" >/dev/null && id postgres >/dev/null 2>&1; then
    exit 0
fi
if [ "$(id -u)" != 0 ]; then
    echo "postgres-deps: no PostgreSQL server; install Debian's postgresql (apt-get install postgresql) or set CONVSWEEP_PG_BIN" >&2
    exit 1
fi
echo "postgres-deps: installing postgresql with apt-get (no cluster of its own)" >&2
mkdir -p /etc/postgresql-common
echo "create_main_cluster = false" > /etc/postgresql-common/createcluster.conf
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends postgresql >/dev/null
