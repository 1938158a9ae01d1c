"""The models. Plain ``nn.Module`` s: they know nothing of data or training.

``CIFAR10Netv2`` is the reference solution layer for layer (taught in
``notebooks/04_model.ipynb``).
"""

from __future__ import annotations

from torch import Tensor, nn

from cifar_lib.layers import (
    ConvBNReLU,
    DepthwiseSeparableConv2d,
    DilatedConv2d,
    TransitionBlock,
)


class CIFAR10Netv2(nn.Module):
    """The reference network: four blocks, three stride-2 transitions, GAP, one FC.

    181,942 parameters, the figure in the reference's own torchinfo summary.
    """

    def __init__(self, num_classes: int = 10, dropout: float = 0.1) -> None:
        super().__init__()
        d = dropout
        self.block1 = nn.Sequential(
            ConvBNReLU(3, 16, dropout=d),
            ConvBNReLU(16, 16, dropout=d),
            ConvBNReLU(16, 16, dropout=d),
        )
        self.transition1 = TransitionBlock(16, 32, dropout=d)  # 32x32 -> 16x16
        self.block2 = nn.Sequential(
            ConvBNReLU(32, 32, dropout=d),
            ConvBNReLU(32, 32, dropout=d),
            ConvBNReLU(32, 32, dropout=d),
        )
        self.transition2 = TransitionBlock(32, 52, dropout=d)  # 16x16 -> 8x8
        self.block3 = nn.Sequential(
            ConvBNReLU(52, 52, dropout=d),
            DilatedConv2d(52, 52, dropout=d),
            DepthwiseSeparableConv2d(52, 52, dropout=d),
        )
        self.transition3 = TransitionBlock(52, 52, dropout=d)  # 8x8 -> 4x4
        self.block4 = nn.Sequential(
            ConvBNReLU(52, 52, dropout=d),
            ConvBNReLU(52, 52, kernel_size=1, dropout=d),
            ConvBNReLU(52, 52, kernel_size=1, dropout=d),
            ConvBNReLU(52, 52, kernel_size=1, dropout=d),
        )
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(52, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.block1(x)
        x = self.transition1(x)
        x = self.block2(x)
        x = self.transition2(x)
        x = self.block3(x)
        x = self.transition3(x)
        x = self.block4(x)
        x = self.gap(x).flatten(1)
        return self.fc(x)


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters (what torchinfo calls 'Trainable params')."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


MODELS = {"CIFAR10Netv2": CIFAR10Netv2}


def build_model(name: str = "CIFAR10Netv2", **kwargs) -> nn.Module:
    """A model by its name in ``MODELS``."""
    return MODELS[name](**kwargs)
