#!/usr/bin/env bash
# GPU check of the ImageNet path (issue 16), run on a lent GPU machine from the repository root
# with the worker-only release binaries carried in as target/release/convsweep and
# target/release/convsweep-bench (built as for bench/gpu/check.sh). Under 10 minutes on one
# H100/H200:
#   1. `convsweep-bench decode`: JPEG decode + RandomResizedCrop images/s on the machine's cores;
#   2. ResNet-18d at 224 px, 1,000 classes, on a synthetic 224-px tensor dataset held on the GPU
#      (so that the step, not decoding, is measured): fp32, bf16 and fp16, 8 epochs of 25 steps
#      of 128 images each (200 steps), images/s per epoch and CUDA peak memory per trial;
#   3. one bf16 trial on an image folder of the JPEGs from step 1 (decoded as it trains).
# Results go to $OUT (default ./gpu-check-imagenet). SMOKE=1 DEVICE=cpu shrinks every size to
# check the script itself on a CPU (where bf16 and fp16 trials are refused, as they should be).
set -uo pipefail
DEVICE=${DEVICE:-cuda}
FOLDER_PRECISION=bf16; [ "$DEVICE" = cpu ] && FOLDER_PRECISION=fp32
if [ "${SMOKE:-0}" = 1 ]; then N_JPEG=40; N_TRAIN=64; N_TEST=16; EPOCHS=1; BATCH=16; else N_JPEG=1024; N_TRAIN=3200; N_TEST=512; EPOCHS=8; BATCH=128; fi
OUT=${OUT:-gpu-check-imagenet}
OUT=$(mkdir -p "$OUT" && cd "$OUT" && pwd)
B=${CONVSWEEP:-target/release/convsweep}
BENCH=${CONVSWEEP_BENCH:-$(dirname "$B")/convsweep-bench}
TORCH=$(python3 -c 'import torch, os; print(os.path.dirname(torch.__file__))')
export LD_LIBRARY_PATH="$TORCH/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
{
  date -u
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  nproc
} 2>&1 | tee "$OUT/machine.txt"

step() { echo "== $1 ($(date -u +%T))"; }

step decode
timeout 120 "$BENCH" decode --images $N_JPEG --threads 1 --threads "$(nproc)" --keep "$OUT/folder" 2>&1 | tee "$OUT/decode.txt"

step tensor-data
mkdir -p "$OUT/t224"
timeout 120 python3 - "$OUT/t224" "$N_TRAIN" "$N_TEST" <<'PY'
# train.npz / test.npz as np.savez writes them (stored .npy members), without needing numpy:
# random uint8 images N x 3 x 224 x 224, int64 labels in 0..999, classes = 1000.
import os, random, struct, sys, zipfile
root, n_train, n_test = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
def npy(descr, shape, data):
    header = "{'descr': '%s', 'fortran_order': False, 'shape': %s, }" % (descr, shape)
    header += " " * ((64 - (10 + len(header) + 1) % 64) % 64) + "\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header.encode() + data
random.seed(0)
for split, n in (("train", n_train), ("test", n_test)):
    labels = struct.pack("<%dq" % n, *(random.randrange(1000) for _ in range(n)))
    with zipfile.ZipFile(f"{root}/{split}.npz", "w", zipfile.ZIP_STORED, allowZip64=True) as z:
        z.writestr("images.npy", npy("|u1", "(%d, 3, 224, 224)" % n, os.urandom(n * 3 * 224 * 224)))
        z.writestr("labels.npy", npy("<i8", "(%d,)" % n, labels))
        z.writestr("classes.npy", npy("<i8", "()", struct.pack("<q", 1000)))
print("written", root)
PY

cat > "$OUT/resnet18d.toml" <<TOML
name = "gpu-resnet18d"
description = "ResNet-18d, 224 px, 1000 classes: fp32 / bf16 / fp16 step throughput and peak memory"
seeds = 1
[dataset]
name = "tensor"
root = "$OUT/t224"
[model]
arch = "resnet18d"
stem = "imagenet"
kernel_size = 3
train_mode = "learned"
init = "kaiming-normal-fan-out"
[train]
epochs = $EPOCHS
batch_size = $BATCH
lr = 0.05
[eval]
fgsm = []
corruptions = []
[grid]
precision = ["fp32", "bf16", "fp16"]
TOML

step resnet18d
start=$(date +%s)
timeout 300 "$B" run "$OUT/resnet18d.toml" --workers 1 --device "$DEVICE" --runs-dir "$OUT/runs" 2>&1 | tail -20 | tee "$OUT/resnet18d.txt"
echo "resnet18d exit ${PIPESTATUS[0]} after $(( $(date +%s) - start )) s"

cat > "$OUT/folder.toml" <<TOML
name = "gpu-imagefolder"
description = "ResNet-18d bf16 on JPEGs decoded as it trains"
seeds = 1
[dataset]
name = "imagefolder"
root = "$OUT/folder"
[model]
arch = "resnet18d"
stem = "imagenet"
kernel_size = 3
train_mode = "learned"
init = "kaiming-normal-fan-out"
[train]
epochs = $EPOCHS
batch_size = $BATCH
precision = "$FOLDER_PRECISION"
[eval]
fgsm = []
corruptions = []
TOML

step imagefolder
start=$(date +%s)
timeout 150 "$B" run "$OUT/folder.toml" --workers 1 --device "$DEVICE" --runs-dir "$OUT/runs" 2>&1 | tail -12 | tee "$OUT/folder.txt"
echo "imagefolder exit ${PIPESTATUS[0]} after $(( $(date +%s) - start )) s"

rm -rf "$OUT"/runs/*/checkpoints "$OUT/t224" "$OUT/folder"
step summary
# Per epoch: seconds (training and the 512-image evaluation); per trial: precision, peak memory.
grep -h -E '"epoch"|epoch=|trial trained' "$OUT"/runs/*/logs/*.log 2>/dev/null | grep -E 'seconds|peak_memory' | tail -40
step done
