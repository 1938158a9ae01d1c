"""What each lever of the fast recipe contributes, measured: train variants of it
for the same number of epochs on the full training set, one after the other, and
record each history in ``results/ablations/<name>.json``.

    python benchmarks/ablation.py --data-dir ../shared/data/cifar10-jpeg75

* ``seed_8_epochs``: the reference recipe (CIFAR10Netv2, dropout 0.1, Adam,
  ReduceLROnPlateau), cut to the fast recipe's 8 epochs;
* ``fast_with_CIFAR10Netv2``: the fast recipe's training (no dropout, SGD with
  Nesterov momentum, one-cycle, label smoothing) applied to the reference model;
* the fast recipe itself is ``results/fast.json``.

``--from-run RUN_FOLDER NAME`` records a finished run folder of the command line
as the variant NAME instead (how the fast recipe's earlier settings were kept:
``fast_reference_augmentation``, ``fast_batch_128``). ``--from-log LOG NAME
--machine-of RUN_FOLDER`` records a run whose folder was lost from what it
printed (the recipe and one line per epoch: losses to 4 decimals, accuracies to
0.01 points, seconds to 0.1), on the machine and commit of RUN_FOLDER's run.json.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import json
import re
import tempfile
from pathlib import Path

from cifar_lib.data import load_cifar10
from cifar_lib.files import atomic_write_json
from cifar_lib.notebook import describe_data
from cifar_lib.results import ROOT, preparation, provenance
from cifar_lib.train import Recipe, get_recipe, train

VARIANTS = {
    "seed_8_epochs": lambda: get_recipe("seed", epochs=8, target=1.0),
    "fast_with_CIFAR10Netv2": lambda: dataclasses.replace(
        get_recipe("fast", target=1.0), model="CIFAR10Netv2", name="fast"
    ),
}


def record(
    out_dir: Path,
    name: str,
    recipe: dict,
    history: list,
    arrays,
    machine: dict | None = None,
    data: str | None = None,
    preparation: dict | None = None,
) -> None:
    """``machine``: where the run trained (its run.json), if not here and now;
    ``data``: how to name the data (default: described from ``arrays``);
    ``preparation``: the run's time to get ready to train, where known
    (``prepare_seconds``, and its parts in ``prepare_parts``, from its run.json)."""
    atomic_write_json(
        out_dir / f"{name}.json",
        {
            "variant": name,
            "data": data or describe_data(arrays),
            **(machine or provenance()),
            "runs": 1,
            "recipe_settings": recipe,
            "best_accuracy": max(row["test_accuracy"] for row in history),
            **(preparation or {}),
            "history": history,
        },
    )


EPOCH_LINE = re.compile(
    r"epoch +(?P<epoch>\d+)/\d+ +train loss (?P<train_loss>[\d.]+) "
    r"acc (?P<train_accuracy>[\d.]+)% +test loss (?P<test_loss>[\d.]+) "
    r"acc (?P<test_accuracy>[\d.]+)%(?: \(raw weights (?P<raw>[\d.]+)%\))? "
    r"+lr (?P<lr>[\d.e+-]+) +(?P<seconds>[\d.]+)s"
)


def _value(text: str):
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text  # a name: a model, an optimiser, a schedule


def run_from_log(text: str) -> tuple[dict, list[dict]]:
    """The recipe (its settings as ``Recipe.to_dict``) and the history that
    ``train`` printed, from the first 'Recipe' block and the epoch lines after it."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("Recipe '"))
    values = {}
    for line in lines[start + 1 :]:
        key, sep, value = line.strip().partition(" =")  # the value may be empty
        if not line.startswith("  ") or not sep:
            break
        values[key.strip()] = value.strip()
    augmentation = dict(pair.split("=") for pair in values["augmentation"].split(", "))
    values = {k: _value(v) for k, v in values.items() if k != "augmentation"}
    values["augmentation"] = {k: _value(v) for k, v in augmentation.items()}
    recipe = Recipe.from_dict(values).validate().to_dict()
    history = []
    for match in map(EPOCH_LINE.search, lines[start:]):
        if match is None:
            continue
        row = {
            "epoch": int(match["epoch"]),
            "train_loss": float(match["train_loss"]),
            "train_accuracy": round(float(match["train_accuracy"]) / 100, 4),
            "test_loss": float(match["test_loss"]),
            "test_accuracy": round(float(match["test_accuracy"]) / 100, 4),
            "lr": float(match["lr"]),
            "seconds": float(match["seconds"]),
        }
        if match["raw"] is not None:
            row["raw_test_accuracy"] = round(float(match["raw"]) / 100, 4)
        history.append(row)
    if [row["epoch"] for row in history] != list(range(1, len(history) + 1)):
        raise ValueError("the log's epoch lines are not epochs 1, 2, 3, ...")
    return recipe, history


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, allow_abbrev=False)
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--only", nargs="*", choices=sorted(VARIANTS))
    parser.add_argument("--from-run", nargs=2, metavar=("RUN_FOLDER", "NAME"))
    parser.add_argument("--from-log", nargs=2, metavar=("LOG", "NAME"))
    parser.add_argument("--machine-of", metavar="RUN_FOLDER")
    parser.add_argument("--data", help="how to name the data in the results")
    args = parser.parse_args()
    arrays = load_cifar10(args.data_dir)
    out_dir = ROOT / "results" / "ablations"
    out_dir.mkdir(parents=True, exist_ok=True)
    if args.from_run:
        run, name = Path(args.from_run[0]), args.from_run[1]
        settings = json.loads((run / "run.json").read_text())
        history = json.loads((run / "history.json").read_text())
        machine = settings.get("machine")
        record(
            out_dir,
            name,
            settings["recipe"],
            history,
            arrays,
            machine,
            args.data,
            preparation(settings),
        )
        return
    if args.from_log:
        if not args.machine_of:
            parser.error("--from-log needs --machine-of: the log names no machine")
        log, name = Path(args.from_log[0]), args.from_log[1]
        recipe, history = run_from_log(log.read_text())
        run = json.loads((Path(args.machine_of) / "run.json").read_text())
        machine = {**run["machine"], "source": f"parsed from {log.name}"}
        record(out_dir, name, recipe, history, arrays, machine, args.data)
        return
    for name in args.only or VARIANTS:
        recipe = VARIANTS[name]()
        with tempfile.TemporaryDirectory() as folder:
            result = train(recipe, out=Path(folder), arrays=arrays, progress=False)
        record(out_dir, name, recipe.to_dict(), result.history, arrays, None, args.data)


if __name__ == "__main__":
    main()
