"""How many epochs of the long runs fit in the seconds left of a GPU session.

    python3 benchmarks/device/fit_epochs.py SECONDS BENCH.json [BENCH.json ...]

Each BENCH.json is a `python -m cifar_lib bench --out` result for one of the runs
that will train side by side on the one GPU. A run's epoch is taken to cost its
50,000 training images at the measured end-to-end rate, a quarter more for the two
evaluations of 10,000 test images (the average and the raw weights, forward passes
only) and the files, and half a second; the runs share the GPU, so together they
need the sum of their epochs. Prints the number of epochs (at most --most) that
fills --margin of SECONDS, so that every run finishes its schedule: a one-cycle
schedule cut off before its end says little about where it would have ended.

    python3 benchmarks/device/fit_epochs.py SECONDS --teacher-history HISTORY.json

sizes a distilled run instead (gpu_distill.sh): an epoch of the student, measured
alone (--student-epoch-s, 1.55 s for the best recipe on an H100), plus the
teacher's forward passes over the same images, taken as a third of the teacher's
own training epoch (the median of its epochs after the first, from the
history.json of its run, or the run's record in results/ablations/): a forward
pass is about a third of the arithmetic of a training step (forward, then backward
through activations and weights).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path

TRAIN_IMAGES = 50_000
EVALUATION_SHARE = 0.25  # two forward passes over 10,000 images, and the files
EPOCH_OVERHEAD_S = 0.5


def epoch_seconds(train_images_per_s: float) -> float:
    """The estimated seconds of one epoch of a run alone on the GPU."""
    return TRAIN_IMAGES / train_images_per_s * (1 + EVALUATION_SHARE) + EPOCH_OVERHEAD_S


def epochs_that_fit(
    seconds: float, rates: list[float], margin: float = 0.8, most: int = 150
) -> int:
    """Epochs for each of the runs with these rates (images/s, each measured alone)
    to finish side by side within ``margin`` of ``seconds``; 0 if not even one fits."""
    if not rates or min(rates) <= 0:
        raise ValueError("give at least one positive rate")
    together = sum(epoch_seconds(rate) for rate in rates)
    return _epochs(seconds, together, margin, most)


def _epochs(seconds: float, epoch_s: float, margin: float, most: int) -> int:
    """Whole epochs of ``epoch_s`` seconds in ``margin`` of ``seconds``, 0 to
    ``most``."""
    return max(0, min(most, math.floor(margin * seconds / epoch_s)))


def distilled_epoch_seconds(student_epoch_s: float, teacher_history: list) -> float:
    """An epoch of the student with the teacher's forward passes added (see the
    module's docstring)."""
    times = [row["train_seconds"] for row in teacher_history]
    if not times or student_epoch_s <= 0:
        raise ValueError("give the teacher's history and a positive student epoch")
    return student_epoch_s + statistics.median(times[1:] or times) / 3


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("seconds", type=float)
    parser.add_argument("bench", nargs="*", help="bench JSON files, one per run")
    parser.add_argument("--margin", type=float, default=0.8)
    parser.add_argument("--most", type=int, default=150)
    parser.add_argument("--teacher-history", help="history.json of the teacher's run")
    parser.add_argument("--student-epoch-s", type=float, default=1.55)
    args = parser.parse_args(argv)
    try:
        if args.teacher_history:
            history = json.loads(Path(args.teacher_history).read_text())
            if isinstance(history, dict):  # a record in results/ablations/
                history = history["history"]
            epoch = distilled_epoch_seconds(args.student_epoch_s, history)
            epochs = _epochs(args.seconds, epoch, args.margin, args.most)
        else:
            rates = [
                json.loads(Path(path).read_text())["train_images_per_s"]
                for path in args.bench
            ]
            epochs = epochs_that_fit(args.seconds, rates, args.margin, args.most)
    except (OSError, KeyError, TypeError, ValueError) as error:
        source = args.teacher_history or args.bench
        print(f"error: no epoch count from {source}: {error}", file=sys.stderr)
        return 2
    print(epochs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
