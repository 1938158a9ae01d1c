"""Making training fast without changing what is trained.

Taught in ``notebooks/06_beyond_85.ipynb``. Each device here draws from the same
distribution as the straightforward code it replaces; ``tests/test_speed.py``
checks that.

* ``FastDropout``: on the CPU, ``nn.Dropout`` spends most of its time drawing
  Bernoulli numbers (measured here: about 40% of a CIFAR10Netv2 training step).
  NumPy's PCG64 generator fills memory with random bits several times faster; comparing
  16-bit integers with a threshold gives each element the keep probability
  ``1 - p`` rounded to a multiple of 1/65536 (0.9 becomes 0.899994).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

_LEVELS = 1 << 16


def _keep_mask(x: Tensor, p: float) -> Tensor:
    """A boolean tensor shaped like ``x`` (same memory layout), True with
    probability 1 - p, independently for each element. The NumPy generator is
    seeded from PyTorch's, so ``torch.manual_seed`` makes it repeatable."""
    seed = int(torch.randint(0, 2**62, (1,)).item())
    # Raw 64-bit outputs of PCG64, read as four 16-bit integers each: the fastest
    # way NumPy offers to fill memory with random bits.
    words = -(-x.numel() // 4)
    raw = np.random.PCG64(seed).random_raw(words).view(np.int16)[: x.numel()]
    # int16 covers [-32768, 32767]: keep the draws at or above the threshold.
    threshold = round(p * _LEVELS) - _LEVELS // 2
    keep = torch.from_numpy(raw) >= threshold
    if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last):
        n, c, h, w = x.shape
        return keep.view(n, h, w, c).permute(0, 3, 1, 2)
    return keep.view(x.shape)


class _Multiply(torch.autograd.Function):
    """x * mask, with the mask kept for the backward pass (no gradient for it)."""

    @staticmethod
    def forward(ctx, x: Tensor, mask: Tensor) -> Tensor:
        ctx.save_for_backward(mask)
        return x * mask

    @staticmethod
    def backward(ctx, grad: Tensor):
        (mask,) = ctx.saved_tensors
        return grad * mask, None


class FastDropout(nn.Dropout):
    """``nn.Dropout`` with the mask drawn by NumPy's PCG64 (CPU tensors only; on
    other devices it falls back to ``nn.Dropout``)."""

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0 or x.device.type != "cpu":
            return super().forward(x)
        # 0 where dropped, 1 / (1 - p) where kept: one multiplication each way.
        mask = _keep_mask(x, self.p).to(x.dtype).mul_(1.0 / (1.0 - self.p))
        return _Multiply.apply(x, mask)


def use_fast_dropout(model: nn.Module) -> nn.Module:
    """Swap every ``nn.Dropout`` of ``model`` for a ``FastDropout`` (in place).
    Dropout has no parameters, so state dicts are unchanged."""
    for module in list(model.modules()):
        for child_name, child in list(module.named_children()):
            if type(child) is nn.Dropout:
                fast = FastDropout(child.p).train(child.training)
                setattr(module, child_name, fast)
    return model


# --- augmentation of whole batches, as tensors ---------------------------------------


class BatchAugment(nn.Module):
    """The reference augmentation applied to a whole batch at once, on any device.

    Input: uint8 images (N, H, W, 3). Output: normalised float (N, 3, H, W).
    Each image draws its own parameters from the same distributions as
    ``augment.build_train_transform`` (flip with ``flip_p``; with ``affine_p`` a
    shift of up to ``shift`` of the side on each axis, one scale factor in
    [1 - scale, 1 + scale] and a rotation in [-rotate, rotate] degrees about the
    centre (the shift truncated to whole pixels, as albumentations does), borders
    filled by reflection, bilinear interpolation; with ``hole_p``
    one ``hole_size`` square hole of zeros at a uniformly drawn position inside
    the image), in the same order. It differs from albumentations only in
    rounding: OpenCV returns the warped image as uint8, this keeps floats.
    """

    def __init__(self, config=None, mean=None, std=None) -> None:
        super().__init__()
        from cifar_lib.augment import AugmentationConfig
        from cifar_lib.data import CIFAR10_MEAN, CIFAR10_STD

        self.config = config or AugmentationConfig()
        mean = torch.tensor(mean or CIFAR10_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(std or CIFAR10_STD).view(1, 3, 1, 1)
        self.register_buffer("mean", mean, persistent=False)
        self.register_buffer("std", std, persistent=False)

    def forward(
        self, images: Tensor, generator: torch.Generator | None = None
    ) -> Tensor:
        x = images.permute(0, 3, 1, 2).float().div_(255)
        n, _, height, width = x.shape
        c = self.config

        def uniform(low, high, size=n):
            draw = torch.rand(size, generator=generator, device=x.device)
            return low + (high - low) * draw

        def chosen(p):
            return torch.rand(n, generator=generator, device=x.device) < p

        flip = chosen(c.flip_p)
        x = torch.where(flip.view(n, 1, 1, 1), x.flip(3), x)

        warp = chosen(c.affine_p)
        # albumentations truncates the shift to whole pixels: int(U(-f, f) * side)
        shift = uniform(-c.shift, c.shift, (n, 2)).mul_(width).trunc_().div_(width)
        scale = uniform(1 - c.scale, 1 + c.scale)
        angle = torch.deg2rad(uniform(-c.rotate, c.rotate))
        if warp.any():
            x = torch.where(warp.view(n, 1, 1, 1), _warp(x, shift, scale, angle), x)

        hole = chosen(c.hole_p)
        size = c.hole_size
        top = torch.randint(
            0, height - size + 1, (n,), generator=generator, device=x.device
        )
        left = torch.randint(
            0, width - size + 1, (n,), generator=generator, device=x.device
        )
        rows = torch.arange(height, device=x.device).view(1, height, 1)
        cols = torch.arange(width, device=x.device).view(1, 1, width)
        inside = (
            (rows >= top.view(n, 1, 1))
            & (rows < (top + size).view(n, 1, 1))
            & (cols >= left.view(n, 1, 1))
            & (cols < (left + size).view(n, 1, 1))
        )
        x = x.masked_fill((inside & hole.view(n, 1, 1)).unsqueeze(1), 0.0)
        return (x - self.mean) / self.std


def _warp(x: Tensor, shift: Tensor, scale: Tensor, angle: Tensor) -> Tensor:
    """Shift (fraction of the side), scale and rotate about the centre.

    ``affine_grid`` wants, for every output pixel, where to read the input, so
    the matrix is the inverse of the forward map p_out = scale * R(angle) p_in +
    shift; in normalised coordinates ([-1, 1] across the image) a shift of a
    fraction f of the side is 2f.
    """
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    inverse = torch.stack([torch.stack([cos, sin], 1), torch.stack([-sin, cos], 1)], 1)
    offset = -torch.bmm(inverse, (2 * shift).unsqueeze(2))
    theta = torch.cat([inverse, offset], 2)
    grid = torch.nn.functional.affine_grid(theta, list(x.shape), align_corners=False)
    # OpenCV's BORDER_REFLECT_101 mirrors about the outermost pixel centres
    # (dcb|abcd|cba); grid_sample's "reflection" would mirror about the image
    # edge (cba|abcd|dcb). So reflect by hand, in pixel units.
    size = x.shape[-1]
    pixels = ((grid + 1) * size - 1) / 2
    period = 2 * (size - 1)
    pixels = (size - 1) - ((pixels % period) - (size - 1)).abs()
    grid = (2 * pixels + 1) / size - 1
    return torch.nn.functional.grid_sample(
        x, grid, mode="bilinear", padding_mode="border", align_corners=False
    )


class TensorBatchLoader:
    """Batches sliced from one uint8 tensor held on the training device, augmented
    there with ``BatchAugment`` (or only normalised): no per-image Python work,
    no worker processes, and on a GPU no copies from the CPU each step."""

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray,
        batch_size: int,
        device: torch.device | str = "cpu",
        shuffle: bool = False,
        augment: BatchAugment | None = None,
        seed: int = 0,
    ) -> None:
        device = torch.device(device)
        self.images = torch.as_tensor(images).to(device)
        self.labels = torch.as_tensor(labels, dtype=torch.long).to(device)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.augment = (augment or BatchAugment()).to(device)
        self.train = augment is not None
        self.generator = torch.Generator(device=device)
        self.order_generator = torch.Generator()
        self.set_epoch(seed, 0)

    def __len__(self) -> int:
        return -(-len(self.labels) // self.batch_size)

    @property
    def num_images(self) -> int:
        return len(self.labels)

    def set_epoch(self, seed: int, epoch: int) -> None:
        epoch_seed = seed * 100_003 + epoch
        self.generator.manual_seed(epoch_seed)
        self.order_generator.manual_seed(epoch_seed)

    def __iter__(self):
        count = len(self.labels)
        if self.shuffle:
            order = torch.randperm(count, generator=self.order_generator)
            order = order.to(self.images.device)
        else:
            order = torch.arange(count, device=self.images.device)
        for start in range(0, count, self.batch_size):
            index = order[start : start + self.batch_size]
            images = self.images[index]
            if self.train:
                yield self.augment(images, self.generator), self.labels[index]
            else:
                yield _normalise(images, self.augment), self.labels[index]


def _normalise(images: Tensor, augment: BatchAugment) -> Tensor:
    x = images.permute(0, 3, 1, 2).float().div_(255)
    return (x - augment.mean) / augment.std
