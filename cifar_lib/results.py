"""Measured results: where they come from, and the README table made from them.

Benchmarks write JSON files into ``results/``; ``python -m cifar_lib.results``
rewrites the block between the two markers in README.md from those files, so the
README never states a figure that no file backs. A test fails when the README's
block is out of date.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent


def shipped(name: str) -> Path:
    """The repository's folder ``name`` ("results" or "pretrained") that notebooks
    read: the one beside the package (a clone installed with ``pip install -e``, or
    the folder a Colab copy unpacks itself into, ``cifar_lib.colab``), else
    ``../name`` seen from the working directory (a notebook in a clone's
    ``notebooks/`` folder, the package installed from elsewhere)."""
    beside = ROOT / name
    above = Path("..") / name
    return above if not beside.is_dir() and above.is_dir() else beside


START = "<!-- results:start (made by python -m cifar_lib.results; do not edit) -->"
END = "<!-- results:end -->"


def hardware(device: torch.device | str | None = None) -> str:
    """The machine, in words: GPU name, or CPU model and threads. ``device``:
    the one that computes (default: a CUDA GPU if there is one)."""
    device = torch.device(device) if device is not None else None
    on_gpu = device.type == "cuda" if device is not None else torch.cuda.is_available()
    if on_gpu:
        return f"{torch.cuda.get_device_name(device)} GPU"
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    threads = torch.get_num_threads()
    return f"{model}, {threads} thread{'s' if threads > 1 else ''}, no GPU"


def preparation(settings: dict) -> dict:
    """What a run's run.json says of its time to get ready to train:
    ``prepare_seconds`` (runs of 2026-11-27 and later) and its parts,
    ``prepare_parts`` (2026-11-28 and later); nothing for older runs."""
    return {
        key: settings[key]
        for key in ("prepare_seconds", "prepare_parts")
        if key in settings
    }


def provenance(device: torch.device | str | None = None) -> dict:
    """Date, hardware, software and commit, to store beside a measurement.
    $CIFAR_LIB_COMMIT, where set, names the commit (a copy of the working tree
    sent to another machine may carry no git history, or a stale one)."""
    commit = os.environ.get("CIFAR_LIB_COMMIT", "")
    if not commit:
        try:
            commit = subprocess.run(
                ["git", "rev-parse", "--short", "HEAD"],
                capture_output=True,
                text=True,
                cwd=ROOT,
            ).stdout.strip()
        except OSError:  # no git on this machine
            pass
    return {
        "date": time.strftime("%Y-%m-%d"),
        "hardware": hardware(device),
        "torch": torch.__version__,
        "commit": commit or "unknown",
    }


def _load(results_dir: Path, name: str) -> dict | None:
    path = results_dir / name
    return json.loads(path.read_text()) if path.exists() else None


def epoch_speedups(epochs: dict) -> tuple[float, list[float]]:
    """How many times faster the chosen implementation trains an epoch than the
    reference, from ``cpu_epoch_times.json``: from the median times, and round by
    round."""
    kinds = {v["variant"].split(" ")[0]: v for v in epochs["variants"]}
    chosen, reference = kinds["chosen"], kinds["reference"]
    rounds = zip(
        reference["train_seconds_each_run"],
        chosen["train_seconds_each_run"],
        strict=True,
    )
    median = reference["train_seconds"] / chosen["train_seconds"]
    return median, [r / c for r, c in rounds]


def bench_round_speedups(bench: dict) -> list[float]:
    """The benchmark's end-to-end speed-up in each of its rounds
    (``bench_cpu_seed.json``)."""
    rounds = bench["all_rounds"]
    pairs = zip(rounds["recipe"]["train"], rounds["reference"]["train"], strict=True)
    return [ours / theirs for ours, theirs in pairs]


def first_reaching(history: list[dict], level: float) -> tuple[int, float] | None:
    """(epoch, seconds of training and evaluation until then) of the first epoch
    whose test accuracy reached ``level``; None if none did."""
    seconds = 0.0
    for row in history:
        seconds += row["seconds"]
        if row["test_accuracy"] >= level:
            return row["epoch"], seconds
    return None


# The test accuracy a recipe aims at where that is not its target (where it
# stops): the best recipe trains all its epochs (target 1.0) for 92% (issue 4).
AIMS = {"best": 0.92}


def aim(name: str) -> float:
    """The test accuracy recipe ``name`` aims at: ``AIMS``, else its target."""
    from cifar_lib.train import RECIPES

    return AIMS.get(name, RECIPES[name].target)


def recipe_changes(settings: dict, against=None) -> list[str]:
    """What a recorded run trained differently from its recipe as shipped now
    (``RECIPES[settings["name"]]``), or from the recipe ``against``: "field value"
    for each field that decides what is trained, the seed aside, and the
    augmentation's fields one by one ("no teacher" where the run had none and the
    recipe has one). An empty list: the recipe as it is, with some seed."""
    from cifar_lib.train import RECIPES, Recipe

    trained = Recipe.from_dict(settings).what_is_trained()
    shipped = (against or RECIPES[trained["name"]]).what_is_trained()
    changes = []
    for key, value in trained.items():
        if key in ("name", "seed"):
            continue
        if key == "augmentation":
            changes += [f"{k} {v}" for k, v in value.items() if shipped[key][k] != v]
        elif value != shipped[key]:
            changes.append(f"{key} {value}" if value != "" else f"no {key}")
    return changes


def recorded_runs(
    name: str, results_dir: Path = ROOT / "results", against=None
) -> list[dict]:
    """Every recorded run of recipe ``name``, as shipped or changed, whatever its
    seed or hardware: ``results/<name>.json`` and the files in
    ``results/ablations/`` made from it. Each as {file, seed, changes (see
    ``recipe_changes``; from the recipe ``against`` where given, e.g. the recipe
    as it was shipped before), best_accuracy, last_accuracy (after the last
    epoch), epochs_to_target (the first epoch at the recipe's aim, ``AIMS``, or
    its target), epochs, data, hardware}, sorted by hardware, then seed."""
    target = aim(name)
    paths = [results_dir / f"{name}.json"]
    paths += sorted((results_dir / "ablations").glob("*.json"))
    found = []
    for path in paths:
        if not path.exists():
            continue
        run = json.loads(path.read_text())
        settings = run["recipe_settings"]
        if settings["name"] != name:
            continue
        reached = first_reaching(run["history"], target)
        found.append(
            {
                "file": path.relative_to(results_dir).as_posix(),
                "seed": settings["seed"],
                "changes": recipe_changes(settings, against),
                "best_accuracy": run["best_accuracy"],
                "last_accuracy": run["history"][-1]["test_accuracy"],
                "epochs_to_target": reached[0] if reached else None,
                "epochs": len(run["history"]),
                "data": run["data"],
                "hardware": run["hardware"],
            }
        )
    return sorted(found, key=lambda r: (r["hardware"], r["seed"], r["file"]))


def runs_of_recipe(name: str, results_dir: Path = ROOT / "results") -> list[dict]:
    """The runs of ``recorded_runs(name)`` that trained the recipe as it is now:
    they differ from it in the seed at most (the fields that only decide how the
    arithmetic is done do not count)."""
    return [r for r in recorded_runs(name, results_dir) if not r["changes"]]


def _seeds_markdown(name: str, results_dir: Path) -> str | None:
    """The table of ``runs_of_recipe(name)``, with how many reached its aim
    (``AIMS``) at some epoch and after the last."""
    runs = runs_of_recipe(name, results_dir)
    if len(runs) < 2:
        return None
    from cifar_lib.train import RECIPES

    recipe, level = RECIPES[name], aim(name)
    rows = [
        "| file | seed | best test accuracy | after the last epoch | epoch it reached "
        f"{level:.0%} | data | hardware |",
        "|---|---:|---:|---:|---:|---|---|",
    ]
    for r in runs:
        reached = r["epochs_to_target"] or f"not in {r['epochs']}"
        rows.append(
            f"| {r['file']} | {r['seed']} | {r['best_accuracy']:.2%} | "
            f"{r['last_accuracy']:.2%} | {reached} | {r['data']} | {r['hardware']} |"
        )
    hit = sum(r["epochs_to_target"] is not None for r in runs)
    last = sum(r["last_accuracy"] >= level for r in runs)
    accuracies = [r["best_accuracy"] for r in runs]
    return (
        f"**The {name} recipe as it is now, every recorded run** (the same recipe, "
        f"seeds and hardware differ): {level:.0%} reached within "
        f"{recipe.epochs} epochs in **{hit} of {len(runs)}** runs ({last} of them "
        f"after the last epoch); best test accuracy {min(accuracies):.2%} to "
        f"{max(accuracies):.2%}, mean {sum(accuracies) / len(accuracies):.2%}.\n\n"
        + "\n".join(rows)
    )


def results_markdown(results_dir: Path = ROOT / "results") -> str:
    """The README's results section, from the JSON files in ``results_dir``."""
    parts = []
    epochs = _load(results_dir, "cpu_epoch_times.json")
    if epochs:
        parts.append(
            f"**Seconds per training epoch**, seed recipe (CIFAR10Netv2), all 50,000 "
            f"training images; {epochs['hardware']}; {epochs['runs']} run(s) each, "
            "the variants taking turns in one process, median shown; "
            f"{epochs['date']}, commit "
            f"{epochs['commit']}; data: {epochs['data']}.\n"
        )
        rows = [
            "| implementation | training s/epoch | with evaluation |",
            "|---|---:|---:|",
        ]
        for variant in epochs["variants"]:
            rows.append(
                f"| {variant['variant']} | {variant['train_seconds']:.1f} | "
                f"{variant['epoch_seconds_with_evaluation']:.1f} |"
            )
        parts.append("\n".join(rows))
        if "train_seconds_each_run" in epochs["variants"][0]:
            median, rounds = epoch_speedups(epochs)
            parts.append(
                f"Whole epochs: **{median:.2f}x** the reference implementation "
                "(median times); round by round "
                + ", ".join(f"{r:.2f}x" for r in rounds)
                + "."
            )
    bench = _load(results_dir, "bench_cpu_seed.json")
    if bench:
        parts.append(
            f"**Training images per second** (`python -m cifar_lib bench --recipe "
            f"seed`), median of {bench['rounds']} alternating rounds of "
            f"{bench['steps']} steps of {bench['batch_size']} images; "
            f"{bench['hardware']}; {bench['date']}, commit {bench['commit']}.\n\n"
            "| | end to end | data pipeline | model step |\n|---|---:|---:|---:|\n"
            f"| this implementation | {bench['train_images_per_s']:.0f} | "
            f"{bench['data_images_per_s']:.0f} | {bench['model_images_per_s']:.0f} |\n"
            f"| reference implementation | {bench['reference_train_images_per_s']:.0f}"
            f" | {bench['reference_data_images_per_s']:.0f} | "
            f"{bench['reference_model_images_per_s']:.0f} |\n\n"
            f"End to end: **{bench['speedup']:.2f}x** the reference implementation."
        )
    gpu = sorted((results_dir / "gpu").glob("bench_*.json"))
    if gpu:
        runs = [json.loads(path.read_text()) for path in gpu]
        first = runs[0]
        rows = [
            "| file | recipe | batch | mixed precision | CUDA graph | end to end | "
            "data pipeline | model step | reference end to end | speed-up | commit |",
            "|---|---|---:|---|---|---:|---:|---:|---:|---:|---|",
        ]
        for path, b in zip(gpu, runs, strict=True):
            reference = b.get("reference_train_images_per_s")
            compared = (
                f"{reference:.0f} | {b['speedup']:.2f}x |" if reference else "- | - |"
            )
            rows.append(
                f"| {path.stem} | {b['recipe']} | {b['batch_size']} | "
                f"{b['mixed_precision'].removeprefix('torch.')} | "
                f"{'yes' if b.get('cuda_graph') else 'no'} | "
                f"{b['train_images_per_s']:.0f} | {b['data_images_per_s']:.0f} | "
                f"{b['model_images_per_s']:.0f} | " + compared + f" {b['commit']} |"
            )
        parts.append(
            f"**On a GPU**: training images per second (`python -m cifar_lib bench "
            f"--device cuda`), median of {first['rounds']} rounds; "
            f"{first['hardware']}, {first['date']}; the rows of one commit ran on "
            "one machine, those of different commits on different machines of the "
            "same kind, so compare speeds within a commit; one benchmark run each "
            "(`results/gpu/README.md`).\n\n" + "\n".join(rows)
        )
    recipes = [
        results_dir / f"{name}.json"
        for name in ("seed", "fast", "best")
        if (results_dir / f"{name}.json").exists()
    ]
    if recipes:
        rows = [
            "| recipe | best test accuracy | with flip TTA | epochs to 85% | data "
            "| hardware | date |",
            "|---|---:|---:|---:|---|---|---|",
        ]
        for path in recipes:
            r = json.loads(path.read_text())
            reached = r["epochs_to_85"] or f"not in {len(r['history'])} epochs"
            rows.append(
                f"| {r['recipe']} | {r['best_accuracy']:.2%} | "
                f"{r['best_accuracy_flip_tta']:.2%} | {reached} | {r['data']} | "
                f"{r['hardware']} | {r['date']} |"
            )
        parts.append("**Training runs.**\n\n" + "\n".join(rows))
        for name in ("fast", "best"):
            if (results_dir / f"{name}.json").exists():
                seeds = _seeds_markdown(name, results_dir)
                parts += [seeds] if seeds else []
    ablations = sorted((results_dir / "ablations").glob("*.json"))
    if ablations:
        rows = [
            "| variant | recipe | changed from it as shipped | seed | epochs | best "
            "test accuracy | raw weights | data | hardware | date |",
            "|---|---|---|---:|---:|---:|---:|---|---|---|",
        ]
        for path in ablations:
            r = json.loads(path.read_text())
            raw = [
                row["raw_test_accuracy"]
                for row in r["history"]
                if "raw_test_accuracy" in row
            ]
            settings = r["recipe_settings"]
            changed = ", ".join(recipe_changes(settings)) or "nothing"
            rows.append(
                f"| {r['variant']} | {settings['name']} | {changed} | "
                f"{settings['seed']} | {len(r['history'])} | "
                f"{r['best_accuracy']:.2%} | "
                + (f"{max(raw):.2%}" if raw else "-")
                + f" | {r['data']} | {r['hardware']} | {r['date']} |"
            )
        parts.append(
            "**Other runs**: earlier settings of the fast recipe, other seeds, the "
            "runs on a GPU (`results/ablations/`, notebook 06). A teacher named "
            "`best` in these runs is the best recipe's weights from before the "
            "seventh GPU session, shipped now as `best_alone`.\n\n" + "\n".join(rows)
        )
    if not parts:
        parts.append("No measured results yet.")
    return "\n\n".join(parts)


def record_run(
    run_dir: str | Path,
    results_dir: Path = ROOT / "results",
    pretrained_dir: Path = ROOT / "pretrained",
    data: str | None = None,
    data_dir: str | Path | None = None,
) -> dict:
    """Turn a finished run folder into ``results/<recipe>.json`` and
    ``pretrained/<recipe>.pt`` (the best epoch's state dict, loadable with
    ``weights_only=True``). The best weights are evaluated again on the test set,
    plain and with horizontal-flip test-time augmentation. ``data_dir``: where
    the data is now, if not where the run read it (a run made on another
    machine)."""
    from cifar_lib import checkpoints
    from cifar_lib.data import load_cifar10
    from cifar_lib.files import atomic_write
    from cifar_lib.models import count_parameters
    from cifar_lib.notebook import describe_data
    from cifar_lib.speed import TensorBatchLoader
    from cifar_lib.train import evaluate, load_trained_model

    run_dir = Path(run_dir)
    settings = json.loads((run_dir / "run.json").read_text())
    history = json.loads((run_dir / "history.json").read_text())
    state = checkpoints.load(run_dir / "checkpoint.pt", checkpoints.TRAINING_STATE)
    if not state["finished"]:
        raise ValueError(f"{run_dir} has not finished; resume it first")
    recipe = settings["recipe"]
    arrays = load_cifar10(data_dir or settings["data"]["location"])
    model = load_trained_model(run_dir / "best_model.pt")
    device = next(model.parameters()).device
    test = TensorBatchLoader(arrays.test_images, arrays.test_labels, 1000, device)
    _, plain = evaluate(model, test, device)
    _, flipped = evaluate(model, test, device, flip=True)
    reached = first_reaching(history, 0.85)
    seconds = sum(row["seconds"] for row in history)
    # where and when it trained (run.json of runs made before this was kept in it
    # holds none: then this machine, now)
    machine = settings.get("machine") or provenance()
    result = {
        "recipe": recipe["name"],
        "data": data or describe_data(arrays),
        **machine,
        "runs": 1,
        "model": recipe["model"],
        "parameters": count_parameters(model),
        "best_accuracy": plain,
        "best_accuracy_flip_tta": flipped,
        "best_epoch": max(history, key=lambda row: row["test_accuracy"])["epoch"],
        "epochs_to_85": reached[0] if reached else None,
        "seconds_to_85": round(reached[1], 1) if reached else None,
        "total_seconds": round(seconds, 1),
        **preparation(settings),  # the time to get ready, before the first epoch
        "subset": settings["data"]["subset"],
        "recipe_settings": recipe,
        "history": history,
    }
    results_dir.mkdir(exist_ok=True)
    pretrained_dir.mkdir(exist_ok=True)
    from cifar_lib.files import atomic_write_json

    atomic_write_json(results_dir / f"{recipe['name']}.json", result)
    weights = {k: v.cpu() for k, v in model.state_dict().items()}
    atomic_write(
        pretrained_dir / f"{recipe['name']}.pt", lambda f: torch.save(weights, f)
    )
    return result


def updated_readme(readme: str, results_dir: Path = ROOT / "results") -> str:
    """``readme`` with its results block regenerated."""
    if START not in readme or END not in readme:
        raise ValueError("README.md has no results markers")
    head, rest = readme.split(START, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{START}\n{results_markdown(results_dir)}\n{END}{tail}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        allow_abbrev=False,
        description="Rewrite README.md's results block from results/ (after "
        "recording finished runs given with --record).",
    )
    parser.add_argument("--check", action="store_true", help="only report staleness")
    parser.add_argument(
        "--record",
        nargs="*",
        default=[],
        metavar="RUN_FOLDER",
        help="finished run folders to turn into results/<recipe>.json and "
        "pretrained/<recipe>.pt first",
    )
    parser.add_argument("--data", help="how to name the data in the results")
    parser.add_argument(
        "--data-dir", help="where the data is, if not where the run read it"
    )
    args = parser.parse_args(argv)
    for run_dir in args.record:
        result = record_run(run_dir, data=args.data, data_dir=args.data_dir)
        print(f"recorded {run_dir}: best {result['best_accuracy']:.2%}")
    readme_path = ROOT / "README.md"
    readme = readme_path.read_text()
    fresh = updated_readme(readme)
    if args.check:
        print("up to date" if fresh == readme else "README.md results are stale")
        return 0 if fresh == readme else 1
    readme_path.write_text(fresh)
    return 0


if __name__ == "__main__":
    sys.exit(main())
