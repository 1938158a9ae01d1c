import pytest
import torch
from torch import nn

from cifar_lib.constraints import check_constraints
from cifar_lib.layers import (
    ConvBNReLU,
    DepthwiseSeparableConv2d,
    DilatedConv2d,
    TransitionBlock,
)
from cifar_lib.models import (
    MODELS,
    CIFAR10Netv2,
    build_model,
    count_parameters,
    within_rules,
)


def bn_params(channels):
    return 2 * channels


def test_conv_bn_relu_shape_and_parameters():
    layer = ConvBNReLU(16, 32)
    assert layer(torch.randn(2, 16, 32, 32)).shape == (2, 32, 32, 32)
    assert count_parameters(layer) == 3 * 3 * 16 * 32 + bn_params(32)
    assert layer[0].bias is None


def test_depthwise_separable_parameters_follow_the_formula():
    cin, cout = 52, 52
    layer = DepthwiseSeparableConv2d(cin, cout)
    depthwise = 3 * 3 * cin
    pointwise = cin * cout
    assert count_parameters(layer) == depthwise + bn_params(
        cin
    ) + pointwise + bn_params(cout)
    assert layer[0].groups == cin
    assert layer(torch.randn(1, cin, 8, 8)).shape == (1, cout, 8, 8)
    standard = ConvBNReLU(cin, cout)
    assert count_parameters(layer) < count_parameters(standard) / 5


def test_dilated_conv_keeps_size_and_parameters_of_a_3x3():
    layer = DilatedConv2d(8, 8)
    conv = layer[0]
    assert conv.dilation == (2, 2) and conv.padding == (2, 2)
    assert count_parameters(layer) == count_parameters(ConvBNReLU(8, 8))
    assert layer(torch.randn(1, 8, 10, 10)).shape == (1, 8, 10, 10)


@pytest.mark.parametrize("size", [32, 16, 8, 7])
def test_transition_block_halves_the_map(size):
    block = TransitionBlock(16, 32)
    out = block(torch.randn(1, 16, size, size))
    assert out.shape == (1, 32, (size + 1) // 2, (size + 1) // 2)
    assert count_parameters(block) == 16 * 32 + bn_params(32) + 9 * 32 * 32 + bn_params(
        32
    )


def test_cifar10netv2_has_the_reference_parameter_count_and_output():
    model = CIFAR10Netv2()
    assert count_parameters(model) == 181_942
    assert model(torch.randn(4, 3, 32, 32)).shape == (4, 10)
    assert count_parameters(build_model("CIFAR10Netv2", dropout=0.0)) == 181_942
    dropouts = [m.p for m in model.modules() if isinstance(m, nn.Dropout)]
    assert dropouts and set(dropouts) == {0.1}


def test_constraints_pass_for_the_reference():
    report = check_constraints(CIFAR10Netv2())
    assert report.passed, str(report)
    assert len(report.checks) == 7
    assert "181,942" in report["parameters < 200,000"].detail


@pytest.mark.parametrize(
    ("name", "parameters", "field"),
    [
        ("CIFAR10ResNet", 194_666, 65),
        ("CIFAR10ResNetDeep", 195_818, 69),
        ("CIFAR10ResNetLinearEnds", 194_666, 65),
        ("CIFAR10ResNetSeparable", 198_378, 65),
        ("CIFAR10ResNetGELU", 194_666, 65),
        ("CIFAR10ResNetSiLU", 194_666, 65),
        ("CIFAR10DepthwiseResNet", 194_626, 107),
    ],
)
def test_residual_models_meet_every_constraint(name, parameters, field):
    from cifar_lib.receptive_field import receptive_field

    model = build_model(name)
    assert count_parameters(model) == parameters
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    report = check_constraints(model)
    assert report.passed, str(report)
    assert receptive_field(model) == field


def test_linear_ends_let_a_block_take_away():
    """In CIFAR10ResNet the bodies at 8x8 end in ReLU, so they only ever add to
    their input; in CIFAR10ResNetLinearEnds they end in BatchNorm and can
    subtract. Same parameters, same names: only the last ReLU of each is gone."""
    torch.manual_seed(0)
    x = torch.randn(8, 128, 8, 8)
    plain, linear = build_model("CIFAR10ResNet"), build_model("CIFAR10ResNetLinearEnds")
    assert list(plain.state_dict()) == list(linear.state_dict())
    linear.load_state_dict(plain.state_dict())
    for model, can_subtract in [(plain, False), (linear, True)]:
        model.train()
        for block in model.stage3:
            assert isinstance(
                block.body[-1][-1 if can_subtract else -3], nn.BatchNorm2d
            )
            out = block.body(x)
            assert bool((out < 0).any()) == can_subtract
    relus = lambda m: sum(isinstance(n, nn.ReLU) for n in m.modules())  # noqa: E731
    assert relus(plain) - relus(linear) == 2


@pytest.mark.parametrize(
    "name, activation", [("CIFAR10ResNetGELU", "GELU"), ("CIFAR10ResNetSiLU", "SiLU")]
)
def test_activation_variant_differs_only_in_its_activations(name, activation):
    """CIFAR10ResNetGELU and CIFAR10ResNetSiLU: the same weights and the same random
    start for a seed as CIFAR10ResNet, no ReLU left, their activation where each ReLU
    was; so their outputs differ."""
    kinds = lambda m: [type(n).__name__ for n in list(m.modules())[1:]]  # noqa: E731
    torch.manual_seed(0)
    plain = build_model("CIFAR10ResNet")
    torch.manual_seed(0)
    variant = build_model(name)
    assert list(plain.state_dict()) == list(variant.state_dict())
    for a, b in zip(
        plain.state_dict().values(), variant.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b)
    assert kinds(variant) == [activation if k == "ReLU" else k for k in kinds(plain)]
    assert "ReLU" not in kinds(variant) and kinds(plain).count("ReLU") > 0
    x = torch.randn(4, 3, 32, 32)
    plain.eval(), variant.eval()
    assert not torch.allclose(plain(x), variant(x))


class WithMaxPool(CIFAR10Netv2):
    def __init__(self):
        super().__init__()
        # downsample block 1 with max-pooling instead of the stride-2 conv
        self.transition1[1][0].stride = (1, 1)
        self.pool = nn.MaxPool2d(2)

    def forward(self, x):
        x = self.pool(self.transition1(self.block1(x)))
        x = self.transition3(self.block3(self.transition2(self.block2(x))))
        return self.fc(self.gap(self.block4(x)).flatten(1))


def test_constraints_fail_for_max_pooling():
    report = check_constraints(WithMaxPool())
    assert not report.passed
    assert not report["no max-pooling"].passed
    assert not report["downsampling only by stride-2 convolutions"].passed
    assert report["dilated convolution"].passed


def test_constraints_fail_for_too_many_parameters():
    model = nn.Sequential(
        nn.Conv2d(3, 200, 3, padding=1, stride=2),
        nn.Conv2d(200, 200, 3, padding=1),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(200, 10),
    )
    report = check_constraints(model)
    assert not report["parameters < 200,000"].passed
    assert not report["depthwise-separable convolution"].passed
    assert not report["dilated convolution"].passed
    assert not report["receptive field > 44"].passed
    assert report["global average pooling then fully connected"].passed
    assert "FAIL" in str(report)


@pytest.mark.parametrize(
    "head, why",
    [
        # a 1x1 convolution as the classifier after the GAP, no linear layer
        ([nn.AdaptiveAvgPool2d(1), nn.Conv2d(52, 10, 1), nn.Flatten()], "conv"),
        # no global average pooling: the 4x4 map flattened into the linear layer
        ([nn.Flatten(), nn.Linear(52 * 4 * 4, 10)], "no global average pooling"),
    ],
    ids=["conv-after-gap", "no-gap"],
)
def test_constraints_fail_without_gap_then_fully_connected(head, why):
    reference = CIFAR10Netv2()
    body = [reference.block1, reference.transition1, reference.block2]
    body += [reference.transition2, reference.block3, reference.transition3]
    report = check_constraints(nn.Sequential(*body, reference.block4, *head))
    check = report["global average pooling then fully connected"]
    assert not check.passed and why in check.detail and not report.passed
    assert report["dilated convolution"].passed  # the rest is the reference's


def test_depthwise_resnet_is_built_of_separable_blocks():
    """CIFAR10DepthwiseResNet: three residual blocks per stage, each a 5x5
    depthwise then a 1x1 convolution; one dilated block, at 16x16; GELU only."""
    model = build_model("CIFAR10DepthwiseResNet")
    for stage, width in [(model.stage1, 48), (model.stage2, 96), (model.stage3, 184)]:
        assert len(stage) == 3
        for block in stage:
            depthwise, pointwise = block.body[0], block.body[3]
            assert depthwise.groups == width and depthwise.kernel_size == (5, 5)
            assert pointwise.kernel_size == (1, 1)
    dilated = [
        m for m in model.modules() if isinstance(m, nn.Conv2d) and m.dilation != (1, 1)
    ]
    assert dilated == [model.stage2[2].body[0]]
    kinds = {type(m).__name__ for m in model.modules()}
    assert "GELU" in kinds and "ReLU" not in kinds
    x = torch.randn(2, 48, 32, 32)
    assert model.stage1(x).shape == x.shape
    assert model.down2(model.stage2(model.down1(x))).shape == (2, 184, 8, 8)


def test_the_teacher_is_outside_the_rules_and_says_so():
    """CIFAR10TeacherResNet teaches the best model (cifar_lib.distill); it is not a
    solution of the assignment, and the checker must say so."""
    from cifar_lib.whitening import whitening_init

    model = build_model("CIFAR10TeacherResNet")
    assert count_parameters(model) == 3_390_458
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    report = check_constraints(model)
    assert not report.passed
    assert not report["parameters < 200,000"].passed
    assert not report["depthwise-separable convolution"].passed
    assert not report["dilated convolution"].passed
    images = torch.randint(0, 256, (20, 32, 32, 3), dtype=torch.uint8).numpy()
    whitening_init(model, images)  # its 48-filter stem can be whitened


@pytest.mark.parametrize("name", sorted(MODELS))
def test_within_rules_agrees_with_the_checker(name):
    """train notes a model outside the rules from a flag on its class, without
    tracing it; the flag must say what the checker finds."""
    assert within_rules(name) == check_constraints(build_model(name)).passed
