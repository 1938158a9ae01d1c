"""Helpers the notebooks share, so that no notebook defines a function another needs.

* ``setup``                every notebook's Setup section: seed, device, quick mode
* ``describe_data``        which data a number was measured on (01, 05, 06)
* ``AugmentationExplorer`` sliders over the training augmentation (01)
* ``multiply_adds``        multiply-adds counted layer by layer with hooks (02, 04)
* ``parameters_by_layer_type``  parameters split by kind of layer (02, 04)
* ``multiply_adds_by_block``  torchinfo's multiply-adds added up per block (04)
* ``load_saved_run``       the results of the last full training run, if any (05)
* ``plateau_reductions``   where ReduceLROnPlateau lowers the rate, replayed (05)
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from cifar_lib.augment import AugmentationConfig, build_train_transform
from cifar_lib.data import CIFAR10_CLASSES, CIFAR10Arrays
from cifar_lib.train import select_device, set_seed

QUICK_ENV = "CIFAR_LIB_QUICK"


def setup(quick: bool, seed: int = 0, slow_without_gpu: bool = False) -> torch.device:
    """Seed every generator, pick the device and say what was chosen.

    ``slow_without_gpu`` adds a hint for notebooks that train (05).
    """
    set_seed(seed)
    device = select_device()
    print(f"cifar_lib from {Path(__file__).parent}")
    print(f"device: {device}; seed: {seed}")
    mode = f"on ({QUICK_ENV}=1): small and fast" if quick else "off: the full work"
    print(f"quick mode {mode}")
    if slow_without_gpu and device.type == "cpu":
        print(
            "No GPU found: training runs on the CPU, where one epoch of the full "
            "training set takes a minute or more (about 60 s for the reference "
            "recipe on a 2-core CPU). On Colab choose Runtime > Change runtime "
            "type > GPU."
        )
    return device


def describe_data(arrays: CIFAR10Arrays) -> str:
    """Name the data a statistic or an accuracy was measured on: a JPEG copy is
    close to CIFAR-10, not the same pixels."""
    if arrays.source == "image-folder":
        folder = Path(arrays.location)
        files = (folder / "train" / CIFAR10_CLASSES[0]).iterdir()
        first = next(path for path in files if not path.name.startswith("."))
        if first.suffix.lower() in (".jpg", ".jpeg"):
            return f"a JPEG copy of CIFAR-10 (lossy: not the original pixels), {folder}"
        return f"CIFAR-10 as an image folder of {first.suffix} files in {folder}"
    if arrays.source == "torchvision":
        return f"the original CIFAR-10 (torchvision's files in {arrays.location})"
    return f"{arrays.source} data ({arrays.location})"


class AugmentationExplorer:
    """Sliders for the training augmentation and a "new sample" button, taught in
    notebook 01. ``update()`` draws the figure into the widget and returns it, so a
    notebook run without a browser (tests) still draws it once and never waits."""

    def __init__(self, images: np.ndarray, seed: int = 0) -> None:
        import ipywidgets as widgets  # only notebooks need widgets

        defaults = AugmentationConfig()
        self.images = images
        self.seed = seed
        self.shift = widgets.FloatSlider(
            value=defaults.shift, min=0, max=0.3, step=0.02, description="shift"
        )
        self.scale = widgets.FloatSlider(
            value=defaults.scale, min=0, max=0.5, step=0.05, description="scale"
        )
        self.rotation = widgets.FloatSlider(
            value=defaults.rotate, min=0, max=45, step=5, description="rotation"
        )
        self.hole_size = widgets.IntSlider(
            value=defaults.hole_size, min=1, max=32, description="hole size"
        )
        self.probability = widgets.FloatSlider(
            value=1.0, min=0, max=1, step=0.1, description="probability"
        )
        self.new_sample = widgets.Button(description="new sample")
        self.output = widgets.Output()
        sliders = [self.shift, self.scale, self.rotation, self.hole_size]
        sliders.append(self.probability)
        for slider in sliders:
            slider.observe(lambda change: self.update(), names="value")
        self.new_sample.on_click(self._next_sample)
        self.widget = widgets.VBox([*sliders, self.new_sample, self.output])

    def config(self) -> AugmentationConfig:
        """The sliders as a config; the probability applies to the affine and the
        hole alike (the flip keeps its 0.5)."""
        return AugmentationConfig(
            shift=self.shift.value,
            scale=self.scale.value,
            rotate=self.rotation.value,
            hole_size=self.hole_size.value,
            affine_p=self.probability.value,
            hole_p=self.probability.value,
        )

    def figure(self):
        """The images before and after one draw of the training pipeline."""
        from cifar_lib.plots import before_after

        transform = build_train_transform(
            self.config(), seed=self.seed, normalize=False
        )
        augmented = np.stack([transform(image=image)["image"] for image in self.images])
        return before_after(self.images, [augmented], ["augmented"])

    def update(self):
        """Redraw into the widget's output area; returns the figure."""
        from IPython.display import clear_output, display

        figure = self.figure()
        with self.output:
            clear_output(wait=True)
            display(figure)
        return figure

    def _next_sample(self, button) -> None:
        self.seed += 1
        self.update()


def multiply_adds(model: nn.Module, input_size=(1, 3, 32, 32)) -> int:
    """Multiply-adds of one forward pass, counted layer by layer with forward hooks.

    A convolution does out_h * out_w * out_channels * (in_channels / groups) * k * k
    of them, a linear layer in_features * out_features; biases, batch norm and ReLU
    are not counted. Taught in notebooks 02 and 04.
    """
    total = 0

    def count(module: nn.Module, inputs, output: torch.Tensor) -> None:
        nonlocal total
        if isinstance(module, nn.Conv2d):
            _, out_channels, out_h, out_w = output.shape
            per_output = module.in_channels // module.groups  # inputs each filter sees
            kernel = math.prod(module.kernel_size)
            total += out_h * out_w * out_channels * per_output * kernel
        else:
            total += module.in_features * module.out_features

    layers = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    hooks = [layer.register_forward_hook(count) for layer in layers]
    was_training = model.training
    try:
        model.eval()
        device = next(model.parameters()).device
        with torch.no_grad():
            model(torch.zeros(input_size, device=device))
    finally:
        model.train(was_training)
        for hook in hooks:
            hook.remove()
    return total // input_size[0]


def parameters_by_layer_type(model: nn.Module) -> dict[str, int]:
    """Trainable parameters per kind of layer, e.g. {"Conv2d": ..., "BatchNorm2d":
    ...}: a BatchNorm2d has a scale and a shift per channel (its running mean and
    variance are buffers, not parameters)."""
    counts: dict[str, int] = {}
    for module in model.modules():
        own = sum(
            p.numel() for p in module.parameters(recurse=False) if p.requires_grad
        )
        if own:
            kind = type(module).__name__
            counts[kind] = counts.get(kind, 0) + own
    return counts


def load_saved_run(path: str | os.PathLike) -> dict | None:
    """The JSON of a saved full run (``results/seed.json``), or None if absent."""
    path = Path(path)
    if not path.is_file():
        return None
    return json.loads(path.read_text())


def describe_saved_run(results: dict) -> str:
    """A saved run's headline fields as lines, its data, hardware and date first."""
    first = [key for key in ("data", "hardware", "date") if key in results]
    rest = [key for key in results if key not in first]
    lines = []
    for key in first + rest:
        value = results[key]
        if isinstance(value, dict):
            value = ", ".join(f"{k}={v}" for k, v in value.items())
        elif isinstance(value, list):
            value = f"{len(value)} entries"
        lines.append(f"{key:<16} {value}")
    return "\n".join(lines)


def multiply_adds_by_block(
    model: nn.Module, input_size=(1, 3, 32, 32)
) -> dict[str, int]:
    """Multiply-adds of one image per top-level block of ``model`` (its children,
    in order), from torchinfo's count layer by layer: the sum is torchinfo's
    ``total_mult_adds``, which also counts each batch-norm and bias parameter once
    (``multiply_adds`` does not). Taught in notebook 04."""
    import torchinfo  # only the model notebook needs it

    summary = torchinfo.summary(model, input_size=input_size, verbose=0)
    by_block = {name: 0 for name, _ in model.named_children()}
    for layer in summary.summary_list:
        if layer.is_leaf_layer:
            top = layer
            while top.depth > 1:
                top = top.parent_info
            by_block[top.var_name] += layer.macs
    return {name: count // input_size[0] for name, count in by_block.items()}


def plateau_reductions(
    accuracies: list[float], patience: int, mode: str = "max"
) -> list[int]:
    """The epochs (counted from 1) after which PyTorch's ``ReduceLROnPlateau``,
    fed ``accuracies`` one epoch at a time, lowers the learning rate: once more
    than ``patience`` epochs in a row have not beaten the best so far (by its
    default relative threshold, 1e-4). Replays the scheduler itself on a dummy
    optimiser, so the answer is PyTorch's. Taught in notebook 05."""
    parameter = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([parameter], lr=1.0)
    # factor 0.9 and no floor: the rate never stops falling within any real run
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, mode=mode, factor=0.9, patience=patience, min_lr=0.0
    )
    reductions, lr = [], 1.0
    for epoch, accuracy in enumerate(accuracies, start=1):
        scheduler.step(accuracy)
        if optimizer.param_groups[0]["lr"] < lr:
            reductions.append(epoch)
            lr = optimizer.param_groups[0]["lr"]
    return reductions
