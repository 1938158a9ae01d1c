"""What a model costs on this machine against another, in the fast recipe: training
images per second (batch 32, every other setting as shipped) of each model named,
taking turns round by round in one process (``activation_cost.take_turns``), so
that a burst of load on the machine hits them alike; each figure is the median of
the rounds (``activation_cost.rows_against``), on random CIFAR-sized images. Times
are given against the first model.

    python benchmarks/model_cost.py --out results/bench_cpu_depthwise.json \\
        CIFAR10ResNetGELU CIFAR10DepthwiseResNet
"""

from __future__ import annotations

import argparse

import torch
from activation_cost import rows_against, take_turns

from cifar_lib.files import atomic_write_json
from cifar_lib.models import MODELS
from cifar_lib.results import provenance


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="+", help="model names; the first is the base")
    parser.add_argument("--out", required=True)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=40, help="steps per round")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.steps < 1:
        parser.error("--rounds and --steps: give 1 or more.")
    unknown = [name for name in args.models if name not in MODELS]
    if unknown or len(args.models) < 2 or len(set(args.models)) < len(args.models):
        parser.error(f"give two or more different models of {sorted(MODELS)}.")
    rates = take_turns({name: name for name in args.models}, args.rounds, args.steps)
    rows = [
        {"model": name, **row}
        for name, row in rows_against(rates, args.models[0], "first").items()
    ]
    for row in rows:
        print(
            f"{row['model']:<24} end to end {row['train_images_per_s']:6.0f} images/s "
            f"({row['train_time_vs_first']:.2f}x the first's time), model step "
            f"{row['model_images_per_s']:6.0f} ({row['model_time_vs_first']:.2f}x)"
        )
    atomic_write_json(
        args.out,
        {
            "what": "training images per second of the fast recipe (batch 32) by "
            "model, end to end (augmentation, forward, backward, step) and the model "
            "step alone (one fixed batch)",
            **provenance(torch.device("cpu")),
            "threads": torch.get_num_threads(),
            "rounds": args.rounds,
            "steps": args.steps,
            "models": rows,
        },
    )


if __name__ == "__main__":
    main()
