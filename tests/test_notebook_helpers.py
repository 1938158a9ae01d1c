"""The helpers that notebooks 04 and 05 add to ``cifar_lib.notebook``."""

from __future__ import annotations

import torchinfo

from cifar_lib.models import CIFAR10Netv2
from cifar_lib.notebook import (
    multiply_adds,
    multiply_adds_by_block,
    parameters_by_layer_type,
    plateau_reductions,
)


def test_multiply_adds_by_block_adds_up_to_torchinfo_total():
    model = CIFAR10Netv2().eval()
    by_block = multiply_adds_by_block(model)
    assert list(by_block) == [name for name, _ in model.named_children()]
    total = torchinfo.summary(model, input_size=(1, 3, 32, 32), verbose=0)
    assert sum(by_block.values()) == total.total_mult_adds
    # torchinfo counts each batch-norm and bias parameter once on top of the hooks
    extra = parameters_by_layer_type(model)["BatchNorm2d"] + model.fc.bias.numel()
    assert sum(by_block.values()) == multiply_adds(model) + extra
    assert by_block["gap"] == 0 and by_block["fc"] == 52 * 10 + 10


def test_multiply_adds_by_block_per_image_and_leaves_training_mode():
    model = CIFAR10Netv2().train()
    assert multiply_adds_by_block(model, (4, 3, 32, 32)) == multiply_adds_by_block(
        model
    )
    assert model.training


def test_plateau_reductions_by_hand():
    # best at epoch 2; epochs 3, 4, 5 do not beat it: with patience 2, the third
    # such epoch (5) lowers the rate, and the count starts again
    accuracies = [0.5, 0.6, 0.6, 0.55, 0.59, 0.58, 0.57, 0.56, 0.7]
    assert plateau_reductions(accuracies, patience=2) == [5, 8]
    # an improvement smaller than the relative threshold (1e-4) is no improvement
    assert plateau_reductions([0.5, 0.50001, 0.50002], patience=0) == [2, 3]
    assert plateau_reductions([0.5, 0.6, 0.7], patience=0) == []
