#!/usr/bin/env bash
# A call on a lent GPU machine for the 92% of the `best` recipe by distillation
# (cifar_lib.distill): first a teacher outside the assignment's rules
# (CIFAR10TeacherResNet, 3.4 million parameters) trained with the best recipe's
# settings but without label smoothing (a teacher trained with it distils worse:
# Mueller, Kornblith and Hinton, "When does label smoothing help?", 2019), then the
# best recipe's model trained on the labels and on that teacher's predictions for
# as many epochs as fit before the deadline (fit_epochs.py --teacher-history, at
# most the recipe's 183). The teacher taught is its final weights, not those of its
# best test epoch, so that the test set chooses nothing. Its run.json, history.json
# and log come back in runs.tgz, and its final weights (13.6 MB) on their own as
# $OUT/teacher_final_model.pt, so that a later session can teach with them again
# without training them (carry them in .devcarry/, e.g. .devcarry/teacher.pt, or
# ship them: benchmarks/ship_teacher.py). The second and third forms below teach
# with a teacher already trained and train none.
#
#   bash benchmarks/device/gpu_distill.sh SECONDS [TEACHER_EPOCHS]
#   bash benchmarks/device/gpu_distill.sh SECONDS TEACHER_FILE TEACHER_HISTORY
#   bash benchmarks/device/gpu_distill.sh SECONDS teacher_resnet [TRAIN FLAGS]
# TEACHER_EPOCHS defaults to 150. In the fifth session (results/gpu/README.md) a
# teacher of 40 epochs (1.13 s each after the first, 91.16%) taught the best
# recipe to 91.45% in 183 epochs; the teacher's epoch costs little beside the
# student's (1.77 s). In the sixth, a teacher of 150 epochs (92.09% after its last)
# taught it to 91.76% in the 106 epochs that fitted. The second form teaches with
# a carried weights file instead; TEACHER_HISTORY (its run's history.json, or its
# record in results/ablations/) tells fit_epochs.py what its forward passes cost.
# The third teaches with the shipped teacher (pretrained/teacher_resnet.pt, the
# sixth session's, `train --teacher teacher_resnet`), its history from its record;
# TRAIN FLAGS, if given, change the student's recipe (its folder is then
# best_distilled_changed; they come after --epochs and --out, so do not give
# --out; --epochs N there overrides the count that fit_epochs.py chose, and the
# deadline is then yours to keep, as in the seventh session's `--seed 1 --epochs
# 183`), e.g. the stronger augmentation of the fourth session:
#   bash benchmarks/device/gpu_distill.sh 290 teacher_resnet \
#       --augmentation scale=0.1,hole_p=0.5
# Output in $OUT as gpu_best.sh's (session.log, runs.tgz with teacher/ and
# best_distilled/, or teacher_2/ and best_distilled_2/ on a machine where an
# earlier call left them).
LIMIT=${1:-580}
TEACHER_EPOCHS=${2:-150}
HISTORY=${3:-}
FLAGS=()
if [ "$TEACHER_EPOCHS" = teacher_resnet ]; then
    HISTORY=results/ablations/h100_teacher_resnet_150_epochs.json
    FLAGS=("${@:3}")
fi
if [ -f "$TEACHER_EPOCHS" ] && [ ! -f "$HISTORY" ]; then
    echo "error: with a teacher's weights file give its history too" >&2
    exit 2
fi
source "$(dirname "$0")/common.sh"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
unpack_data_and_test_graphs || exit 1

# Folders and logs not used by an earlier call on this machine (free_folder)
STUDENT=$(free_folder $RUNS/best_distilled${FLAGS[0]:+_changed})
if [ -f "$TEACHER_EPOCHS" ] || [ "$TEACHER_EPOCHS" = teacher_resnet ]; then
    TEACHER_FILE=$TEACHER_EPOCHS
    stamp "teacher: $TEACHER_FILE (history: $HISTORY)"
else
    TEACHER=$(free_folder /tmp/teacher)  # outside $RUNS: its weights are not packed
    KEPT=$(free_folder $RUNS/teacher)  # what comes back of it
    stamp "teacher: CIFAR10TeacherResNet, $TEACHER_EPOCHS epochs, no label smoothing"
    # --teacher '': the best recipe is itself taught now; its teacher learns alone
    $TRAIN --recipe best --model CIFAR10TeacherResNet --epochs $TEACHER_EPOCHS \
        --label-smoothing 0 --teacher '' $GRAPH --out $TEACHER > $KEPT.log 2>&1 &
    watch_runs $KEPT.log
    mkdir -p $KEPT && cp $TEACHER/run.json $TEACHER/history.json $KEPT/
    tail -n 2 $KEPT.log
    [ -f $TEACHER/final_model.pt ] || { stamp "the teacher did not finish"; pack; exit 1; }
    TEACHER_FILE=$TEACHER/final_model.pt
    HISTORY=$TEACHER/history.json
    cp $TEACHER_FILE "$OUT/teacher_final_model.pt"
fi

EPOCHS=$(python3 benchmarks/device/fit_epochs.py $((LIMIT - $(elapsed) - 45)) \
    --teacher-history $HISTORY --margin 0.85 --most 183) || exit 1
[ "$EPOCHS" -ge 43 ] || { stamp "only $EPOCHS epochs would fit: no student"; pack; exit 1; }
stamp "best, $EPOCHS epochs, taught by the teacher, ${FLAGS[*]:-as the recipe is}," \
    "alone on the GPU until the deadline"
$TRAIN --recipe best --epochs $EPOCHS --teacher $TEACHER_FILE $GRAPH "${FLAGS[@]}" \
    --out $STUDENT > $STUDENT.log 2>&1 &
watch_runs $STUDENT.log
tail -n 3 $STUDENT.log
pack
stamp "done"
