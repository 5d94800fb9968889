#!/usr/bin/env bash
# A real Slurm run: brings up a one-node Slurm cluster (munged, slurmctld, slurmd; installed with
# apt-get when missing), starts a coordinator on the host with a token, submits a sweep with
# `convsweep slurm --submit` as a 2-task array of CPU workers, signals one task mid-trial with
# `scancel --signal=USR1 --batch` (what `--signal=B:USR1@120` does before a time limit), and
# checks that every trial succeeded exactly once and that the signalled trial resumed from its
# checkpoint. Stops everything it started, by PID, also on failure.
#
# Usage: deploy/slurm/test.sh [CONVSWEEP_BINARY]   (default: target/debug/convsweep, built)
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$root"

if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
    echo "slurm: installing slurmctld, slurmd, slurm-client and munge with apt-get" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends slurmctld slurmd slurm-client munge >/dev/null
fi
bin=${1:-}
if [ -z "$bin" ]; then
    cargo build --quiet -p convsweep
    bin="$root/target/debug/convsweep"
fi

work=$(mktemp -d /tmp/convsweep-slurm.XXXXXX)
chmod 755 "$work"  # munged runs as the munge user and must reach its folder
pids=()
job=""
cleanup() {
    set +e
    [ -n "$job" ] && SLURM_CONF="$work/slurm.conf" scancel "$job" 2>/dev/null
    # Job steps (slurmstepd) and the workers they started outlive slurmd: find ours by the
    # SLURM_CONF in their environment.
    for p in $(pgrep -f '^slurmstepd:|convsweep worker' 2>/dev/null); do
        if tr '\0' '\n' < "/proc/$p/environ" 2>/dev/null | grep -qx "SLURM_CONF=$work/slurm.conf"; then
            pids+=("$p")
        fi
    done
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done
    for p in "${pids[@]}"; do
        for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$p" 2>/dev/null
    done
    rm -rf "$work"
}
trap cleanup EXIT

# --- munge, with a key of its own for this test
mkdir -p "$work/munge"
chown munge:munge "$work/munge"
chmod 711 "$work/munge"
runuser -u munge -- mungekey --create --keyfile="$work/munge/munge.key" >/dev/null
install -d -o munge -g munge "$work/munge/run"
runuser -u munge -- munged --key-file="$work/munge/munge.key" --socket="$work/munge/run/munge.socket" \
    --pid-file="$work/munge/run/munged.pid" --log-file="$work/munge/munged.log" --seed-file="$work/munge/seed"
for _ in $(seq 50); do [ -s "$work/munge/run/munged.pid" ] && break; sleep 0.1; done
pids+=("$(cat "$work/munge/run/munged.pid")")

# --- a one-node cluster
node=$(slurmd -C | head -1)
host=$(hostname -s)
mkdir -p "$work/state" "$work/spool" "$work/logs"
cat > "$work/slurm.conf" <<EOF
ClusterName=convsweep-test
SlurmctldHost=$host
SlurmUser=root
AuthType=auth/munge
AuthInfo=socket=$work/munge/run/munge.socket
CredType=cred/munge
StateSaveLocation=$work/state
SlurmdSpoolDir=$work/spool
SlurmctldPidFile=$work/slurmctld.pid
SlurmdPidFile=$work/slurmd.pid
SlurmctldLogFile=$work/slurmctld.log
SlurmdLogFile=$work/slurmd.log
SlurmctldPort=46817
SlurmdPort=46818
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
MailProg=/bin/true
ReturnToService=2
$node
PartitionName=test Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
export SLURM_CONF="$work/slurm.conf"
slurmctld -D -f "$SLURM_CONF" > "$work/slurmctld.out" 2>&1 &
pids+=($!)
slurmd -D -f "$SLURM_CONF" > "$work/slurmd.out" 2>&1 &
pids+=($!)
for _ in $(seq 100); do
    sinfo -h -o %T 2>/dev/null | grep -q idle && break
    sleep 0.2
done
sinfo -h -o %T | grep -q idle || { echo "slurm: the node did not come up"; tail -20 "$work"/slurm*.log; exit 1; }

# --- a coordinator on the host, with a token
head -c 32 /dev/urandom | base64 > "$work/token"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
url="http://127.0.0.1:$port"
CONVSWEEP_TOKEN_FILE="$work/token" RUST_LOG=info "$bin" coordinator --state-dir "$work/coordinator" \
    --listen "127.0.0.1:$port" --ops-listen 127.0.0.1:0 --heartbeat-secs 1 --lease-timeout-secs 20 \
    > "$work/coordinator.log" 2>&1 &
pids+=($!)
export CONVSWEEP_TOKEN_FILE="$work/token"
for _ in $(seq 100); do "$bin" status --coordinator "$url" >/dev/null 2>&1 && break; sleep 0.1; done

# 4 trials of 16 epochs of about a second each on one core; the signal comes at epoch 6 at
# the latest, so the trial it hits has at least 10 s of training left.
cat > "$work/sweep.toml" <<EOF
name = "slurm"
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
cd "$work"
job=$("$bin" slurm sweep.toml --coordinator "$url" --array 2 --gpus-per-task 0 --cpus-per-task 1 \
    --signal-secs 30 --checkpoint-dir "$work/checkpoints" --log-dir "$work/logs" --out "$work/array.sbatch" --submit)
echo "slurm: submitted array job $job"
cd "$root"

# Wait until task 0 runs a trial past its first epoch, then signal it as a time limit would.
status() { "$bin" status --coordinator "$url" --json; }
signalled=""
for _ in $(seq 600); do
    running=$(python3 "$root/deploy/slurm/running_trial.py" "$work/coordinator/state.db" "slurm-${job}_0" 6 2>/dev/null || true)
    if [ -n "$running" ]; then signalled=$running; break; fi
    sleep 0.5
done
[ -n "$signalled" ] || { echo "slurm: no trial of task 0 got past its first epoch"; cat "$work"/logs/*; exit 1; }
echo "slurm: signalling task ${job}_0 (USR1, batch step) while it trains $signalled"
scancel --signal=USR1 --batch "${job}_0"

# Everything finishes: the other task (or task 0's requeue) resumes the preempted trial.
for _ in $(seq 900); do
    done_n=$(status | python3 -c 'import json,sys; s=json.load(sys.stdin)["sweeps"][0]; print(s["done"], s["total"])')
    [ "${done_n% *}" = "${done_n#* }" ] && break
    sleep 1
done
status
python3 - "$work/coordinator/state.db" "$signalled" <<'EOF'
import sqlite3, sys
db, signalled = sys.argv[1], sys.argv[2]
c = sqlite3.connect(db)
trials = c.execute("SELECT id, state FROM trials").fetchall()
assert len(trials) == 4 and all(s == "succeeded" for _, s in trials), trials
for t, _ in trials:
    n = c.execute("SELECT COUNT(*) FROM attempts WHERE trial_id = ? AND outcome = 'succeeded'", (t,)).fetchone()[0]
    assert n == 1, f"trial {t} succeeded {n} times"
outcomes = [o for (o,) in c.execute("SELECT outcome FROM attempts WHERE trial_id = ? ORDER BY attempt", (signalled,))]
assert outcomes[0] == "preempted" and outcomes[-1] == "succeeded", outcomes
print(f"slurm: 4 trials succeeded once each; {signalled} went {' -> '.join(outcomes)}")
EOF
grep -h "resumed from checkpoint" "$work"/logs/*.log | grep -q "$signalled" || {
    echo "slurm: the signalled trial did not resume from its checkpoint"; cat "$work"/logs/*.log; exit 1; }
grep -h "SIGUSR1 received" "$work"/logs/*.log >/dev/null || { echo "slurm: the worker never saw SIGUSR1"; exit 1; }
# The workers leave by themselves once no work is left (--exit-when-idle).
for _ in $(seq 120); do [ -z "$(squeue -h -j "$job" 2>/dev/null)" ] && break; sleep 0.5; done
[ -z "$(squeue -h -j "$job" 2>/dev/null)" ] || { echo "slurm: the array's workers did not exit when idle"; squeue; exit 1; }
echo "slurm: the signalled trial resumed from its checkpoint; every worker exited when idle; test passed"
