"""``python -m cifar_lib bench``: how many training images per second a recipe
processes, end to end and by part, beside the reference implementation.

Rates are measured on random CIFAR-sized images (speed does not depend on what
the pixels show) after a warm-up; the recipe and the reference implementation
are measured in alternating rounds in one process, and each figure is the median
of the rounds, so that a burst of load on the machine hits both alike.
"""

from __future__ import annotations

import itertools
import json
import platform
import statistics
import time

import numpy as np
import torch

from cifar_lib.data import CIFAR10Arrays
from cifar_lib.graphs import WARM_UP_STEPS
from cifar_lib.train import (
    Recipe,
    configure_device,
    load_teacher,
    make_loaders,
    make_optimizer,
    make_train_step,
    mixed_precision,
    prepare_model,
    reference_implementation,
    set_epoch,
    train_one_epoch,
)


class _FirstBatches:
    """The first ``count`` batches of a loader, as a loader."""

    def __init__(self, loader, count: int) -> None:
        self.loader, self.count = loader, count

    def __len__(self) -> int:
        return self.count

    def __iter__(self):
        return itertools.islice(iter(self.loader), self.count)


def random_arrays(count: int = 10_000, seed: int = 0) -> CIFAR10Arrays:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (count, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, count).astype(np.int64)
    return CIFAR10Arrays(images, labels, images[:1000], labels[:1000], "random", "-")


class _Setup:
    """A recipe ready to be timed: model, optimiser, loaders."""

    def __init__(self, recipe: Recipe, device: torch.device, arrays, reference: bool):
        self.recipe = recipe
        self.device = device
        self.reference = reference
        self.model = prepare_model(recipe, device, arrays.train_images)
        self.optimizer = make_optimizer(self.model, recipe)
        self.train_loader, _ = make_loaders(recipe, arrays, None, device, None)
        self.amp_dtype, scaler = mixed_precision(recipe, device)
        self.step = make_train_step(  # a recipe that distils: its teacher's passes too
            recipe,
            self.model,
            self.optimizer,
            device,
            None,
            scaler,
            self.amp_dtype,
            load_teacher(recipe, device),
        )
        configure_device(device, recipe.cudnn_benchmark)
        images, labels = next(iter(self.train_loader))
        self.batch = images.to(device), labels.to(device)

    def _images_per_second(self, loader, images: int, **options) -> float:
        """Train over ``loader`` once and time it."""
        _sync(self.device)
        started = time.perf_counter()
        train_one_epoch(
            self.model,
            loader,
            self.optimizer,
            self.step.criterion,
            self.device,
            progress=False,
            step=self.step,
            **options,
        )
        _sync(self.device)
        return images / (time.perf_counter() - started)

    def end_to_end(self, steps: int) -> float:
        """Images per second through augmentation, forward, backward and step."""
        set_epoch(self.train_loader, 0, 1)
        return self._images_per_second(
            _FirstBatches(self.train_loader, steps),
            steps * self.recipe.batch_size,
            channels_last=self.recipe.channels_last,
            # the reference code reads the loss back after every batch
            refresh_every=1 if self.reference else 20,
        )

    def data_pipeline(self, steps: int) -> float:
        """Images per second the loader delivers, with no model."""
        started = time.perf_counter()
        for images, _ in _FirstBatches(self.train_loader, steps):
            images.to(self.device)
        _sync(self.device)
        return steps * self.recipe.batch_size / (time.perf_counter() - started)

    def model_step(self, steps: int) -> float:
        """Images per second for forward, backward and step on one fixed batch."""
        images, labels = self.batch
        if self.recipe.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return self._images_per_second(
            [(images, labels)] * steps,
            steps * len(labels),
            channels_last=False,
            refresh_every=steps + 1,
        )


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_benchmark(
    recipe: Recipe,
    device: torch.device,
    steps: int = 20,
    warmup: int = 3,
    rounds: int = 3,
    compare: bool = True,
    log=print,
) -> dict:
    arrays = random_arrays(max(10_000, recipe.batch_size * (steps + warmup)))
    setups = {"recipe": _Setup(recipe, device, arrays, reference=False)}
    if compare:
        reference = reference_implementation(recipe)
        setups["reference"] = _Setup(reference, device, arrays, reference=True)
    rates = {name: {"train": [], "data": [], "model": []} for name in setups}
    for setup in setups.values():  # warm-up: allocator, kernels, caches, graph
        setup.end_to_end(warmup + (WARM_UP_STEPS + 1 if setup.step.capture else 0))
    for _ in range(rounds):
        for name, setup in setups.items():
            rates[name]["train"].append(setup.end_to_end(steps))
            rates[name]["data"].append(setup.data_pipeline(steps))
            rates[name]["model"].append(setup.model_step(steps))
    median = {
        name: {part: statistics.median(values) for part, values in parts.items()}
        for name, parts in rates.items()
    }
    threads = torch.get_num_threads()
    log(
        f"Recipe {recipe.name!r} ({recipe.model}) on {device} ({threads} threads, "
        f"{platform.processor() or platform.machine()}), batch {recipe.batch_size}, "
        f"mixed precision {setups['recipe'].amp_dtype or 'off'}, "
        + (f"taught by {recipe.teacher} (in every step), " if recipe.teacher else "")
        + f"median of {rounds} rounds of {steps} steps after {warmup} warm-up steps:"
    )
    labels = {
        "recipe": (
            f"this implementation (channels_last={recipe.channels_last}, "
            f"fast_dropout={recipe.fast_dropout}, "
            f"fuse_norm_relu={recipe.fuse_norm_relu}, "
            f"augmentation={recipe.augmentation_backend}, "
            f"CUDA graph={setups['recipe'].step.capture})"
        ),
        "reference": "reference implementation (NCHW, BatchNorm, ReLU and nn.Dropout "
        "one by one, albumentations "
        "image by image, loss read back every step)",
    }
    for name, parts in median.items():
        log(f"  {labels[name]}:")
        log(f"    end to end     {parts['train']:8.0f} images/s")
        log(f"    data pipeline  {parts['data']:8.0f} images/s")
        log(f"    model step     {parts['model']:8.0f} images/s")
    result = {
        "recipe": recipe.name,
        "model": recipe.model,
        "device": str(device),
        "threads": threads,
        "batch_size": recipe.batch_size,
        "teacher": recipe.teacher,  # its forward passes are part of each step
        "mixed_precision": str(setups["recipe"].amp_dtype or "off"),
        "cuda_graph": setups["recipe"].step.capture,
        "rounds": rounds,
        "steps": steps,
        "train_images_per_s": round(median["recipe"]["train"], 1),
        "data_images_per_s": round(median["recipe"]["data"], 1),
        "model_images_per_s": round(median["recipe"]["model"], 1),
    }
    if compare:
        ratio = median["recipe"]["train"] / median["reference"]["train"]
        log(f"  end-to-end speed-up over the reference implementation: {ratio:.2f}x")
        result.update(
            reference_train_images_per_s=round(median["reference"]["train"], 1),
            reference_data_images_per_s=round(median["reference"]["data"], 1),
            reference_model_images_per_s=round(median["reference"]["model"], 1),
            speedup=round(ratio, 3),
            all_rounds=rates,
        )
    log(json.dumps(result))
    return result
