"""What glibc's malloc costs a CPU training run when it hands freed memory back to
the system (``speed.keep_freed_memory``, which ``train`` and ``bench`` call on the
CPU): training images per second of each recipe named, with freed memory kept and
with glibc's defaults. The setting holds for a whole process, so each measurement
is a fresh process running one round of ``bench`` (its warm-up, then its steps);
the two settings take turns, round by round, the first of a round alternating, so
that a burst of load on the machine hits them alike. Each process also counts its
page faults and its time in the kernel. Figures are medians of the rounds, on
random CIFAR-sized images; times are the defaults' against the kept memory's.

    python benchmarks/malloc_cost.py --out results/bench_cpu_malloc.json best fast
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys

import torch

SETTINGS = ("kept", "default")


def one_round(recipe: str, setting: str, steps: int) -> dict:
    """One round of ``bench`` in this process (``setting``: ``kept`` as the
    package does, or ``default``, glibc left alone), with the page faults and
    kernel seconds of the whole round."""
    from cifar_lib import train
    from cifar_lib.bench import run_benchmark

    if setting == "default":
        train.keep_freed_memory = lambda: False  # what configure_device calls
    before = resource.getrusage(resource.RUSAGE_SELF)
    result = run_benchmark(
        train.get_recipe(recipe),
        torch.device("cpu"),
        steps=steps,
        rounds=1,
        compare=False,
        log=lambda *args: None,
    )
    after = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "train_images_per_s": result["train_images_per_s"],
        "model_images_per_s": result["model_images_per_s"],
        "page_faults": after.ru_minflt - before.ru_minflt,
        "kernel_seconds": round(after.ru_stime - before.ru_stime, 2),
        "user_seconds": round(after.ru_utime - before.ru_utime, 2),
    }


def take_turns(recipes: list[str], rounds: int, steps: dict[str, int]) -> dict:
    """{recipe: {setting: [one_round's dict per round]}}, each in a fresh process,
    after one process per recipe that is not counted (it compiles what Numba has
    not cached yet: the first process after a change of ``speed.py`` does)."""

    def child(name: str, setting: str) -> dict:
        command = [sys.executable, __file__, "--child", name, setting, str(steps[name])]
        done = subprocess.run(command, capture_output=True, text=True, check=True)
        return json.loads(done.stdout.splitlines()[-1])

    for name in recipes:
        child(name, "kept")
    measured = {name: {setting: [] for setting in SETTINGS} for name in recipes}
    for i in range(rounds):
        for name in recipes:
            for setting in SETTINGS[:: 1 if i % 2 == 0 else -1]:
                row = child(name, setting)
                measured[name][setting].append(row)
                print(
                    f"round {i + 1}: {name:<5} {setting:<8} "
                    f"{row['train_images_per_s']:7.1f} images/s, "
                    f"{row['page_faults']:>9,} page faults, "
                    f"{row['kernel_seconds']:5.2f} s in the kernel",
                    flush=True,
                )
    return measured


def summary(recipe: str, by_setting: dict) -> dict:
    """Medians of each setting's rounds and the defaults' time against kept."""
    median = {
        setting: {key: statistics.median(row[key] for row in rows) for key in rows[0]}
        for setting, rows in by_setting.items()
    }
    kept, default = median["kept"], median["default"]
    per_round = [
        k["train_images_per_s"] / d["train_images_per_s"]
        for k, d in zip(by_setting["kept"], by_setting["default"], strict=True)
    ]
    return {
        "recipe": recipe,
        "kept": kept,
        "default": default,
        "default_time_vs_kept": round(
            kept["train_images_per_s"] / default["train_images_per_s"], 3
        ),
        "default_model_time_vs_kept": round(
            kept["model_images_per_s"] / default["model_images_per_s"], 3
        ),
        "default_time_vs_kept_per_round": [round(r, 3) for r in per_round],
        "rounds": by_setting,
    }


def main(argv: list[str] | None = None) -> None:
    from cifar_lib.files import atomic_write_json
    from cifar_lib.results import provenance
    from cifar_lib.train import RECIPES

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("recipes", nargs="+", help=f"of {sorted(RECIPES)}")
    parser.add_argument("--out", required=True)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--steps", type=int, help="steps per round (default: 2,560 images' worth)"
    )
    args = parser.parse_args(argv)
    if args.rounds < 1 or (args.steps is not None and args.steps < 1):
        parser.error("--rounds and --steps: give 1 or more.")
    if any(name not in RECIPES for name in args.recipes):
        parser.error(f"recipes: choose from {sorted(RECIPES)}.")
    if len(set(args.recipes)) < len(args.recipes):
        parser.error("name each recipe once.")
    steps = {
        name: args.steps or max(1, 2560 // RECIPES[name].batch_size)
        for name in args.recipes
    }
    measured = take_turns(args.recipes, args.rounds, steps)
    rows = [summary(name, measured[name]) for name in args.recipes]
    for row in rows:
        print(
            f"{row['recipe']}: kept {row['kept']['train_images_per_s']:.0f} images/s, "
            f"default {row['default']['train_images_per_s']:.0f}: "
            f"{row['default_time_vs_kept']:.2f}x the time per image"
        )
    atomic_write_json(
        args.out,
        {
            "what": "training images per second on the CPU with freed memory kept "
            "(speed.keep_freed_memory) and with glibc's defaults, one fresh process "
            "per round and setting; page faults and kernel seconds of each round",
            **provenance(torch.device("cpu")),
            "threads": torch.get_num_threads(),
            "rounds": args.rounds,
            "steps": steps,
            "recipes": rows,
        },
    )


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        _, _, name, setting, steps = sys.argv
        print(json.dumps(one_round(name, setting, int(steps))))
    else:
        main()
