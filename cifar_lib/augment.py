"""Augmentation pipelines with albumentations 2.x.

Taught in ``notebooks/01_data_and_augmentation.ipynb``. The reference was written
for albumentations 1.x; these pipelines ask 2.x for the same augmentation, with one
difference in the shift:

* ``ShiftScaleRotate(shift_limit=0.1, scale_limit=0.1, rotate_limit=15)`` is
  deprecated in 2.x in favour of ``Affine``. In 1.x it filled the border by
  reflection (``BORDER_REFLECT_101``) and scaled both axes alike; the ``Affine``
  below has the same scale, rotation and reflected borders. The shift is drawn as
  the same fraction of the side, but 2.x truncates it to whole pixels toward zero
  (``int(fraction * side)``), where 1.x shifted by the fraction itself: on 32
  pixels the mean |shift| is 1.125 pixels instead of 1.6, and never sub-pixel.
  This project keeps 2.x's behaviour; its batched tensor augmentation
  (``speed.BatchAugment``) reproduces the truncation and is tested against this
  pipeline.
* ``CoarseDropout(max_holes=1, max_height=16, max_width=16, fill_value=0)`` is
  1.x syntax: 2.x warns that the arguments are not valid and falls back to its
  defaults (1 or 2 holes of 10-20% of the side). One 16x16 hole filled with 0 is
  ``num_holes_range=(1, 1), hole_height_range=(16, 16), hole_width_range=(16, 16),
  fill=0`` in 2.x.
"""

from __future__ import annotations

from dataclasses import dataclass

import albumentations as A
import cv2
import numpy as np
from albumentations.pytorch import ToTensorV2

from cifar_lib.data import CIFAR10_MEAN, CIFAR10_STD


@dataclass
class AugmentationConfig:
    """The training augmentation; the defaults are the reference's."""

    flip_p: float = 0.5
    shift: float = 0.1  # fraction of the side, each axis; truncated to whole pixels
    scale: float = 0.1  # +- fraction, same for both axes
    rotate: float = 15.0  # degrees, +-
    affine_p: float = 0.5
    hole_size: int = 16  # side of the one square CoarseDropout hole, pixels
    hole_p: float = 0.3
    # Alternating flip (Jordan 2024, "94% on CIFAR-10 in 3.29 seconds", section
    # 3.6): instead of a fresh coin per image and epoch, each image is flipped in
    # every other epoch, starting flipped or not at random (``alternate_flips``).
    # Each image is still flipped with probability 1/2 in any one epoch, but in two
    # consecutive epochs it is seen both ways. Needs ``flip_p`` = 0.5.
    alternate_flip: bool = False


def alternate_flips(count: int, seed: int, epoch: int) -> np.ndarray:
    """Which of ``count`` training images are flipped in ``epoch`` under
    alternating flip: a fair coin per image, drawn once from ``seed``, decides
    the odd epochs; the even epochs flip the others."""
    first = np.random.default_rng([seed, 0xF11B]).random(count) < 0.5
    return first ^ (epoch % 2 == 0)


def affine_transform(config: AugmentationConfig) -> A.Affine:
    """Shift, scale and rotate like the reference's 1.x ``ShiftScaleRotate``: same
    scale, rotation and reflected borders, but albumentations 2.x truncates the
    shift to whole pixels toward zero, where 1.x shifted by the exact fraction."""
    return A.Affine(
        translate_percent=(-config.shift, config.shift),
        scale=(1 - config.scale, 1 + config.scale),
        keep_ratio=True,
        rotate=(-config.rotate, config.rotate),
        border_mode=cv2.BORDER_REFLECT_101,
        p=config.affine_p,
    )


def coarse_dropout_transform(config: AugmentationConfig) -> A.CoarseDropout:
    """Exactly one ``hole_size`` x ``hole_size`` hole filled with black."""
    size = config.hole_size
    return A.CoarseDropout(
        num_holes_range=(1, 1),
        hole_height_range=(size, size),
        hole_width_range=(size, size),
        fill=0,
        p=config.hole_p,
    )


def normalize_to_tensor(mean=CIFAR10_MEAN, std=CIFAR10_STD) -> list[A.BasicTransform]:
    """Scale to [0, 1], subtract the mean, divide by the std, HWC uint8 -> CHW float."""
    return [A.Normalize(mean=mean, std=std, max_pixel_value=255.0), ToTensorV2()]


def build_train_transform(
    config: AugmentationConfig | None = None, seed: int | None = None, normalize=True
) -> A.Compose:
    """The training pipeline: flip, shift-scale-rotate, one hole, normalise, tensor.

    ``normalize=False`` keeps uint8 HWC images, for looking at them. With
    ``alternate_flip`` the pipeline has no flip of its own: the dataset flips the
    images that the epoch's ``alternate_flips`` names (``data.ArrayDataset``).
    """
    config = config or AugmentationConfig()
    flip_p = 0.0 if config.alternate_flip else config.flip_p
    steps = [
        A.HorizontalFlip(p=flip_p),
        affine_transform(config),
        coarse_dropout_transform(config),
    ]
    if normalize:
        steps += normalize_to_tensor()
    return A.Compose(steps, seed=seed)


def build_test_transform() -> A.Compose:
    """The evaluation pipeline: normalise and convert, nothing random."""
    return A.Compose(normalize_to_tensor())
