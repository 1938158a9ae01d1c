"""The building blocks the assignment asks for.

Taught in ``notebooks/02_custom_layers.ipynb``. Every convolution that is followed
by batch normalisation has no bias of its own: BN's shift would cancel it.
"""

from __future__ import annotations

from torch import nn


class ConvBNReLU(nn.Sequential):
    """Conv2d, BatchNorm2d, ReLU, Dropout: the unit every reference block uses."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        dilation: int = 1,
        groups: int = 1,
        dropout: float = 0.1,
    ) -> None:
        padding = dilation * (kernel_size - 1) // 2  # "same" size at stride 1
        super().__init__(
            nn.Conv2d(
                in_channels,
                out_channels,
                kernel_size,
                stride=stride,
                padding=padding,
                dilation=dilation,
                groups=groups,
                bias=False,
            ),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
        )


class DepthwiseSeparableConv2d(nn.Sequential):
    """A 3x3 depthwise convolution (one filter per channel) then a 1x1 pointwise one.

    It sees the same 3x3 neighbourhood as a standard 3x3 convolution for about
    1/out_channels + 1/9 of its parameters and multiply-adds.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        dropout: float = 0.1,
        dilation: int = 1,
    ) -> None:
        padding = dilation * (kernel_size - 1) // 2
        super().__init__(
            nn.Conv2d(
                in_channels,
                in_channels,
                kernel_size,
                stride=stride,
                padding=padding,
                dilation=dilation,
                groups=in_channels,
                bias=False,
            ),
            nn.BatchNorm2d(in_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(in_channels, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
        )


class DilatedConv2d(ConvBNReLU):
    """A 3x3 convolution with dilation 2: a 5x5 footprint for a 3x3's parameters."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        dilation: int = 2,
        dropout: float = 0.1,
    ) -> None:
        super().__init__(
            in_channels, out_channels, kernel_size=3, dilation=dilation, dropout=dropout
        )


class TransitionBlock(nn.Sequential):
    """Change the channel count with a 1x1 conv, then halve height and width with a
    3x3 stride-2 conv: the assignment's replacement for max-pooling."""

    def __init__(
        self, in_channels: int, out_channels: int, dropout: float = 0.1
    ) -> None:
        super().__init__(
            ConvBNReLU(in_channels, out_channels, kernel_size=1, dropout=dropout),
            ConvBNReLU(
                out_channels, out_channels, kernel_size=3, stride=2, dropout=dropout
            ),
        )
