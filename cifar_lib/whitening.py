"""Whitening initialisation of a model's first convolution, from the training data.

Taught in ``notebooks/06_beyond_85.ipynb``; used by recipes with
``whiten_stem=True``.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cifar_lib.data import CIFAR10_MEAN, CIFAR10_STD
from cifar_lib.errors import ConfigError


def patch_covariance(
    images: np.ndarray, size: int, chunk: int = 250, device: torch.device | None = None
) -> torch.Tensor:
    """Covariance of the ``size`` x ``size`` x 3 patches of normalised ``images``
    (uint8, (N, H, W, 3)), in float64; patch elements ordered as a convolution's
    weights are: channel, then row, then column. Sums are taken ``chunk`` images
    at a time, so memory stays small (5,000 images have 4.5 million patches).

    With NumPy on the CPU; with PyTorch on the GPU if ``device`` is a CUDA one
    (``_patch_covariance_torch``, the same sums in another order; on this
    project's CPU PyTorch took 2.4 s where NumPy took 0.7-1.5, while on the H100
    machine's CPU NumPy took 1.2 s of the fast recipe's preparation). Apple's MPS
    has no float64, so there too NumPy. The result is on the CPU."""
    if device is not None and torch.device(device).type == "cuda":
        return _patch_covariance_torch(images, size, 4 * chunk, torch.device(device))
    mean, std = np.array(CIFAR10_MEAN), np.array(CIFAR10_STD)
    dimension = images.shape[-1] * size * size
    total = np.zeros((dimension, dimension))
    sums = np.zeros(dimension)
    count = 0
    for start in range(0, len(images), chunk):
        x = (images[start : start + chunk] / 255.0 - mean) / std  # (n, H, W, C)
        # every size x size window, as (n, H', W', C, size, size): the weight order
        windows = np.lib.stride_tricks.sliding_window_view(x, (size, size), (1, 2))
        patches = windows.reshape(-1, dimension)
        total += patches.T @ patches
        sums += patches.sum(0)
        count += len(patches)
    average = sums / count
    return torch.from_numpy(total / count - np.outer(average, average))


def _patch_covariance_torch(
    images: np.ndarray, size: int, chunk: int, device: torch.device
) -> torch.Tensor:
    """``patch_covariance`` computed with PyTorch on ``device``."""
    options = dict(dtype=torch.float64, device=device)
    mean = torch.tensor(CIFAR10_MEAN, **options)
    std = torch.tensor(CIFAR10_STD, **options)
    dimension = images.shape[-1] * size * size
    total = torch.zeros(dimension, dimension, **options)
    sums = torch.zeros(dimension, **options)
    count = 0
    for start in range(0, len(images), chunk):
        x = torch.as_tensor(images[start : start + chunk], device=device)
        x = ((x.double() / 255.0 - mean) / std).permute(0, 3, 1, 2)  # (n, C, H, W)
        # (n, C * size * size, windows): the weight order, as above
        patches = F.unfold(x, size).transpose(1, 2).reshape(-1, dimension)
        total += patches.T @ patches
        sums += patches.sum(0)
        count += len(patches)
    average = sums / count
    return (total / count - torch.outer(average, average)).cpu()


def whitening_init(
    model: nn.Module,
    images: np.ndarray,
    samples: int = 5_000,
    eps: float = 5e-4,
    device: torch.device | None = None,
) -> nn.Conv2d:
    """Start the first convolution of ``model`` as a whitening filter bank.

    Neighbouring pixels look alike, so the k x k x 3 patches of natural images
    vary a lot along a few directions and very little along the rest; a randomly
    initialised first layer spends its first epochs sorting that out. Here its
    filters start as the leading eigenvectors of the patch covariance, each
    divided by the square root of its variance, each with its negative (the ReLU
    after the layer then keeps both signs). The layer starts out seeing
    decorrelated inputs of equal variance, and trains from there like any other
    (Jordan 2024, "94% on CIFAR-10 in 3.29 seconds on a single GPU", freezes such
    a layer; here it keeps learning, so the parameter count is unchanged).

    ``images``: uint8 (N, H, W, 3); ``samples`` of them, drawn at random (the same
    ones each time), are used; ``device``: where the patch covariance is computed
    (``patch_covariance``). Returns the convolution.
    """
    conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    out_channels, in_channels, height, width = conv.weight.shape
    if conv.groups != 1 or in_channels != images.shape[-1] or height != width:
        raise ConfigError(
            "whitening needs a first convolution with square kernels over the "
            f"image's {images.shape[-1]} channels; this one has weights of shape "
            f"{tuple(conv.weight.shape)} and groups={conv.groups}."
        )
    directions = in_channels * height * width
    if out_channels % 2 or out_channels // 2 > directions:
        raise ConfigError(
            f"whitening gives a first convolution of {height}x{width} over "
            f"{in_channels} channels an even number of filters, at most "
            f"{2 * directions}; this one has {out_channels}."
        )
    if len(images) > samples:  # not the first ones: a folder lists class by class
        chosen = np.random.default_rng(0).permutation(len(images))[:samples]
        images = images[np.sort(chosen)]
    covariance = patch_covariance(images, height, device=device)
    variances, vectors = torch.linalg.eigh(covariance)  # ascending variance
    top = slice(directions - out_channels // 2, None)
    filters = (vectors[:, top] / (variances[top] + eps).sqrt()).T
    weight = torch.cat([filters, -filters]).reshape(conv.weight.shape)
    with torch.no_grad():
        conv.weight.copy_(weight.to(conv.weight.dtype))
    return conv
