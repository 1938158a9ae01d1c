"""What the fast recipe's activation costs on this machine: training images per
second of the fast recipe (batch 32, every other setting as shipped) with ReLU
(`CIFAR10ResNet`), exact GELU (`CIFAR10ResNetGELU`, the recipe's), GELU in its
tanh approximation (``nn.GELU(approximate="tanh")``, defined here: it is not a
model of the package) and SiLU (`CIFAR10ResNetSiLU`). They take turns in one
process, round by round, so that a burst of load on the machine hits them alike;
each figure is the median of the rounds, on random CIFAR-sized images (speed does
not depend on the pixels).

    python benchmarks/activation_cost.py --out results/bench_cpu_activations.json
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import statistics

import torch
from torch import nn

from cifar_lib import models
from cifar_lib.bench import _Setup, random_arrays
from cifar_lib.files import atomic_write_json
from cifar_lib.results import provenance
from cifar_lib.train import get_recipe


class CIFAR10ResNetGELUTanh(models.CIFAR10ResNet):
    """``CIFAR10ResNet`` with every ReLU replaced by the tanh approximation of GELU."""

    def __init__(self, num_classes: int = 10, dropout: float = 0.0) -> None:
        super().__init__(num_classes, dropout)
        models.replace_relu(self, functools.partial(nn.GELU, approximate="tanh"))


VARIANTS = {
    "ReLU": "CIFAR10ResNet",
    "GELU (exact, erf)": "CIFAR10ResNetGELU",
    "GELU (tanh approximation)": "CIFAR10ResNetGELUTanh",
    "SiLU": "CIFAR10ResNetSiLU",
}


def take_turns(variants: dict[str, dict], rounds: int, steps: int) -> dict:
    """Training images per second of the fast recipe with each variant of
    ``variants`` (label: the recipe's fields to change, such as ``{"model":
    "CIFAR10ResNetSiLU"}`` or ``{"batch_size": 64}``), taking turns round by round
    on the CPU: {label: {"train": [a rate per round], "model": [...]}}."""
    device = torch.device("cpu")
    recipe = get_recipe("fast")
    recipes = {name: dataclasses.replace(recipe, **c) for name, c in variants.items()}
    largest = max(r.batch_size for r in recipes.values())
    arrays = random_arrays(max(10_000, largest * (steps + 5)))
    setups = {
        name: _Setup(variant, device, arrays, reference=False)
        for name, variant in recipes.items()
    }
    for setup in setups.values():  # warm-up: allocator, kernels, caches
        setup.end_to_end(5)
    rates = {name: {"train": [], "model": []} for name in setups}
    for turn in range(rounds):
        for name, setup in setups.items():
            rates[name]["train"].append(round(setup.end_to_end(steps), 1))
            rates[name]["model"].append(round(setup.model_step(steps), 1))
        print(turn, json.dumps({n: r["model"][-1] for n, r in rates.items()}))
    return rates


def rows_against(rates: dict, base: str, suffix: str) -> dict[str, dict]:
    """Per label of ``rates`` (as ``take_turns`` gives them): the median rates, the
    time per image against ``base``'s (keys ``train_time_vs_SUFFIX`` and
    ``model_time_vs_SUFFIX``) and the rates of each round."""
    median = {
        name: {part: statistics.median(values) for part, values in parts.items()}
        for name, parts in rates.items()
    }
    first = median[base]
    return {
        name: {
            "train_images_per_s": round(parts["train"], 1),
            "model_images_per_s": round(parts["model"], 1),
            f"train_time_vs_{suffix}": round(first["train"] / parts["train"], 3),
            f"model_time_vs_{suffix}": round(first["model"] / parts["model"], 3),
            "train_each_round": rates[name]["train"],
            "model_each_round": rates[name]["model"],
        }
        for name, parts in median.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", required=True)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=40, help="steps per round")
    args = parser.parse_args()
    if args.rounds < 1 or args.steps < 1:
        parser.error("--rounds and --steps: give 1 or more.")
    models.MODELS["CIFAR10ResNetGELUTanh"] = CIFAR10ResNetGELUTanh
    variants = {name: {"model": model} for name, model in VARIANTS.items()}
    rates = take_turns(variants, args.rounds, args.steps)
    rows = [
        {"activation": name, "model": VARIANTS[name], **row}
        for name, row in rows_against(rates, "ReLU", "relu").items()
    ]
    for row in rows:
        print(
            f"{row['activation']:<28} end to end {row['train_images_per_s']:6.0f} "
            f"images/s ({row['train_time_vs_relu']:.2f}x ReLU's time), model step "
            f"{row['model_images_per_s']:6.0f} ({row['model_time_vs_relu']:.2f}x)"
        )
    report = {
        "what": "training images per second of the fast recipe (batch 32) by "
        "activation, end to end (augmentation, forward, backward, step) and the "
        "model step alone (one fixed batch)",
        **provenance(torch.device("cpu")),
        "threads": torch.get_num_threads(),
        "rounds": args.rounds,
        "steps": args.steps,
        "variants": rows,
    }
    atomic_write_json(args.out, report)


if __name__ == "__main__":
    main()
