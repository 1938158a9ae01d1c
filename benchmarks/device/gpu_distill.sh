#!/usr/bin/env bash
# A call on a lent GPU machine for the 92% of the `best` recipe by distillation
# (cifar_lib.distill): first a teacher outside the assignment's rules
# (CIFAR10TeacherResNet, 3.4 million parameters) trained with the best recipe's
# settings but without label smoothing (a teacher trained with it distils worse:
# Mueller, Kornblith and Hinton, "When does label smoothing help?", 2019), then the
# best recipe's model trained on the labels and on that teacher's predictions for
# as many epochs as fit before the deadline (fit_epochs.py --teacher-history, at
# most the recipe's 183). The teacher's weights (13.6 MB) stay on the machine,
# outside the packed runs: only its run.json, history.json and log come back. The
# teacher taught is its final weights, not those of its best test epoch, so that
# the test set chooses nothing.
#
#   bash benchmarks/device/gpu_distill.sh SECONDS [TEACHER_EPOCHS]
# TEACHER_EPOCHS defaults to 150. In the fifth session (results/gpu/README.md) a
# teacher of 40 epochs (1.13 s each after the first, 91.16%) taught the best
# recipe to 91.45% in 183 epochs; the teacher's epoch costs little beside the
# student's (1.77 s). Output in $OUT as gpu_best.sh's (session.log,
# runs.tgz with teacher/ and best_distilled/, or teacher_2/ and
# best_distilled_2/ on a machine where an earlier call left them).
LIMIT=${1:-580}
TEACHER_EPOCHS=${2:-150}
source "$(dirname "$0")/common.sh"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
unpack_data_and_test_graphs || exit 1

# Folders and logs not used by an earlier call on this machine (free_folder)
TEACHER=$(free_folder /tmp/teacher)  # outside $RUNS: its weights are not packed
KEPT=$(free_folder $RUNS/teacher)  # what comes back of it
STUDENT=$(free_folder $RUNS/best_distilled)
stamp "teacher: CIFAR10TeacherResNet, $TEACHER_EPOCHS epochs, no label smoothing"
$TRAIN --recipe best --model CIFAR10TeacherResNet --epochs $TEACHER_EPOCHS \
    --label-smoothing 0 $GRAPH --out $TEACHER > $KEPT.log 2>&1 &
watch_runs $KEPT.log
mkdir -p $KEPT && cp $TEACHER/run.json $TEACHER/history.json $KEPT/
tail -n 2 $KEPT.log
[ -f $TEACHER/final_model.pt ] || { stamp "the teacher did not finish"; pack; exit 1; }

EPOCHS=$(python3 benchmarks/device/fit_epochs.py $((LIMIT - $(elapsed) - 45)) \
    --teacher-history $TEACHER/history.json --margin 0.85 --most 183) || exit 1
[ "$EPOCHS" -ge 43 ] || { stamp "only $EPOCHS epochs would fit: no student"; pack; exit 1; }
stamp "best, $EPOCHS epochs, taught by the teacher, alone on the GPU until the deadline"
$TRAIN --recipe best --epochs $EPOCHS --teacher $TEACHER/final_model.pt $GRAPH \
    --out $STUDENT > $STUDENT.log 2>&1 &
watch_runs $STUDENT.log
tail -n 3 $STUDENT.log
pack
stamp "done"
