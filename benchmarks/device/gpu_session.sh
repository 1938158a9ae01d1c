#!/usr/bin/env bash
# One session on a lent GPU machine (benchmarks/device/README.md says how it is
# called): the benchmark, one timed `fast` run alone on the GPU, then longer runs
# side by side until the deadline. Everything it measures lands in $OUT:
# session.log, bench_*.json and runs.tgz (the run folders, refreshed every 20 s so
# that a run cut off at the deadline still comes back with its last epoch).
#
#   bash benchmarks/device/gpu_session.sh SECONDS
set -u
LIMIT=${1:-540}
START=$(date +%s)
OUT=${OUT:-/tmp/gpu_out}
mkdir -p "$OUT"
exec > >(tee -a "$OUT/session.log") 2>&1
elapsed() { echo $(($(date +%s) - START)); }
stamp() { echo "[$(elapsed)s] $*"; }
export PYTHONUNBUFFERED=1
export CIFAR_LIB_COMMIT=$(cat .devcarry/commit 2>/dev/null || echo unknown)

stamp "install the missing packages"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
    --upgrade --target /tmp/site .devcarry/whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
lscpu | grep -E 'Model name|^CPU\(s\)'
python3 -c "import torch, torchvision, albumentations, numba; \
print('torch', torch.__version__, 'torchvision', torchvision.__version__, \
'albumentations', albumentations.__version__, 'numba', numba.__version__, \
torch.cuda.get_device_name())" || exit 1

DATA=/tmp/cifar10-jpeg75
RUNS=/tmp/runs
mkdir -p "$RUNS"
stamp "unpack and decode the data (a one-off: decoded arrays are cached)"
python3 benchmarks/device/pack_images.py unpack .devcarry/cifar10-jpeg75.pack $DATA \
    || exit 1
python3 -c "
import time; t = time.perf_counter()
from cifar_lib.data import load_cifar10
a = load_cifar10('$DATA')
print('decoded', a.train_images.shape, a.test_images.shape, f'{time.perf_counter() - t:.1f} s')
" || exit 1

TRAIN="python3 -m cifar_lib train --data-dir $DATA --device cuda --no-progress"
stamp "smoke test: one epoch on 2,000 images"
$TRAIN --recipe fast --epochs 1 --subset 2000 --out $RUNS/smoke || exit 1

stamp "benchmarks (GPU otherwise idle)"
BENCH="python3 -m cifar_lib bench --device cuda --rounds 3"
$BENCH --recipe fast --steps 300 --out "$OUT/bench_gpu_fast_fp32.json"
$BENCH --recipe fast --steps 300 --amp --no-compare \
    --out "$OUT/bench_gpu_fast_amp.json"
$BENCH --recipe seed --steps 100 --out "$OUT/bench_gpu_seed.json"
AMP=$(python3 -c "
import json
amp = json.load(open('$OUT/bench_gpu_fast_amp.json'))['train_images_per_s']
fp32 = json.load(open('$OUT/bench_gpu_fast_fp32.json'))['train_images_per_s']
print('--amp' if amp > fp32 else '')
")
stamp "mixed precision for the runs: ${AMP:-off}"

pack() {
    tar czf "$OUT/runs.tmp" -C $RUNS --exclude=final_model.pt --exclude='*.png' . \
        && mv "$OUT/runs.tmp" "$OUT/runs.tgz"
}

stamp "fast, seed 0, alone on the GPU, timed as a whole command"
begin=$(date +%s%N)
$TRAIN --recipe fast $AMP --out $RUNS/fast_gpu_seed0
echo "fast seed 0: whole command $(( ($(date +%s%N) - begin) / 1000000 )) ms" \
    "(Python start, cached data loaded, whitening, training, evaluation, files)"
pack

stamp "side by side until the deadline: two long runs and three more fast seeds"
$TRAIN --recipe best $AMP --batch-size 128 --lr 0.1 --epochs 120 \
    --out $RUNS/best_b128 > $RUNS/best_b128.log 2>&1 &
$TRAIN --recipe best $AMP --batch-size 64 --lr 0.1 --epochs 60 \
    --out $RUNS/best_b64 > $RUNS/best_b64.log 2>&1 &
(for seed in 1 2 3; do
    $TRAIN --recipe fast $AMP --seed $seed --out $RUNS/fast_gpu_seed$seed \
        > $RUNS/fast_gpu_seed$seed.log 2>&1
done) &
while [ -n "$(jobs -r)" ] && [ "$(elapsed)" -lt $((LIMIT - 25)) ]; do
    sleep 20
    pack
    stamp "$(tail -qn1 $RUNS/*.log | cut -c1-150)"
done
if [ -n "$(jobs -r)" ]; then
    stamp "deadline: stopping what still runs (its checkpoint.pt can be resumed)"
    kill $(jobs -p) 2>/dev/null
    pkill -f "cifar_lib train" 2>/dev/null
    sleep 3
fi
pack
stamp "done"
