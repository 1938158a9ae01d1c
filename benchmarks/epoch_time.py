"""Seconds per training epoch of the seed recipe (CIFAR10Netv2) on the full
training set, in several implementations, one after the other in one process.

    python benchmarks/epoch_time.py --data-dir ../shared/data/cifar10-jpeg75 \
        --out results/cpu_epoch_times.json

Each variant trains one epoch from scratch on all 50,000 training images and is
evaluated once on the 10,000 test images; the JSON records both timings.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile

from cifar_lib import speed
from cifar_lib.data import load_cifar10
from cifar_lib.files import atomic_write_json
from cifar_lib.notebook import describe_data
from cifar_lib.results import provenance
from cifar_lib.train import get_recipe, reference_implementation, train

VARIANTS = {
    "chosen (channels_last, FastDropout, batched tensor augmentation)": {},
    "FastDropout masks from NumPy (no Numba kernel), otherwise as chosen": "numpy",
    "PyTorch default layout (NCHW), otherwise as chosen": {"channels_last": False},
    "reference implementation (NCHW, nn.Dropout, albumentations per image)": None,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    arrays = load_cifar10(args.data_dir)
    rows = []
    for name, change in VARIANTS.items():
        recipe = get_recipe("seed", epochs=1, target=1.0)
        # "numpy": FastDropout without its compiled kernel (speed._kernel = False)
        speed._kernel = False if change == "numpy" else None
        if change is None:
            recipe = reference_implementation(recipe)
        elif change != "numpy":
            recipe = dataclasses.replace(recipe, **change)
        with tempfile.TemporaryDirectory() as folder:
            result = train(recipe, out=folder, arrays=arrays, progress=False, log=print)
        speed._kernel = None
        row = result.history[0]
        rows.append(
            {
                "variant": name,
                "train_seconds": row["train_seconds"],
                "epoch_seconds_with_evaluation": row["seconds"],
                "test_accuracy_after_one_epoch": row["test_accuracy"],
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    report = {
        "what": "one epoch of the seed recipe (CIFAR10Netv2) on 50,000 training images",
        "data": describe_data(arrays),
        **provenance(),
        "runs": 1,
        "variants": rows,
    }
    atomic_write_json(args.out, report)


if __name__ == "__main__":
    main()
