"""Measured results: where they come from, and the README table made from them.

Benchmarks write JSON files into ``results/``; ``python -m cifar_lib.results``
rewrites the block between the two markers in README.md from those files, so the
README never states a figure that no file backs. A test fails when the README's
block is out of date.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
START = "<!-- results:start (made by python -m cifar_lib.results; do not edit) -->"
END = "<!-- results:end -->"


def hardware() -> str:
    """The machine, in words: GPU name, or CPU model and threads."""
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)} GPU"
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model}, {torch.get_num_threads()} threads, no GPU"


def provenance() -> dict:
    """Date, hardware, software and commit, to store beside a measurement."""
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    ).stdout.strip()
    return {
        "date": time.strftime("%Y-%m-%d"),
        "hardware": hardware(),
        "torch": torch.__version__,
        "commit": commit or "unknown",
    }


def _load(results_dir: Path, name: str) -> dict | None:
    path = results_dir / name
    return json.loads(path.read_text()) if path.exists() else None


def results_markdown(results_dir: Path = ROOT / "results") -> str:
    """The README's results section, from the JSON files in ``results_dir``."""
    parts = []
    epochs = _load(results_dir, "cpu_epoch_times.json")
    if epochs:
        parts.append(
            f"**Seconds per training epoch**, seed recipe (CIFAR10Netv2), all 50,000 "
            f"training images; {epochs['hardware']}; {epochs['runs']} run each, "
            f"one after the other in one process; {epochs['date']}, commit "
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
    recipes = sorted(results_dir.glob("recipe_*.json"))
    if recipes:
        rows = [
            "| recipe | best test accuracy | with flip TTA | epochs to 85% | data "
            "| hardware | date |",
            "|---|---:|---:|---:|---|---|---|",
        ]
        for path in recipes:
            r = json.loads(path.read_text())
            reached = r.get("epochs_to_85") or "not reached"
            rows.append(
                f"| {r['recipe']} | {r['best_accuracy']:.2%} | "
                f"{r['best_accuracy_flip_tta']:.2%} | {reached} | {r['data']} | "
                f"{r['hardware']} | {r['date']} |"
            )
        parts.append("**Training runs.**\n\n" + "\n".join(rows))
    if not parts:
        parts.append("No measured results yet.")
    return "\n\n".join(parts)


def updated_readme(readme: str, results_dir: Path = ROOT / "results") -> str:
    """``readme`` with its results block regenerated."""
    if START not in readme or END not in readme:
        raise ValueError("README.md has no results markers")
    head, rest = readme.split(START, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{START}\n{results_markdown(results_dir)}\n{END}{tail}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Rewrite README.md's results block.")
    parser.add_argument("--check", action="store_true", help="only report staleness")
    args = parser.parse_args(argv)
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
