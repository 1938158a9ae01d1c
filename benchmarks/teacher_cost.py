"""What a teacher's forward passes cost on this machine: one training epoch of a
recipe (the fast one by default) on a subset, alone (``--teacher ''``) and taught
by the shipped teacher (``--teacher teacher_resnet``, the best recipe's own), the
two taking turns in separate processes, a few rounds; writes
``results/bench_cpu_teacher.json`` (``results/bench_cpu_teacher_best.json`` for
``--recipe best``).

    OMP_NUM_THREADS=2 python benchmarks/teacher_cost.py \
        --data-dir ../shared/data/cifar10-jpeg75 [--recipe best]

Each round runs ``python -m cifar_lib train --recipe R --epochs 1 --subset N
--target 1.0`` twice (without, then with the teacher) and reads the epoch's
``train_seconds`` (training only: the evaluation is the same either way).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cifar_lib.data import load_cifar10  # noqa: E402
from cifar_lib.files import atomic_write_json  # noqa: E402
from cifar_lib.notebook import describe_data  # noqa: E402
from cifar_lib.results import provenance  # noqa: E402

VARIANTS = {
    "alone": ["--teacher", ""],
    "taught by teacher_resnet": ["--teacher", "teacher_resnet"],
}


def train_seconds(
    recipe: str, data_dir: str, subset: int, extra: list[str], out: Path
) -> float:
    """The training seconds of one epoch of ``recipe``, in its own process."""
    command = [sys.executable, "-m", "cifar_lib", "train", "--recipe", recipe]
    command += ["--epochs", "1", "--subset", str(subset), "--target", "1.0"]
    command += ["--data-dir", data_dir, "--no-progress", "--out", str(out), *extra]
    subprocess.run(command, check=True, capture_output=True, cwd=ROOT)
    return json.loads((out / "history.json").read_text())[0]["train_seconds"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, allow_abbrev=False)
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--recipe", choices=("fast", "best"), default="fast")
    parser.add_argument("--subset", type=int, default=5120)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    suffix = "" if args.recipe == "fast" else f"_{args.recipe}"
    args.out = args.out or ROOT / f"results/bench_cpu_teacher{suffix}.json"
    seconds: dict[str, list[float]] = {name: [] for name in VARIANTS}
    with tempfile.TemporaryDirectory() as scratch:
        for round_ in range(args.rounds):
            for index, (name, extra) in enumerate(VARIANTS.items()):
                out = Path(scratch) / f"{round_}_{index}"
                seconds[name].append(
                    train_seconds(args.recipe, args.data_dir, args.subset, extra, out)
                )
                print(f"round {round_ + 1}, {name}: {seconds[name][-1]:.2f} s")
    alone, taught = seconds.values()
    ratios = [round(t / a, 2) for a, t in zip(alone, taught, strict=True)]
    atomic_write_json(
        args.out,
        {
            "what": (
                f"seconds of one training epoch of the {args.recipe} recipe on "
                f"{args.subset:,} "
                "training images, alone and taught by the shipped teacher (--teacher "
                "teacher_resnet); the two taking turns in separate processes, "
                f"{args.rounds} rounds"
            ),
            "command": "python benchmarks/teacher_cost.py "
            + " ".join(argv or sys.argv[1:]),
            "data": describe_data(load_cifar10(args.data_dir)),
            **provenance(),
            "train_seconds": seconds,
            "ratios": ratios,
        },
    )
    print(f"taught / alone: {ratios}; written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
