#!/usr/bin/env bash
# A session's first call on a lent GPU machine, for the 92% of the `best` recipe:
# the CUDA tests (while the data is unpacked and decoded), the best recipe's step
# measured in float32 and in bfloat16 (taught by its teacher since the seventh
# session, as the recipe is), then one long run of `best` alone on the GPU,
# in the faster precision, for as many epochs as the measured rate says will finish
# before the deadline (benchmarks/device/fit_epochs.py, at most 200), so that the
# one-cycle schedule runs to its end. The fast recipe's timed runs come in the next
# call (gpu_fast.sh), on the same machine if it is still warm.
# Everything it measures lands in $OUT: session.log, bench_*.json and runs.tgz
# (refreshed every 20 s, so that a run cut off still comes back with its
# checkpoint.pt, which `train --resume` continues).
#
#   bash benchmarks/device/gpu_best.sh SECONDS [AUGMENTATION]
#   EPOCHS=N bash benchmarks/device/gpu_best.sh SECONDS [AUGMENTATION]
# With EPOCHS set, the benchmark is skipped (about 45 s on an H100) and the long
# run trains N epochs in the recipe's own precision (bfloat16 since the third
# session measured it: results/gpu/bench_h100_best_*.json): for a session that
# already knows the rate (1.5 s an epoch on an H100 without a teacher, plus about
# 40 s of start, first epoch and files: results/gpu/session_h100_73da03f.log;
# taught, 1.7 s an epoch on an H200: results/gpu/session_h200_d9ba3c4_*.log).
# AUGMENTATION, if given, changes the recipe's augmentation for the long run
# (train --augmentation, e.g. scale=0.1,hole_p=0.5: the stronger augmentation that
# reached 90.81% in 125 epochs in the third session, and 90.69% in 280 in the
# fourth: results/gpu/README.md).
# common.sh (sourced) sets it up and says what must be carried.
LIMIT=${1:-560}
AUGMENT=${2:+--augmentation $2}
source "$(dirname "$0")/common.sh"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
lscpu | grep -E 'Model name|^CPU\(s\)'
python3 -c "import torch, torchvision, albumentations; \
print('torch', torch.__version__, 'torchvision', torchvision.__version__, \
'albumentations', albumentations.__version__, torch.cuda.get_device_name())" || exit 1

unpack_data_and_test_graphs || exit 1

if [ -n "${EPOCHS:-}" ]; then
    AMP="--amp"
    stamp "no benchmark: EPOCHS=$EPOCHS given"
else
    stamp "the best recipe's step, float32 and bfloat16 (GPU otherwise idle)"
    BENCH="python3 -m cifar_lib bench --device cuda --recipe best --rounds 2 --steps 60"
    BENCH="$BENCH --no-compare $GRAPH"
    $BENCH --out "$OUT/bench_gpu_best_fp32.json" || exit 1
    $BENCH --amp --out "$OUT/bench_gpu_best_bf16.json" || exit 1
    # bfloat16 only if it saves at least a sixth of the time: what it changes in the
    # numbers is small but not nothing.
    AMP=$(python3 -c "
import json
rate = {p: json.load(open('$OUT/bench_gpu_best_' + p + '.json'))['train_images_per_s']
        for p in ('fp32', 'bf16')}
print('--amp' if rate['bf16'] >= 1.2 * rate['fp32'] else '')")
    RATE_FILE="$OUT/bench_gpu_best_$([ -n "$AMP" ] && echo bf16 || echo fp32).json"
    EPOCHS=$(python3 benchmarks/device/fit_epochs.py $((LIMIT - $(elapsed) - 30)) \
        "$RATE_FILE" --margin 0.85 --most 200) || exit 1
    [ "$EPOCHS" -ge 43 ] || { stamp "only $EPOCHS epochs would fit: no long run"; exit 1; }
fi

stamp "best, $EPOCHS epochs ${AMP:-(float32)} $AUGMENT, alone on the GPU until the deadline"
$TRAIN --recipe best --epochs $EPOCHS $AMP $GRAPH $AUGMENT --out $RUNS/best_long \
    > $RUNS/best_long.log 2>&1 &
watch_runs $RUNS/best_long.log
tail -n 3 $RUNS/best_long.log
pack
stamp "done"
