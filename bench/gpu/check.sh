#!/usr/bin/env bash
# GPU check, run on a lent GPU machine from the repository root with a worker-only release
# binary built elsewhere (`cargo build --release -p convsweep --no-default-features`) carried
# in as target/release/convsweep. It links against the machine's own PyTorch, then:
#   1. `convsweep bench --device cuda` against the PyTorch-eager reference;
#   2. the sweep bench/gpu/sweep.toml (8 trials, 2 worker processes sharing the GPU);
#   3. bench/gpu/oom.toml, a trial that cannot fit: it must fail once, as out of memory.
# Results go to $OUT (default ./gpu-check): bench output, the sweeps' state.db and logs.
# Export and report them on a machine with a full build: `convsweep report OUT/runs/gpu-check`.
set -uo pipefail
OUT=${OUT:-gpu-check}
mkdir -p "$OUT"
B=${CONVSWEEP:-target/release/convsweep}
TORCH=$(python3 -c 'import torch, os; print(os.path.dirname(torch.__file__))')
export LD_LIBRARY_PATH="$TORCH/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
{
  date -u
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python3 -c 'import torch; print("python torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.is_available())'
  ldd "$B" | grep -E 'libtorch|libc10' 
} 2>&1 | tee "$OUT/machine.txt"

step() { echo "== $1 ($(date -u +%T))"; }

step bench
timeout 150 "$B" bench --device cuda --warmup 5 --rounds 5 --steps 20 --json "$OUT/bench.json" 2>&1 | tee "$OUT/bench.txt"
echo "bench exit ${PIPESTATUS[0]}"

step sweep
start=$(date +%s)
timeout 240 "$B" run bench/gpu/sweep.toml --workers 2 --device cuda --runs-dir "$OUT/runs" 2>&1 | tail -40 | tee "$OUT/sweep.txt"
echo "sweep exit ${PIPESTATUS[0]} after $(( $(date +%s) - start )) s"

step oom
start=$(date +%s)
timeout 90 "$B" run bench/gpu/oom.toml --workers 1 --device cuda --runs-dir "$OUT/runs" 2>&1 | tail -20 | tee "$OUT/oom.txt"
echo "oom exit ${PIPESTATUS[0]} after $(( $(date +%s) - start )) s"

rm -rf "$OUT"/runs/*/checkpoints
grep -h -iE 'device|cuda' "$OUT"/runs/*/logs/*.log 2>/dev/null | head -8
step done
