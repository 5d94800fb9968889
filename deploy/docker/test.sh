#!/usr/bin/env bash
# A real multi-container sweep: installs and starts Docker when missing, builds the local base
# (mmdebstrap) and both images, starts the coordinator container with its state on a named
# volume and token auth on, and 2 worker containers that find it by a service name
# (`--add-host convsweep-coordinator:127.0.0.1`; every container runs with --network host, so
# test traffic stays on 127.0.0.1). It submits a sweep from the host, `docker kill`s the
# coordinator mid-sweep and starts it again on the same volume, stops one worker with SIGTERM
# (checkpoint, preempted, resumed elsewhere), then exports and reports from the host through
# the coordinator, and checks that every trial succeeded exactly once. Then the replicated
# coordinator: a PostgreSQL server on the host (Debian's, as the postgres user, in a temp
# folder, on a port of its own), two coordinator containers on it that workers know by two
# service names (`--coordinator A,B`), coordinator A killed mid-sweep and not started again:
# every trial succeeds exactly once, through B. It removes every container, volume and image
# it made, stops the PostgreSQL server by its data folder, and stops dockerd if it started it.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$root"
tag=test-$$
prefix=convsweep-test-$$
work=$(mktemp -d /tmp/convsweep-docker.XXXXXX)
chmod 755 "$work"
started_dockerd=""
pg_bin=""
cleanup() {
    set +e
    docker rm -f "$prefix-coordinator" "$prefix-w1" "$prefix-w2" "$prefix-a" "$prefix-b" "$prefix-w3" "$prefix-w4" >/dev/null 2>&1
    if [ -n "$pg_bin" ] && [ -f "$work/pg/data/postmaster.pid" ]; then
        runuser -u postgres -- "$pg_bin/pg_ctl" -D "$work/pg/data" -m immediate -w stop >/dev/null 2>&1
    fi
    docker volume rm "$prefix-state" "$prefix-checkpoints" >/dev/null 2>&1
    docker rmi "convsweep-coordinator:$tag" "convsweep-worker:$tag" >/dev/null 2>&1
    docker image prune -f >/dev/null 2>&1
    if [ -n "$started_dockerd" ]; then
        kill "$started_dockerd" 2>/dev/null
        for _ in $(seq 100); do kill -0 "$started_dockerd" 2>/dev/null || break; sleep 0.1; done
    fi
    rm -rf "$work"
}
trap cleanup EXIT

if ! command -v /usr/sbin/dockerd >/dev/null; then
    echo "docker: installing docker.io with apt-get" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends docker.io >/dev/null
fi
if ! docker info >/dev/null 2>&1; then
    /usr/sbin/dockerd --pidfile "$work/dockerd.pid" -H unix:///var/run/docker.sock > "$work/dockerd.log" 2>&1 &
    started_dockerd=$!
    for _ in $(seq 100); do docker info >/dev/null 2>&1 && break; sleep 0.2; done
    docker info >/dev/null 2>&1 || { echo "docker: dockerd did not start"; cat "$work/dockerd.log"; exit 1; }
fi
deploy/docker/base.sh convsweep-base:bookworm
deploy/docker/build.sh convsweep-base:bookworm "$tag"
bin="$root/target/debug/convsweep"

# The worker image finds libtorch_cuda with no LD_LIBRARY_PATH, and asked for CUDA on a machine
# without a GPU it stops at once with a clear error.
docker run --rm --entrypoint /bin/sh "convsweep-worker:$tag" -c \
    'ldd /usr/local/bin/convsweep | grep -q "libtorch_cuda.so => /opt/py/torch/lib" && ! ldd /usr/local/bin/convsweep | grep -q "not found"' \
    || { echo "docker: the worker binary does not find libtorch_cuda in /opt/py"; exit 1; }
if out=$(docker run --rm --network none "convsweep-worker:$tag" worker --device cuda --coordinator http://127.0.0.1:1 2>&1); then
    echo "docker: a worker asked for CUDA without a GPU did not fail"; exit 1
fi
case "$out" in
    *"cuda asked for, but libtorch sees 0 CUDA device(s)"*) echo "docker: --device cuda without a GPU fails fast: ${out##*error: }" ;;
    *) echo "docker: unexpected error for --device cuda without a GPU: $out"; exit 1 ;;
esac

head -c 32 /dev/urandom | base64 > "$work/token"
chmod 644 "$work/token"  # read by the containers' user 10001
export CONVSWEEP_TOKEN_FILE="$work/token"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
ops=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
url="http://127.0.0.1:$port"
docker volume create "$prefix-state" >/dev/null
docker volume create "$prefix-checkpoints" >/dev/null
docker run -d --name "$prefix-coordinator" --network host \
    -v "$prefix-state:/var/lib/convsweep" -v "$work/token:/var/run/convsweep/token:ro" \
    -e CONVSWEEP_TOKEN_FILE=/var/run/convsweep/token -e CONVSWEEP_LISTEN="127.0.0.1:$port" \
    -e CONVSWEEP_OPS_LISTEN="127.0.0.1:$ops" -e CONVSWEEP_HEARTBEAT_SECS=1 -e CONVSWEEP_LEASE_TIMEOUT_SECS=20 \
    "convsweep-coordinator:$tag" >/dev/null
for _ in $(seq 100); do "$bin" status --coordinator "$url" >/dev/null 2>&1 && break; sleep 0.2; done
for w in w1 w2; do
    docker run -d --name "$prefix-$w" --network host --add-host convsweep-coordinator:127.0.0.1 \
        -v "$prefix-checkpoints:/var/lib/convsweep/checkpoints" -v "$work/token:/var/run/convsweep/token:ro" \
        -e CONVSWEEP_TOKEN_FILE=/var/run/convsweep/token -e CONVSWEEP_COORDINATOR="http://convsweep-coordinator:$port" \
        -e CONVSWEEP_WORKER_NAME="$prefix-$w" -e RUST_LOG=info \
        "convsweep-worker:$tag" worker --device cpu --threads 1 --grace-secs 20 >/dev/null
done

cat > "$work/sweep.toml" <<EOF
name = "docker"
[dataset]
name = "synthetic"
train_size = 2048
test_size = 128
[model]
arch = "resnet"
depth = 8
width = 8
init = "kaiming-uniform"
[train]
epochs = 16
batch_size = 64
[eval]
fgsm = []
corruptions = []
filters = false
[grid]
kernel_size = [3, 5]
train_mode = ["learned", "frozen"]
EOF
"$bin" submit "$work/sweep.toml" --coordinator "$url" >/dev/null
state_db="$(docker volume inspect -f '{{.Mountpoint}}' "$prefix-state")/state.db"
running_on() { python3 deploy/slurm/running_trial.py "$state_db" "$1" 6 2>/dev/null || true; }

# Mid-sweep: the coordinator is killed and started again on the same volume.
for _ in $(seq 600); do [ -n "$(running_on "$prefix-w1")$(running_on "$prefix-w2")" ] && break; sleep 0.5; done
echo "docker: killing the coordinator mid-sweep"
docker kill "$prefix-coordinator" >/dev/null
sleep 2
docker start "$prefix-coordinator" >/dev/null
for _ in $(seq 100); do "$bin" status --coordinator "$url" >/dev/null 2>&1 && break; sleep 0.2; done
echo "docker: coordinator back on the same volume"

# Then worker 1 is stopped with SIGTERM while it trains.
stopped=""
for _ in $(seq 600); do stopped=$(running_on "$prefix-w1"); [ -n "$stopped" ] && break; sleep 0.5; done
[ -n "$stopped" ] || { echo "docker: worker 1 never trained past an epoch"; docker logs "$prefix-w1" 2>&1 | tail -20; exit 1; }
echo "docker: SIGTERM to worker 1 while it trains $stopped"
docker kill --signal TERM "$prefix-w1" >/dev/null
for _ in $(seq 300); do [ "$(docker inspect -f '{{.State.Running}}' "$prefix-w1")" = false ] && break; sleep 0.2; done
code=$(docker inspect -f '{{.State.ExitCode}}' "$prefix-w1")
[ "$code" = 0 ] || { echo "docker: worker 1 exited $code after SIGTERM"; docker logs "$prefix-w1" 2>&1 | tail -20; exit 1; }

for _ in $(seq 900); do
    done_n=$("$bin" status --coordinator "$url" --json | python3 -c 'import json,sys; s=json.load(sys.stdin)["sweeps"][0]; print(s["done"], s["total"])')
    [ "${done_n% *}" = "${done_n#* }" ] && break
    sleep 1
done
"$bin" export --coordinator "$url" --out "$work/export" >/dev/null
"$bin" report --coordinator "$url" --out "$work/report" >/dev/null
[ -s "$work/export/trials.parquet" ] && [ -s "$work/report/report.html" ] || { echo "docker: no export or report"; exit 1; }
if ! python3 - "$state_db" "$stopped" <<'EOF'
import sqlite3, sys
db, stopped = sys.argv[1], sys.argv[2]
c = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
trials = c.execute("SELECT id, state FROM trials").fetchall()
assert len(trials) == 4 and all(s == "succeeded" for _, s in trials), trials
for t, _ in trials:
    n = c.execute("SELECT COUNT(*) FROM attempts WHERE trial_id = ? AND outcome = 'succeeded'", (t,)).fetchone()[0]
    assert n == 1, f"trial {t} succeeded {n} times"
outcomes = [o for (o,) in c.execute("SELECT outcome FROM attempts WHERE trial_id = ? ORDER BY attempt", (stopped,))]
assert "preempted" in outcomes and outcomes[-1] == "succeeded", outcomes
print(f"docker: 4 trials succeeded once each; {stopped} went {' -> '.join(outcomes)}")
EOF
then
    echo "--- worker 1"; docker logs "$prefix-w1" 2>&1 | tail -25
    echo "--- worker 2"; docker logs "$prefix-w2" 2>&1 | tail -25
    exit 1
fi
docker logs "$prefix-w2" 2>&1 | grep "resumed from checkpoint" | grep -q "$stopped" || {
    echo "docker: the stopped trial did not resume from its checkpoint on worker 2"; docker logs "$prefix-w2" 2>&1 | tail -30; exit 1; }
echo "docker: export and report from the host; the preempted trial resumed from its checkpoint; test passed"

# The replicated coordinator on PostgreSQL.
scripts/postgres-deps.sh
pg_bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
pgport=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
mkdir -p "$work/pg" && chown postgres "$work/pg"
runuser -u postgres -- "$pg_bin/initdb" -D "$work/pg/data" --auth=trust --username=postgres --no-sync >/dev/null
runuser -u postgres -- "$pg_bin/pg_ctl" -D "$work/pg/data" -l "$work/pg/log" -w \
    -o "-p $pgport -k $work/pg -c listen_addresses=127.0.0.1" start >/dev/null
psql() { "$pg_bin/psql" -X -q -t -A -h 127.0.0.1 -p "$pgport" -U postgres "$@"; }
psql -d postgres -c "CREATE DATABASE convsweep"
echo "postgres://postgres@127.0.0.1:$pgport/convsweep" > "$work/store-url"
chmod 644 "$work/store-url"
declare -A cport
names=""
for r in a b; do
    cport[$r]=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    rops=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    docker run -d --name "$prefix-$r" --network host \
        -v "$work/token:/var/run/convsweep/token:ro" -v "$work/store-url:/var/run/convsweep/store/uri:ro" \
        -e CONVSWEEP_TOKEN_FILE=/var/run/convsweep/token -e CONVSWEEP_STORE_URL_FILE=/var/run/convsweep/store/uri \
        -e CONVSWEEP_LISTEN="127.0.0.1:${cport[$r]}" -e CONVSWEEP_OPS_LISTEN="127.0.0.1:$rops" \
        -e CONVSWEEP_HEARTBEAT_SECS=1 -e CONVSWEEP_LEASE_TIMEOUT_SECS=20 \
        "convsweep-coordinator:$tag" >/dev/null
    names="$names${names:+,}http://convsweep-coordinator-$r:${cport[$r]}"
done
urls="http://127.0.0.1:${cport[a]},http://127.0.0.1:${cport[b]}"
for _ in $(seq 100); do "$bin" status --coordinator "http://127.0.0.1:${cport[b]}" >/dev/null 2>&1 && break; sleep 0.2; done
for w in w3 w4; do
    docker run -d --name "$prefix-$w" --network host \
        --add-host convsweep-coordinator-a:127.0.0.1 --add-host convsweep-coordinator-b:127.0.0.1 \
        -v "$work/token:/var/run/convsweep/token:ro" \
        -e CONVSWEEP_TOKEN_FILE=/var/run/convsweep/token -e CONVSWEEP_COORDINATOR="$names" \
        -e CONVSWEEP_WORKER_NAME="$prefix-$w" -e RUST_LOG=info \
        "convsweep-worker:$tag" worker --device cpu --threads 1 >/dev/null
done
sed -e 's/^name = "docker"/name = "replicated"/' -e 's/^train_size = 2048/train_size = 512/' -e 's/^epochs = 16/epochs = 6/' \
    "$work/sweep.toml" > "$work/replicated.toml"
"$bin" submit "$work/replicated.toml" --coordinator "$urls" >/dev/null
for _ in $(seq 600); do
    [ "$(psql -d convsweep -c "SELECT COUNT(*) FROM trials WHERE state = 'running'")" -gt 0 ] && break
    sleep 0.5
done
echo "docker: killing coordinator A mid-sweep (workers know A and B)"
docker kill "$prefix-a" >/dev/null
for _ in $(seq 900); do
    [ "$(psql -d convsweep -c "SELECT COUNT(*) FROM trials WHERE state = 'succeeded'")" = 4 ] && break
    sleep 1
done
once=$(psql -d convsweep -c "SELECT COUNT(*) || ' ' || COUNT(DISTINCT trial_id) FROM attempts WHERE outcome = 'succeeded'")
[ "$once" = "4 4" ] || {
    echo "docker: on PostgreSQL, succeeded attempts and trials: $once (want 4 4)"
    for w in w3 w4; do echo "--- $w"; docker logs "$prefix-$w" 2>&1 | tail -20; done
    exit 1
}
# (Read whole first: grep -q leaving a pipe early would fail it under pipefail.)
worker_logs=$(docker logs "$prefix-w3" 2>&1; docker logs "$prefix-w4" 2>&1)
grep -q "trying the next address" <<<"$worker_logs" || {
    echo "docker: no worker moved to coordinator B"; tail -40 <<<"$worker_logs"; exit 1; }
"$bin" report --store "$(cat "$work/store-url")" --out "$work/report-pg" >/dev/null
[ -s "$work/report-pg/report.html" ] || { echo "docker: no report from the PostgreSQL state"; exit 1; }
echo "docker: the replicated coordinator lost A mid-sweep; 4 trials succeeded once each through B; test passed"
