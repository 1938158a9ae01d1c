# Sourced by the GPU session scripts (gpu_session.sh, gpu_graph_check.sh), with the
# session's length in seconds in LIMIT: logs everything to $OUT/session.log, installs
# the packages the device's image lacks (.devcarry/whl/), and defines
#   elapsed, stamp MESSAGE   seconds since the start; a line with them
#   pack                     the run folders that this call wrote (not their final
#                            weights or figures) into $OUT/runs.tgz, so that a run
#                            cut off still comes back
#   DATA, RUNS, TRAIN        where the images and runs go; the training command
#   unpack_data              the images into DATA and decoded (once per machine)
#   unpack_data_and_test_graphs   the same beside the CUDA tests; sets GRAPH
#   free_folder PATH         PATH, or PATH_2, PATH_3, ... if it exists
#   fast_run NAME SEED RESERVE [FLAGS]   one timed run of the fast recipe
#   fast_runs NAME RESERVE [FLAGS]   fast_run for seeds 0-3 while time is left
#   watch_runs LOG...        follow background runs until they end or the deadline
#
# The device machine needs .devcarry/ (carried): whl/ (albumentations and its
# needs, torchinfo), cifar10-jpeg75.pack (benchmarks/device/pack_images.py pack)
# and commit (the commit being measured); benchmarks/device/prepare_carry.sh
# builds it.
set -u
START=$(date +%s)
OUT=${OUT:-/tmp/gpu_out}
mkdir -p "$OUT"
exec > >(tee -a "$OUT/session.log") 2>&1
elapsed() { echo $(($(date +%s) - START)); }
stamp() { echo "[$(elapsed)s] $*"; }
export PYTHONUNBUFFERED=1
export NO_ALBUMENTATIONS_UPDATE=1  # no network there: no version check
export CIFAR_LIB_COMMIT=$(cat .devcarry/commit 2>/dev/null || echo unknown)

stamp "install the missing packages"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
    --upgrade --target /tmp/site .devcarry/whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD

# Python's compiled bytecode. The fourth session's profiled run spent 6.5 s
# compiling 1,806 source files (results/gpu/profile_h100_fast_34b4c87.txt): the
# device's image seems to hold PyTorch without bytecode and, as the machine here,
# to set PYTHONDONTWRITEBYTECODE=1 (the first line below prints both), so every
# command compiled what it imported, also inside the timed preparation, where
# PyTorch's first optimiser imports torch._dynamo (3.4 s compiled, 0.9 s from
# bytecode, on the 2-core CPU here). A pip install compiles the bytecode, as a
# student's machine or Colab has it: the calls keep it in /tmp/pycache and
# compile what training imports before any run is timed.
python3 -c "import os, sys, pathlib, torch
cached = any((pathlib.Path(torch.__file__).parent / '__pycache__').glob('*.pyc'))
print('bytecode: PYTHONDONTWRITEBYTECODE =', os.environ.get('PYTHONDONTWRITEBYTECODE'),
      '; compiled files beside torch:', cached)"
unset PYTHONDONTWRITEBYTECODE
export PYTHONPYCACHEPREFIX=/tmp/pycache
stamp "compile the bytecode of what training imports"
python3 -c "import cifar_lib.train, cifar_lib.plots, torch._dynamo, torch.cuda.graphs, matplotlib.pyplot" ||
    echo "(the bytecode warm-up failed: the runs compile what they import)"

DATA=/tmp/cifar10-jpeg75
RUNS=/tmp/runs
mkdir -p "$RUNS"
TRAIN="python3 -m cifar_lib train --data-dir $DATA --device cuda --no-progress"
# Only what this call wrote or changed: a warm machine keeps the runs of earlier
# calls, and together they can pass the 16 MiB that one file may bring back.
touch /tmp/call_start
pack() {
    local changed
    changed=$(cd $RUNS && find . -mindepth 1 -maxdepth 1 -newer /tmp/call_start)
    [ -n "$changed" ] || return 0
    # exit status 1: a file changed while it was read (a run still training)
    tar czf "$OUT/runs.tmp" -C $RUNS --exclude=final_model.pt --exclude='*.png' \
        --warning=no-file-changed $changed
    [ $? -le 1 ] && mv "$OUT/runs.tmp" "$OUT/runs.tgz"
}

# unpack_data: the packed images into $DATA, decoded and cached, unless a call
# before this one on the same machine did it already.
unpack_data() {
    if [ -f "$RUNS/decoded" ]; then echo "data already unpacked and decoded"; return; fi
    python3 benchmarks/device/pack_images.py unpack .devcarry/cifar10-jpeg75.pack \
        $DATA && python3 -c "from cifar_lib.data import load_cifar10
load_cifar10('$DATA')" && touch "$RUNS/decoded" && echo decoded
}

# unpack_data_and_test_graphs: unpack_data in the background while the CUDA tests
# of the captured step run (unless they passed in an earlier call on this machine
# at the same commit); GRAPH becomes --no-cuda-graph if they fail (for the runs'
# command lines). Returns 1 if the data could not be unpacked.
unpack_data_and_test_graphs() {
    stamp "unpack and decode the data, meanwhile the CUDA tests"
    unpack_data > "$RUNS/decode.log" 2>&1 &
    local decode=$!
    GRAPH=""
    local passed=$RUNS/graph_tests_passed_$CIFAR_LIB_COMMIT
    if [ -f "$passed" ]; then
        echo "the CUDA tests passed in an earlier call on this machine, same commit"
    elif python3 -m pytest -q -o addopts="-p no:cacheprovider" tests/test_graphs.py; then
        touch "$passed"
    else
        GRAPH="--no-cuda-graph"
        stamp "the captured step failed its tests: the runs below launch every kernel"
    fi
    wait $decode || { cat "$RUNS/decode.log"; return 1; }
    cat "$RUNS/decode.log"
}

# free_folder PATH: PATH, or PATH_2, PATH_3, ... the first that does not exist.
free_folder() {
    local path=$1 n=2
    while [ -e "$path" ]; do path=$1_$n; n=$((n + 1)); done
    echo "$path"
}

# fast_run NAME SEED RESERVE [FLAGS]: the fast recipe alone on the GPU into
# $RUNS/NAME_seedSEED (NAME_seedSEED_2, _3, ... where an earlier call on this
# machine left one), timed as a whole command, given the time left but RESERVE
# seconds; returns 1 without running when less than 30 s would be left.
fast_run() {
    local name=$1 seed=$2 left=$((LIMIT - $(elapsed) - $3)); shift 3
    [ $left -gt 30 ] || return 1
    local out=$(free_folder $RUNS/${name}_seed$seed)
    stamp "fast, seed $seed $*, alone on the GPU, timed as a whole command" \
        "(at most ${left}s), into $out"
    local begin=$(date +%s%N)
    timeout $left $TRAIN --recipe fast --seed $seed --out $out "$@"
    echo "fast seed $seed $*: whole command" \
        "$(( ($(date +%s%N) - begin) / 1000000 )) ms (Python start, cached data" \
        "loaded, whitening, training, evaluation, files)"
    pack
}

# watch_runs LOG...: while the runs started in the background go on and the
# deadline is 25 s away or more, every 20 s pack and print each LOG's last line
# (looking every second whether they have ended, so that the next step starts at
# once); at the deadline stop what still runs (a run's checkpoint.pt can be
# resumed).
watch_runs() {
    local shown=$(elapsed)
    while [ -n "$(jobs -r)" ] && [ "$(elapsed)" -lt $((LIMIT - 25)) ]; do
        sleep 1
        [ $(($(elapsed) - shown)) -ge 20 ] || continue
        shown=$(elapsed)
        pack
        stamp "$(tail -qn1 "$@" | cut -c1-160)"
    done
    if [ -n "$(jobs -r)" ]; then
        stamp "deadline: stopping what still runs (its checkpoint.pt can be resumed)"
        kill $(jobs -p) 2>/dev/null
        pkill -f "cifar_lib train" 2>/dev/null
        sleep 3
    fi
}

# fast_runs NAME RESERVE [FLAGS]: fast_run for seeds 0-3 while time is left.
fast_runs() {
    local name=$1 reserve=$2; shift 2
    for seed in 0 1 2 3; do
        fast_run $name $seed $reserve "$@" || break
    done
}
