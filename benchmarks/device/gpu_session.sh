#!/usr/bin/env bash
# One session on a lent GPU machine (results/gpu/README.md says what ran how):
# the CUDA tests, the benchmark of the fast recipe, that recipe alone on the GPU
# for up to four seeds (each timed as a whole command), then two long runs of `best`
# side by side until the deadline, GELU's CIFAR10ResNet and CIFAR10DepthwiseResNet,
# the weights averaged over half an epoch, for as many epochs as the two models'
# measured rates say will fit (benchmarks/device/fit_epochs.py, at most 150).
# Everything it measures lands in $OUT: session.log, bench_*.json and runs.tgz
# (the run folders, refreshed every 20 s so that a run cut off at the deadline
# still comes back with its last epoch).
#
#   bash benchmarks/device/gpu_session.sh SECONDS
# common.sh (sourced) sets it up and says what must be carried.
LIMIT=${1:-540}
source "$(dirname "$0")/common.sh"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
lscpu | grep -E 'Model name|^CPU\(s\)'
python3 -c "import torch, torchvision, albumentations, numba; \
print('torch', torch.__version__, 'torchvision', torchvision.__version__, \
'albumentations', albumentations.__version__, 'numba', numba.__version__, \
torch.cuda.get_device_name())" || exit 1

stamp "unpack and decode the data (a one-off: decoded arrays are cached)"
unpack_data || exit 1

stamp "the CUDA tests (the captured step against the eager one)"
GRAPH=""
if ! python3 -m pytest -q -o addopts="-p no:cacheprovider" tests/test_graphs.py; then
    GRAPH="--no-cuda-graph"
    stamp "the captured step failed its tests: the runs below launch every kernel"
fi
TRAIN="$TRAIN $GRAPH"

stamp "benchmark (GPU otherwise idle)"
python3 -m cifar_lib bench --device cuda --rounds 3 --recipe fast --steps 300 $GRAPH \
    --out "$OUT/bench_gpu_fast.json"

fast_runs fast_gpu 330  # about five minutes for the long runs below

stamp "the long runs' models alone: their rates decide how many epochs fit"
for model in CIFAR10ResNetGELU CIFAR10DepthwiseResNet; do
    python3 -m cifar_lib bench --device cuda --rounds 1 --steps 100 --no-compare \
        --recipe best --teacher '' --model $model $GRAPH \
        --out "$OUT/bench_gpu_best_$model.json"
done
EPOCHS=$(python3 benchmarks/device/fit_epochs.py $((LIMIT - $(elapsed) - 30)) \
    "$OUT"/bench_gpu_best_*.json) || exit 1
[ "$EPOCHS" -ge 10 ] || { stamp "only $EPOCHS epochs would fit: no long runs"; exit 1; }

stamp "side by side until the deadline: two long runs of best, $EPOCHS epochs each"
# The recipe averages the weights over half an epoch (0.99); every epoch logs the
# raw weights' accuracy too, so the runs compare either way.
# alone (--teacher ''), as the recipe was then
LONG=($TRAIN --recipe best --teacher '' --epochs $EPOCHS)
# GELU, 0.46-1.26 points above ReLU in the fast recipe's 8 epochs (5 seeds)
"${LONG[@]}" --model CIFAR10ResNetGELU --out $RUNS/best_gelu > $RUNS/best_gelu.log 2>&1 &
# the candidate built for 92%: residual depthwise-separable blocks, 5x5 kernels
"${LONG[@]}" --model CIFAR10DepthwiseResNet \
    --out $RUNS/best_depthwise > $RUNS/best_depthwise.log 2>&1 &
watch_runs $RUNS/best_gelu.log $RUNS/best_depthwise.log
pack
stamp "done"
