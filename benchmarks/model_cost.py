"""What a model costs on this machine against another, in the fast recipe: training
images per second (at the recipe's batch size, every other setting as shipped) of
each model named, taking turns round by round in one process
(``activation_cost.take_turns``), so that a burst of load on the machine hits them
alike; each figure is the median of
the rounds (``activation_cost.rows_against``), on random CIFAR-sized images. Times
are given against the first model.

    python benchmarks/model_cost.py --out results/bench_cpu_depthwise.json \\
        CIFAR10ResNetGELU CIFAR10DepthwiseResNet

With ``--batch-sizes``, one model at several batch sizes instead (the rest of the
fast recipe as shipped), times per image against the first size:

    python benchmarks/model_cost.py --out results/bench_cpu_batch64.json \\
        --batch-sizes 32,64 CIFAR10ResNetGELU
"""

from __future__ import annotations

import argparse

import torch
from activation_cost import rows_against, take_turns

from cifar_lib.files import atomic_write_json
from cifar_lib.models import MODELS
from cifar_lib.results import provenance
from cifar_lib.train import get_recipe


def _sizes(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a list of whole numbers such as 32,64"
        ) from None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="+", help="model names; the first is the base")
    parser.add_argument("--out", required=True)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=40, help="steps per round")
    parser.add_argument(
        "--batch-sizes",
        type=_sizes,
        metavar="N,N,...",
        help="compare one model at these batch sizes (the first is the base)",
    )
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.steps < 1:
        parser.error("--rounds and --steps: give 1 or more.")
    unknown = [name for name in args.models if name not in MODELS]
    if args.batch_sizes:
        sizes = args.batch_sizes
        if unknown or len(args.models) != 1:
            parser.error(f"with --batch-sizes give one model of {sorted(MODELS)}.")
        if len(sizes) < 2 or len(set(sizes)) < len(sizes) or min(sizes) < 1:
            parser.error(
                "--batch-sizes: give two or more different sizes of 1 or more."
            )
        variants = {
            f"batch {n}": {"model": args.models[0], "batch_size": n} for n in sizes
        }
    else:
        if unknown or len(args.models) < 2 or len(set(args.models)) < len(args.models):
            parser.error(f"give two or more different models of {sorted(MODELS)}.")
        batch = get_recipe("fast").batch_size
        variants = {name: {"model": name, "batch_size": batch} for name in args.models}
    rates = take_turns(variants, args.rounds, args.steps)
    base = next(iter(variants))
    rows = [
        {**variants[name], **row}
        for name, row in rows_against(rates, base, "first").items()
    ]
    for row in rows:
        print(
            f"{row['model']:<24} batch {row['batch_size']:<4} end to end "
            f"{row['train_images_per_s']:6.0f} images/s "
            f"({row['train_time_vs_first']:.2f}x the first's time), model step "
            f"{row['model_images_per_s']:6.0f} ({row['model_time_vs_first']:.2f}x)"
        )
    atomic_write_json(
        args.out,
        {
            "what": "training images per second of the fast recipe by model and "
            "batch size, end to end (augmentation, forward, backward, step) and the "
            "model step alone (one fixed batch)",
            **provenance(torch.device("cpu")),
            "threads": torch.get_num_threads(),
            "rounds": args.rounds,
            "steps": args.steps,
            "models": rows,
        },
    )


if __name__ == "__main__":
    main()
