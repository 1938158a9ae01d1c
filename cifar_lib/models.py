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


class ResidualBlock(nn.Module):
    """x + body(x), then ReLU: the body learns a correction to its input, which
    lets gradients reach early layers directly and makes short training work."""

    def __init__(self, body: nn.Module) -> None:
        super().__init__()
        self.body = body
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.relu(x + self.body(x))


def _separable_bn(channels: int, dilation: int = 1) -> nn.Sequential:
    """A depthwise-separable convolution ending in BN, no ReLU (nor dropout): the
    last layer of a residual body built of them (``CIFAR10ResNetLinearEnds``,
    ``CIFAR10ResNetSeparable``). The same modules as ``DepthwiseSeparableConv2d``
    up to its last BatchNorm."""
    return nn.Sequential(
        *list(DepthwiseSeparableConv2d(channels, channels, dilation=dilation))[:5]
    )


def _conv_bn(channels: int, dilation: int = 1) -> nn.Sequential:
    """3x3 conv and BN, no ReLU: the last layer of a residual body."""
    return nn.Sequential(
        nn.Conv2d(
            channels, channels, 3, padding=dilation, dilation=dilation, bias=False
        ),
        nn.BatchNorm2d(channels),
    )


def _basic_block(width: int, dropout: float, dilation: int = 1) -> ResidualBlock:
    """A residual block of two 3x3 convolutions (the second one ``dilation``)."""
    return ResidualBlock(
        nn.Sequential(
            ConvBNReLU(width, width, dropout=dropout), _conv_bn(width, dilation)
        )
    )


class ThreeStages(nn.Module):
    """The shape of the residual models here: a stem, a stage at 32x32, a stride-2
    step down to 16x16, a stage there, a step down to 8x8, a stage there, global
    average pooling and one fully connected layer."""

    def assemble(self, parts: list[nn.Module], width: int, classes: int) -> None:
        """Register ``parts``, (stem, stage1, down1, stage2, down2, stage3), built in
        the order the data meets them (so that a seed gives the same initial
        weights however the model is written), then GAP and the fully connected
        layer from ``width`` channels to ``classes``."""
        names = ("stem", "stage1", "down1", "stage2", "down2", "stage3")
        for name, part in zip(names, parts, strict=True):
            self.add_module(name, part)
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(width, classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stage1(self.stem(x))
        x = self.stage2(self.down1(x))
        x = self.stage3(self.down2(x))
        return self.fc(self.gap(x).flatten(1))


class CIFAR10ResNet(ThreeStages):
    """A small residual network within the assignment's rules (194,666
    parameters): wider early layers than CIFAR10Netv2, residual blocks, a dilated
    3x3 at 16x16, depthwise-separable convolutions at 8x8, stride-2 convolutions
    to downsample, GAP and one fully connected layer. No dropout by default: at
    this size the model underfits more than it overfits.
    """

    def __init__(
        self,
        num_classes: int = 10,
        dropout: float = 0.0,
        widths: tuple[int, int, int] = (32, 64, 128),
        stage1_blocks: int = 1,
        linear_ends: bool = False,
    ) -> None:
        super().__init__()
        d = dropout
        w1, w2, w3 = widths
        self.stem = ConvBNReLU(3, w1, dropout=d)
        blocks = [_basic_block(w1, d) for _ in range(stage1_blocks)]
        # one block stays a bare module: the shipped weights' names
        self.stage1 = blocks[0] if stage1_blocks == 1 else nn.Sequential(*blocks)
        self.down1 = ConvBNReLU(w1, w2, stride=2, dropout=d)  # 32x32 -> 16x16
        self.stage2 = _basic_block(w2, d, dilation=2)
        self.down2 = DepthwiseSeparableConv2d(w2, w3, stride=2, dropout=d)  # -> 8x8

        def last(dilation: int = 1) -> nn.Module:  # the last layer of a body at 8x8
            if linear_ends:
                return _separable_bn(w3, dilation)
            return DepthwiseSeparableConv2d(w3, w3, dilation=dilation, dropout=d)

        self.stage3 = nn.Sequential(
            ResidualBlock(
                nn.Sequential(DepthwiseSeparableConv2d(w3, w3, dropout=d), last(2))
            ),
            ResidualBlock(
                nn.Sequential(DepthwiseSeparableConv2d(w3, w3, dropout=d), last())
            ),
        )
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(w3, num_classes)


class CIFAR10ResNetDeep(CIFAR10ResNet):
    """``CIFAR10ResNet`` with a second residual block at full resolution (32x32),
    paid for with 112 instead of 128 channels at 8x8 (195,818 parameters): more
    computation per parameter where the image is largest."""

    def __init__(self, num_classes: int = 10, dropout: float = 0.0) -> None:
        super().__init__(num_classes, dropout, widths=(32, 64, 112), stage1_blocks=2)


class CIFAR10ResNetLinearEnds(CIFAR10ResNet):
    """``CIFAR10ResNet`` whose residual bodies at 8x8 end in BatchNorm, as those
    at 32x32 and 16x16 do, instead of BatchNorm and ReLU (same 194,666
    parameters). With the ReLU a body's output is never negative, so each block
    can only add to its input's activations, never take away; a standard
    residual block (He et al. 2016) adds the body's output before the ReLU."""

    def __init__(self, num_classes: int = 10, dropout: float = 0.0) -> None:
        super().__init__(num_classes, dropout, linear_ends=True)


class CIFAR10ResNetSeparable(CIFAR10ResNet):
    """``CIFAR10ResNet`` wider (48, 96 and 160 channels at 32x32, 16x16 and 8x8),
    paid for with depthwise-separable convolutions from the first downsampling on
    (198,378 parameters): more channels for the same budget, at the cost of
    convolutions that mix space and channels in two steps. The residual body at
    16x16 ends in BatchNorm, as those at 32x32 do. Built by replacing two modules
    of a wider ``CIFAR10ResNet``, so a seed gives the random start that the
    recorded runs (``results/ablations/fast_separable_seed*.json``) had."""

    def __init__(self, num_classes: int = 10, dropout: float = 0.0) -> None:
        super().__init__(num_classes, dropout, widths=(48, 96, 160))
        self.down1 = DepthwiseSeparableConv2d(48, 96, stride=2, dropout=dropout)
        self.stage2 = ResidualBlock(
            nn.Sequential(
                DepthwiseSeparableConv2d(96, 96, dropout=dropout),
                _separable_bn(96, dilation=2),
            )
        )


def replace_relu(model: nn.Module, activation) -> nn.Module:
    """Replace every ``nn.ReLU`` module of ``model`` by ``activation()``, in place;
    returns ``model``. Activations have no parameters, so the weights, their names
    and a seed's random start stay those of the model as built."""
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, nn.ReLU):
                setattr(module, name, activation())
    return model


class CIFAR10ResNetGELU(CIFAR10ResNet):
    """``CIFAR10ResNet`` with every ReLU replaced by a GELU (Hendrycks and Gimpel
    2016), x times the standard normal CDF of x: a smooth curve that lets a little
    negative signal and gradient through where ReLU passes none (the fast
    training of Jordan 2024 uses it). Same 194,666 parameters and weight names; the
    activations have no parameters, so a seed gives the same random start as
    ``CIFAR10ResNet``."""

    def __init__(self, num_classes: int = 10, dropout: float = 0.0) -> None:
        super().__init__(num_classes, dropout)
        replace_relu(self, nn.GELU)


class CIFAR10ResNetSiLU(CIFAR10ResNet):
    """``CIFAR10ResNet`` with every ReLU replaced by a SiLU (x times the logistic
    sigmoid of x; Elfwing et al. 2018, also called swish): a curve much like GELU's
    that is cheaper to compute on this project's CPU
    (``results/bench_cpu_activations.json``). Same parameters and random start as
    ``CIFAR10ResNet``. Tried in the fast recipe on four seeds, it trailed GELU by
    0.18 points on average (``results/ablations/fast_silu_seed*.json``)."""

    def __init__(self, num_classes: int = 10, dropout: float = 0.0) -> None:
        super().__init__(num_classes, dropout)
        replace_relu(self, nn.SiLU)


class CIFAR10DepthwiseResNet(ThreeStages):
    """A deeper residual network built of depthwise-separable blocks (194,626
    parameters): 48, 96 and 184 channels at 32x32, 16x16 and 8x8, three residual
    blocks per stage, each one depthwise-separable convolution with 5x5 depthwise
    kernels (the last block at 16x16 dilated), stride-2 depthwise-separable
    convolutions to downsample, GELU activations, GAP and one fully connected
    layer. A 5x5 depthwise filter costs 25 parameters a channel, so nearly the
    whole budget goes to the 1x1 convolutions that mix channels: 23 convolutions
    (``CIFAR10ResNet`` has 16), 11 of them 5x5 depthwise ones (its 11 that see
    space are all 3x3), and 48 channels at full resolution (against 32). A public
    network of this shape with 64, 128 and 256 channels (pierandom/separable-resnet
    on GitHub; its README gives 0.45 million parameters, 92.28% on CIFAR-10 after
    30 epochs with stronger augmentation) suggests it for the ``best`` recipe. In
    the fast recipe it learns more per epoch than ``CIFAR10ResNetGELU``
    (``results/ablations/fast_depthwise_seed*.json``), but on this project's CPU
    a training image costs 2.2 times as long (``results/bench_cpu_depthwise.json``)
    for 0.64 times the multiply-adds: depthwise convolutions use the arithmetic
    units poorly."""

    def __init__(
        self,
        num_classes: int = 10,
        dropout: float = 0.0,
        widths: tuple[int, int, int] = (48, 96, 184),
        blocks: int = 3,
        kernel_size: int = 5,
    ) -> None:
        super().__init__()
        d = dropout
        w1, w2, w3 = widths

        def separable(cin: int, cout: int, stride: int = 1, dilation: int = 1):
            return DepthwiseSeparableConv2d(
                cin, cout, kernel_size, stride=stride, dropout=d, dilation=dilation
            )

        def stage(width: int, dilate_last: bool = False) -> nn.Sequential:
            dilations = [1] * (blocks - 1) + [2 if dilate_last else 1]
            return nn.Sequential(
                *[ResidualBlock(separable(width, width, dilation=d)) for d in dilations]
            )

        parts = [ConvBNReLU(3, w1, dropout=d), stage(w1)]
        parts += [separable(w1, w2, stride=2), stage(w2, dilate_last=True)]
        parts += [separable(w2, w3, stride=2), stage(w3)]
        self.assemble(parts, w3, num_classes)
        replace_relu(self, nn.GELU)


class CIFAR10TeacherResNet(ThreeStages):
    """A teacher for distillation (``cifar_lib.distill``), *outside* the
    assignment's rules: 3,390,458 parameters, 17 times the budget, and no
    depthwise-separable or dilated convolution. Plain 3x3 residual blocks (two per
    stage) at 48, 128 and 256 channels at 32x32, 16x16 and 8x8, stride-2
    convolutions to downsample, GELU activations, GAP and one fully connected
    layer: about the multiply-adds of a ResNet-18 for CIFAR (0.42 against 0.56
    billion per image, torchinfo) in under a third of its 11.2 million weights.
    Plain 3x3 convolutions keep a GPU's arithmetic units busy, which the depthwise
    ones of the ``best`` model do not. The stem has 48 filters so that a recipe can
    whiten it (at most 54 for 3x3 over three channels)."""

    within_rules = False  # train says so; a test checks it against the checker

    def __init__(
        self,
        num_classes: int = 10,
        dropout: float = 0.0,
        widths: tuple[int, int, int] = (48, 128, 256),
        blocks: int = 2,
    ) -> None:
        super().__init__()
        d = dropout
        w1, w2, w3 = widths

        def stage(width: int) -> nn.Sequential:
            return nn.Sequential(*[_basic_block(width, d) for _ in range(blocks)])

        parts = [ConvBNReLU(3, w1, dropout=d), stage(w1)]
        parts += [ConvBNReLU(w1, w2, stride=2, dropout=d), stage(w2)]
        parts += [ConvBNReLU(w2, w3, stride=2, dropout=d), stage(w3)]
        self.assemble(parts, w3, num_classes)
        replace_relu(self, nn.GELU)


MODELS = {
    "CIFAR10Netv2": CIFAR10Netv2,
    "CIFAR10ResNet": CIFAR10ResNet,
    "CIFAR10ResNetDeep": CIFAR10ResNetDeep,
    "CIFAR10ResNetLinearEnds": CIFAR10ResNetLinearEnds,
    "CIFAR10ResNetSeparable": CIFAR10ResNetSeparable,
    "CIFAR10ResNetGELU": CIFAR10ResNetGELU,
    "CIFAR10ResNetSiLU": CIFAR10ResNetSiLU,
    "CIFAR10DepthwiseResNet": CIFAR10DepthwiseResNet,
    "CIFAR10TeacherResNet": CIFAR10TeacherResNet,
}


def build_model(name: str = "CIFAR10Netv2", **kwargs) -> nn.Module:
    """A model by its name in ``MODELS``."""
    return MODELS[name](**kwargs)


def within_rules(name: str) -> bool:
    """Whether the model ``name`` meets the assignment's rules, as
    ``constraints.check_constraints`` finds (every model here does but the
    teacher; a test checks each one), without building and tracing it."""
    return getattr(MODELS[name], "within_rules", True)
