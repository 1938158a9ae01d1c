"""Seconds per training epoch of the seed recipe (CIFAR10Netv2) on the full
training set, in several implementations, taking turns in one process.

    python benchmarks/epoch_time.py --data-dir ../shared/data/cifar10-jpeg75 \
        --out results/cpu_epoch_times.json --repeats 2

The Numba kernels are compiled (or loaded from Numba's cache) once, before any
timing; the JSON records how long that took. Each variant trains one epoch from
scratch on all 50,000 training images and is evaluated once on the 10,000 test
images; the JSON records both timings. With
``--repeats N`` the variants take turns N times (a shared machine's speed drifts
by 10% and more over minutes, so one epoch after the other can mislead); the
JSON gives every timing and the median.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import tempfile
import time

from cifar_lib import speed
from cifar_lib.data import load_cifar10
from cifar_lib.files import atomic_write_json
from cifar_lib.notebook import describe_data
from cifar_lib.results import provenance
from cifar_lib.train import get_recipe, reference_implementation, train

VARIANTS = {
    "chosen (channels_last, FusedBatchNormReLU, FastDropout, batched tensor "
    "augmentation)": {},
    "BatchNorm, ReLU and FastDropout one by one, otherwise as chosen": {
        "fuse_norm_relu": False
    },
    "no Numba (layers one by one, FastDropout masks from NumPy), otherwise as "
    "chosen": "numpy",
    "PyTorch default layout (NCHW), otherwise as chosen": {"channels_last": False},
    "reference implementation (NCHW, nn.Dropout, albumentations per image)": None,
}


def one_epoch(change, arrays, kernels: tuple) -> dict:
    """One epoch of the seed recipe with ``change``; its history row. ``kernels``:
    the compiled kernels (``speed._kernel``, ``speed._fused``), made before any
    timing so that no variant's time includes compiling them."""
    recipe = get_recipe("seed", epochs=1, target=1.0)
    # "numpy": no compiled kernel: the fused layer runs BatchNorm, ReLU and
    # FastDropout one by one, FastDropout draws with NumPy
    speed._kernel, speed._fused = (False, False) if change == "numpy" else kernels
    if change is None:
        recipe = reference_implementation(recipe)
    elif change != "numpy":
        recipe = dataclasses.replace(recipe, **change)
    try:
        with tempfile.TemporaryDirectory() as folder:
            result = train(recipe, out=folder, arrays=arrays, progress=False, log=print)
    finally:
        speed._kernel, speed._fused = kernels
    row = result.history[0]
    return {
        "train_seconds": row["train_seconds"],
        "epoch_seconds_with_evaluation": row["seconds"],
        "test_accuracy": row["test_accuracy"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--repeats", type=int, default=1, help="turns (1 or more)")
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error(f"--repeats {args.repeats}: give 1 or more.")
    arrays = load_cifar10(args.data_dir)
    started = time.perf_counter()
    if speed._get_kernel() is None or speed._get_fused() is None:
        parser.error("the compiled kernels are missing: install numba.")
    kernels = speed._kernel, speed._fused
    load_seconds = round(time.perf_counter() - started, 2)
    print(f"compiling or loading the Numba kernels took {load_seconds} s", flush=True)
    timings = {name: [] for name in VARIANTS}
    for _ in range(args.repeats):
        for name, change in VARIANTS.items():
            timings[name].append(one_epoch(change, arrays, kernels))
            print(name, json.dumps(timings[name][-1]), flush=True)
    rows = []
    for name, runs in timings.items():
        rows.append(
            {
                "variant": name,
                **{
                    key: round(statistics.median(run[key] for run in runs), 2)
                    for key in ("train_seconds", "epoch_seconds_with_evaluation")
                },
                "train_seconds_each_run": [run["train_seconds"] for run in runs],
                "test_accuracy_after_one_epoch": runs[0]["test_accuracy"],
            }
        )
    report = {
        "what": "one epoch of the seed recipe (CIFAR10Netv2) on 50,000 training images",
        "data": describe_data(arrays),
        **provenance(),
        "runs": args.repeats,
        # once per process, before the timings above (Numba compiles the kernels
        # the first time, then loads them from its cache on disk)
        "numba_kernels_seconds": load_seconds,
        "variants": rows,
    }
    atomic_write_json(args.out, report)


if __name__ == "__main__":
    main()
