#!/usr/bin/env bash
# A short second session on a lent GPU machine, for the captured training step:
# its CUDA tests, the benchmark, then `fast` runs alone on the GPU, each timed as
# a whole command, until the deadline. Output in $OUT as gpu_session.sh's.
#
#   bash benchmarks/device/gpu_graph_check.sh SECONDS
set -u
LIMIT=${1:-220}
START=$(date +%s)
OUT=${OUT:-/tmp/gpu_out}
mkdir -p "$OUT"
exec > >(tee -a "$OUT/session.log") 2>&1
elapsed() { echo $(($(date +%s) - START)); }
stamp() { echo "[$(elapsed)s] $*"; }
export PYTHONUNBUFFERED=1 NO_ALBUMENTATIONS_UPDATE=1
export CIFAR_LIB_COMMIT=$(cat .devcarry/commit 2>/dev/null || echo unknown)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
    --upgrade --target /tmp/site .devcarry/whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD
DATA=/tmp/cifar10-jpeg75
RUNS=/tmp/runs
mkdir -p "$RUNS"
stamp "decode the data, meanwhile the CUDA tests"
(python3 benchmarks/device/pack_images.py unpack .devcarry/cifar10-jpeg75.pack $DATA \
    && python3 -c "from cifar_lib.data import load_cifar10; load_cifar10('$DATA')" \
    && echo decoded) > "$RUNS/decode.log" 2>&1 &
DECODE=$!
python3 -m pytest -q -o addopts="-p no:cacheprovider" tests/test_graphs.py || {
    stamp "the captured step failed its tests"; exit 1; }
stamp "benchmark (the captured step; eager at this commit: see the first session)"
python3 -m cifar_lib bench --device cuda --rounds 3 --recipe fast --steps 300 \
    --no-compare --out "$OUT/bench_gpu_fast_graph.json"
wait $DECODE; cat "$RUNS/decode.log"
pack() {
    tar czf "$OUT/runs.tmp" -C $RUNS --exclude=final_model.pt --exclude='*.png' . \
        && mv "$OUT/runs.tmp" "$OUT/runs.tgz"
}
TRAIN="python3 -m cifar_lib train --data-dir $DATA --device cuda --no-progress"
for seed in 0 1 2 3; do
    left=$((LIMIT - $(elapsed) - 5))
    [ $left -gt 30 ] || break
    stamp "fast, seed $seed, alone on the GPU, timed as a whole command (at most ${left}s)"
    begin=$(date +%s%N)
    timeout $left $TRAIN --recipe fast --seed $seed --out $RUNS/fast_graph_seed$seed
    echo "fast seed $seed: whole command $(( ($(date +%s%N) - begin) / 1000000 )) ms" \
        "(Python start, cached data loaded, whitening, training, evaluation, files)"
    pack
done
pack
stamp "done"
