import pytest
import torch
from torch import nn

from cifar_lib.layers import ConvBNReLU, DepthwiseSeparableConv2d
from cifar_lib.models import CIFAR10Netv2
from cifar_lib.receptive_field import (
    empirical_receptive_field,
    receptive_field,
    receptive_field_table,
    total_stride,
)


class Residual(nn.Module):
    """A residual stage: x + f(x), with a strided 1x1 shortcut when shapes change."""

    def __init__(self, cin, cout, stride):
        super().__init__()
        self.body = nn.Sequential(
            ConvBNReLU(cin, cout, stride=stride, dropout=0),
            ConvBNReLU(cout, cout, dilation=2, dropout=0),
        )
        self.shortcut = nn.Conv2d(cin, cout, 1, stride=stride, bias=False)

    def forward(self, x):
        return self.body(x) + self.shortcut(x)


def dilated_strided():
    return nn.Sequential(
        nn.Conv2d(3, 8, 5, stride=2, padding=2),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, dilation=3, padding=3),
        nn.Conv2d(8, 8, 3, stride=2, padding=1),
        DepthwiseSeparableConv2d(8, 8, dropout=0),
        nn.Conv2d(8, 8, 3, dilation=2, padding=2),
        nn.AdaptiveAvgPool2d(1),
    )


def residual_model():
    return nn.Sequential(Residual(3, 8, 1), Residual(8, 16, 2), Residual(16, 16, 2))


def pooled():
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.MaxPool2d(2),
        nn.Conv2d(4, 4, 3, padding=1),
        nn.AvgPool2d(3, stride=2, padding=1),
        nn.Conv2d(4, 4, 3, padding=1),
    )


MODELS = {
    "CIFAR10Netv2": CIFAR10Netv2,
    "dilated and strided": dilated_strided,
    "residual": residual_model,
    "max and average pooling": pooled,
    "single conv": lambda: nn.Conv2d(3, 3, 7, padding=3),
}


@pytest.mark.parametrize("name", MODELS)
def test_analytic_equals_empirical(name):
    model = MODELS[name]()
    assert receptive_field(model) == empirical_receptive_field(model)


def test_cifar10netv2_table_uses_the_jump():
    table = receptive_field_table(CIFAR10Netv2())
    assert len(table) == 20  # every convolution, the pointwise ones included
    assert [row.jump_out for row in table if row.stride == 2] == [2, 4, 8]
    for before, row in zip(table, table[1:], strict=False):
        assert row.jump_in == before.jump_out
        growth = (row.kernel - 1) * row.dilation * row.jump_in
        assert row.receptive_field == before.receptive_field + growth
    assert total_stride(CIFAR10Netv2()) == 8


def test_reference_claim_of_49_is_too_small():
    # The reference README claims 49; the walk and the measurement agree on more.
    true_value = empirical_receptive_field(CIFAR10Netv2())
    assert receptive_field(CIFAR10Netv2()) == true_value > 49


def test_the_measurement_does_not_change_the_model():
    model = CIFAR10Netv2()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    empirical_receptive_field(model)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_models_with_fast_dropout_can_be_walked():
    from cifar_lib.constraints import check_constraints
    from cifar_lib.speed import fuse_batchnorm_relu, use_fast_dropout

    model = use_fast_dropout(CIFAR10Netv2())
    assert receptive_field(model) == 81
    assert check_constraints(model).passed
    fused = fuse_batchnorm_relu(CIFAR10Netv2())
    assert receptive_field(fused) == 81
    assert check_constraints(fused).passed


def test_total_stride_does_not_multiply_parallel_branches():
    assert total_stride(residual_model()) == 4  # strides 1, 2, 2 (shortcuts too)


class FunctionalPooling(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        x = torch.nn.functional.max_pool2d(self.conv(x), 2)
        return self.fc(x.mean((2, 3)))


def test_functional_pooling_is_refused_not_ignored():
    from cifar_lib.constraints import check_constraints

    with pytest.raises(ValueError, match="max_pool2d as a function"):
        receptive_field(FunctionalPooling())
    report = check_constraints(FunctionalPooling())
    assert not report["no max-pooling"].passed
    assert not report["downsampling only by stride-2 convolutions"].passed
    assert not report["receptive field > 44"].passed
