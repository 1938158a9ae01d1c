#!/usr/bin/env bash
# A short second session on a lent GPU machine, for the captured training step:
# its CUDA tests, the benchmark, then `fast` runs alone on the GPU, each timed as
# a whole command, until the deadline. Output in $OUT as gpu_session.sh's;
# common.sh (sourced) sets it up and says what must be carried.
#
#   bash benchmarks/device/gpu_graph_check.sh SECONDS
LIMIT=${1:-220}
source "$(dirname "$0")/common.sh"
stamp "decode the data, meanwhile the CUDA tests"
unpack_data > "$RUNS/decode.log" 2>&1 &
DECODE=$!
python3 -m pytest -q -o addopts="-p no:cacheprovider" tests/test_graphs.py || {
    stamp "the captured step failed its tests"; exit 1; }
stamp "benchmark (the captured step; eager at this commit: see the first session)"
python3 -m cifar_lib bench --device cuda --rounds 3 --recipe fast --steps 300 \
    --no-compare --out "$OUT/bench_gpu_fast_graph.json"
wait $DECODE; cat "$RUNS/decode.log"
fast_runs fast_graph 5
pack
stamp "done"
