#!/usr/bin/env bash
# A session's later call on a lent GPU machine, for the fast recipe's 20 seconds:
# the recipe alone on the GPU for seeds 0-3 while time is left, each timed as a
# whole command (common.sh: fast_runs). At commit 73da03f, when cuDNN's timing of
# its algorithms was still the fast recipe's default, this script ran seed 0 with
# it and with cuDNN's heuristics (--no-cudnn-benchmark), then seeds 1 and 2 with
# the heuristics, which reached 85% sooner (results/gpu/README.md, third session);
# they are now the recipe's setting. Output in $OUT as gpu_best.sh's.
#
#   bash benchmarks/device/gpu_fast.sh SECONDS [TRAIN FLAGS]
# TRAIN FLAGS, if given, change the recipe for these runs (their folders are then
# named after them, fast_batchsize_64_lr_0.1_ema_0.996_seedN below), e.g. the
# fast recipe at batch 64, which reached 85% at epoch 8 with two of seeds 0, 1, 3
# on an H100 (results/gpu/README.md, fifth session):
#   bash benchmarks/device/gpu_fast.sh 150 --batch-size 64 --lr 0.1 --ema 0.996
LIMIT=${1:-170}
shift $(($# > 0 ? 1 : 0))
source "$(dirname "$0")/common.sh"
unpack_data || exit 1
NAME=fast
[ $# -eq 0 ] || NAME=fast$(printf '_%s' "$@" | tr -d -- -)
fast_runs $NAME 5 "$@"
pack
stamp "done"
