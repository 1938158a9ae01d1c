"""The speed devices draw from the same distributions as the code they replace."""

import copy
import functools
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from cifar_lib import speed
from cifar_lib.augment import (
    AugmentationConfig,
    alternate_flips,
    build_test_transform,
    build_train_transform,
)
from cifar_lib.data import CIFAR10Arrays, get_data_loaders, set_epoch
from cifar_lib.models import CIFAR10Netv2
from cifar_lib.speed import (
    BatchAugment,
    FastDropout,
    TensorBatchLoader,
    use_fast_dropout,
)


@pytest.fixture(params=["numba", "numpy"])
def backend(request, monkeypatch):
    """Run a test with the compiled kernel (skipped without Numba) and with the
    NumPy fallback."""
    if request.param == "numba":
        pytest.importorskip("numba")
        assert speed._get_kernel() is not None
    else:
        monkeypatch.setattr(speed, "_kernel", False)
    return request.param


def test_fast_dropout_keeps_nine_in_ten_and_rescales(backend):
    torch.manual_seed(0)
    layer = FastDropout(0.1).train()
    x = torch.ones(64, 16, 32, 32)
    out = layer(x)
    kept = out != 0
    n = x.numel()
    sigma = (0.9 * 0.1 / n) ** 0.5
    assert abs(kept.float().mean().item() - 0.9) < 5 * sigma
    assert torch.allclose(out[kept], torch.tensor(1 / 0.9))
    # no structure: every channel and every position keeps about 90%
    per_channel = kept.float().mean((0, 2, 3))
    assert (per_channel - 0.9).abs().max() < 5 * (0.09 / (n / 16)) ** 0.5
    per_row = kept.float().mean((0, 1, 3))
    assert (per_row - 0.9).abs().max() < 5 * (0.09 / (n / 32)) ** 0.5


def test_fast_dropout_gradient_follows_the_mask(backend):
    torch.manual_seed(1)
    x = torch.randn(8, 4, 5, 5, requires_grad=True)
    out = FastDropout(0.3).train()(x)
    out.sum().backward()
    expected = (out != 0).float() / 0.7
    assert torch.allclose(x.grad, expected)


def test_fast_dropout_is_repeatable_and_fresh_each_call(backend):
    layer = FastDropout(0.1).train()
    x = torch.ones(4, 8, 16, 16)
    torch.manual_seed(5)
    a, b = layer(x), layer(x)
    torch.manual_seed(5)
    assert torch.equal(layer(x), a)
    assert not torch.equal(a, b)


def test_fast_dropout_in_eval_and_channels_last(backend):
    layer = FastDropout(0.1)
    x = torch.randn(2, 3, 8, 8).contiguous(memory_format=torch.channels_last)
    assert torch.equal(layer.eval()(x), x)
    out = layer.train()(x)
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(out != 0, (out != 0) & (x != 0))


def test_fast_dropout_neighbours_are_independent(backend):
    # Draws come four to a 64-bit word: neighbours in memory, in the same word
    # or in the next one, must be dropped together only p * p of the time.
    torch.manual_seed(2)
    dropped = FastDropout(0.1).train()(torch.ones(1 << 20)) == 0
    n = dropped.numel()
    for gap in (1, 2, 3, 4, 5, 8):
        both = (dropped[:-gap] & dropped[gap:]).float().mean().item()
        assert abs(both - 0.01) < 5 * (0.01 * 0.99 / n) ** 0.5, gap


def test_fast_dropout_channels_last_gradient_meets_its_mask(backend):
    # x is channels-last but the incoming gradient is not: the backward pass
    # must still drop exactly the elements the forward pass dropped.
    torch.manual_seed(3)
    x = torch.rand(4, 6, 5, 7).add_(0.5).contiguous(memory_format=torch.channels_last)
    x.requires_grad_(True)
    weight = torch.randn(4, 6, 5, 7)  # NCHW
    out = FastDropout(0.25).train()(x)
    (out * weight).sum().backward()
    assert torch.allclose(x.grad, weight * (out != 0) / 0.75)


def test_compiled_dropout_is_splitmix64_and_thread_count_free():
    numba = pytest.importorskip("numba")
    assert speed._get_kernel() is not None
    seed, threshold = 12345, speed._threshold(0.5)
    mask = 2**64 - 1

    def splitmix64(i):  # output number i (from 1) of SplitMix64 started at seed
        z = (seed + i * 0x9E3779B97F4A7C15) & mask
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
        return z ^ (z >> 31)

    draws = [(splitmix64(j // 4 + 1) >> (16 * (j % 4))) & 0xFFFF for j in range(4099)]
    x = torch.ones(4099)
    expected = torch.tensor([2.0 if d >= threshold else 0.0 for d in draws])
    assert torch.equal(speed._masked_scale(x, seed, threshold, 2.0), expected)
    big = torch.ones(3, 50_000)
    threads = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        one = speed._get_kernel().masked_scale
        out = torch.empty_like(big)
        one(
            speed._flat(big),
            speed._flat(out),
            np.uint64(seed),
            np.uint64(threshold),
            np.float32(2.0),
        )
    finally:
        numba.set_num_threads(threads)
    assert torch.equal(speed._masked_scale(big, seed, threshold, 2.0), out)


def test_use_fast_dropout_changes_no_weights_and_no_eval_output():
    torch.manual_seed(0)
    model = CIFAR10Netv2().eval()
    x = torch.randn(2, 3, 32, 32)
    before = model(x)
    keys = list(model.state_dict())
    use_fast_dropout(model)
    assert not [m for m in model.modules() if type(m) is nn.Dropout]
    # one per ConvBNReLU, one per depthwise-separable block: 19 in all
    assert sum(isinstance(m, FastDropout) for m in model.modules()) == 19
    assert list(model.state_dict()) == keys
    assert torch.equal(model(x), before)


# --- batched augmentation against albumentations ------------------------------------


def _test_image():
    yy, xx = np.mgrid[0:32, 0:32]
    checker = ((xx // 4 + yy // 4) % 2) * 255
    return np.stack([xx * 8, yy * 8, checker], -1).clip(0, 255).astype(np.uint8)


def _albumentations_samples(config, count, seed=1):
    pipeline = build_train_transform(config, seed=seed, normalize=False)
    image = _test_image()
    return np.stack([pipeline(image=image)["image"] for _ in range(count)]) / 255


def _batch_samples(config, count, seed=1):
    augment = BatchAugment(config)
    images = torch.from_numpy(_test_image())[None].repeat(count, 1, 1, 1)
    out = augment(images, torch.Generator().manual_seed(seed))
    return (out * augment.std + augment.mean).permute(0, 2, 3, 1).numpy()


def _distance(a, b):
    """How far apart two sets of augmented images are, pixel by pixel."""
    mean_gap = np.abs(a.mean(0) - b.mean(0))
    std_gap = np.abs(a.std(0) - b.std(0))
    quantiles = [0.05, 0.25, 0.5, 0.75, 0.95]
    spread_gap = np.abs(
        np.quantile(a.mean((1, 2, 3)), quantiles)
        - np.quantile(b.mean((1, 2, 3)), quantiles)
    )
    return mean_gap.mean(), std_gap.mean(), spread_gap.max()


@pytest.mark.parametrize(
    "config",
    [
        AugmentationConfig(flip_p=0, hole_p=0, affine_p=1.0),
        AugmentationConfig(),
    ],
    ids=["shift-scale-rotate", "whole pipeline"],
)
def test_batch_augment_matches_albumentations_in_distribution(config):
    reference = _albumentations_samples(config, 2000)
    batched = _batch_samples(config, 2000)
    mean_gap, std_gap, spread_gap = _distance(reference, batched)
    assert mean_gap < 0.008 and std_gap < 0.006 and spread_gap < 0.006
    # the same test tells a different distribution apart (it is not blind)
    wider = AugmentationConfig(
        flip_p=config.flip_p, hole_p=config.hole_p, affine_p=1.0, shift=0.2, rotate=30
    )
    far = _distance(reference, _batch_samples(wider, 2000))
    assert far[0] > 2 * 0.008 or far[1] > 2 * 0.006 or far[2] > 2 * 0.006


@pytest.mark.parametrize(
    "dx, dy, scale, degrees", [(3, -2, 1.1, 10.0), (-3, 2, 0.9, -15.0)]
)
def test_batch_augment_warps_each_pixel_as_albumentations_does(dx, dy, scale, degrees):
    """One fixed shift, scale and rotation: the tensor warp gives albumentations'
    pixels (up to its rounding to uint8), borders reflected as OpenCV's
    BORDER_REFLECT_101 does. (albumentations turns the image by -degrees in the
    tensor code's convention; the drawn angles are symmetric, so the distribution
    is the same.) A distribution test cannot see a border one pixel off."""
    import albumentations as A
    import cv2

    rows, columns = np.mgrid[0:32, 0:32]
    smooth = 127 + 60 * np.sin(columns / 5.0) + 50 * np.cos(rows / 4.0 + 1)
    image = np.stack([smooth, smooth[::-1], smooth[:, ::-1]], -1).astype(np.uint8)
    affine = A.Affine(
        translate_px={"x": dx, "y": dy},
        scale=scale,
        rotate=degrees,
        border_mode=cv2.BORDER_REFLECT_101,
        p=1.0,
    )
    expected = A.Compose([affine], seed=0)(image=image)["image"].astype(np.float32)
    x = torch.from_numpy(image).permute(2, 0, 1)[None].float()
    shift = torch.tensor([[dx / 32, dy / 32]])
    angle = torch.deg2rad(torch.tensor([-degrees]))
    warped = speed._warp(x, shift, torch.tensor([scale]), angle)
    difference = np.abs(warped[0].permute(1, 2, 0).numpy() - expected)
    assert difference.max() <= 1.0 and difference.mean() < 0.3


def test_batch_augment_flip_and_hole_rates():
    count = 4000
    half = np.zeros((32, 32, 3), np.uint8)
    half[:, 16:] = 255
    augment = BatchAugment(AugmentationConfig(affine_p=0, hole_p=0))
    images = torch.from_numpy(half)[None].repeat(count, 1, 1, 1)
    out = augment(images, torch.Generator().manual_seed(0))
    flipped = (out[:, 0, 0, 0] > 0).float().mean().item()
    assert abs(flipped - 0.5) < 5 * (0.25 / count) ** 0.5

    white = torch.full((count, 32, 32, 3), 255, dtype=torch.uint8)
    augment = BatchAugment(AugmentationConfig(flip_p=0, affine_p=0))
    out = augment(white, torch.Generator().manual_seed(0))
    holes = (out[:, 0] < 0).sum((1, 2))  # zeros become negative after normalising
    assert set(holes.unique().tolist()) == {0, 256}
    assert abs((holes > 0).float().mean().item() - 0.3) < 5 * (0.21 / count) ** 0.5
    tops = torch.stack([torch.nonzero(o[0] < 0)[0, 0] for o in out[holes > 0][:500]])
    assert tops.min() == 0 and tops.max() == 16  # every position inside the image
    assert abs(tops.float().mean().item() - 8) < 0.8


def test_tensor_loader_visits_every_image_once_with_its_label():
    count = 203
    labels = np.arange(count) % 10
    images = np.zeros((count, 32, 32, 3), np.uint8)
    images[:, 0, 0, 0] = np.arange(count) % 256
    loader = TensorBatchLoader(images, labels, batch_size=32, shuffle=True, seed=0)
    seen, pairs = 0, []
    for batch, batch_labels in loader:
        seen += len(batch_labels)
        pixel = (
            batch[:, 0, 0, 0] * loader.augment.std[0, 0, 0, 0]
            + loader.augment.mean[0, 0, 0, 0]
        )
        pairs += list(
            zip(
                (pixel * 255).round().long().tolist(),
                batch_labels.tolist(),
                strict=True,
            )
        )
    assert seen == count and len(loader) == 7
    assert sorted(pairs) == sorted((i % 256, i % 10) for i in range(count))
    first = [label for _, label in pairs[:32]]
    assert first != list(labels[:32])  # shuffled


def _flips_seen(backend, config, seed, epochs, count=256):
    """{epoch: set of the image numbers seen flipped} for a loader of ``backend``:
    image i (at most 256) is i in its red channel, its blue channel dark on the
    left and bright on the right."""
    images = np.zeros((count, 32, 32, 3), np.uint8)
    images[..., 0] = np.arange(count)[:, None, None]
    images[:, :, 16:, 2] = 255
    labels = np.arange(count) % 10
    if backend == "tensor":
        loader = TensorBatchLoader(
            images, labels, 32, shuffle=True, augment=BatchAugment(config), seed=seed
        )
    else:
        arrays = CIFAR10Arrays(images, labels, images[:1], labels[:1], "synthetic", "")
        loader, _ = get_data_loaders(
            32, num_workers=0, seed=seed, augmentation=config, arrays=arrays
        )
    std, mean = BatchAugment().std.view(3), BatchAugment().mean.view(3)
    seen = {}
    for epoch in epochs:
        set_epoch(loader, seed, epoch)
        numbers, flipped = [], []
        for batch, _ in loader:
            pixels = batch[:, :, 0, 0] * std + mean  # top-left pixel, 0 to 1
            numbers += (pixels[:, 0] * 255).round().long().tolist()
            flipped += (pixels[:, 2] > 0.5).tolist()
        assert sorted(numbers) == list(range(count))
        seen[epoch] = {n for n, f in zip(numbers, flipped, strict=True) if f}
    return seen


@pytest.mark.parametrize("backend", ["tensor", "albumentations"])
def test_alternating_flip_flips_each_image_every_other_epoch(backend):
    config = AugmentationConfig(affine_p=0, hole_p=0, alternate_flip=True)
    seen = _flips_seen(backend, config, seed=3, epochs=[1, 2, 3, 4])
    everyone = set(range(256))
    assert abs(len(seen[1]) - 128) < 5 * 8  # a fair coin per image: 5 sigma
    assert seen[2] == everyone - seen[1] and seen[3] == seen[1]
    assert seen[4] == seen[2]
    assert seen[1] == set(np.flatnonzero(alternate_flips(256, 3, 1)))
    other_seed = _flips_seen(backend, config, seed=4, epochs=[1])
    assert other_seed[1] != seen[1]
    # the same test sees that plain random flips are not alternating
    plain = _flips_seen(backend, AugmentationConfig(affine_p=0, hole_p=0), 3, [1, 2])
    assert plain[2] != set(range(256)) - plain[1]


def test_tensor_loader_normalises_like_albumentations():
    images = np.random.default_rng(0).integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    loader = TensorBatchLoader(images, np.zeros(5), batch_size=5)
    batch, _ = next(iter(loader))
    expected = torch.stack([build_test_transform()(image=i)["image"] for i in images])
    assert torch.allclose(batch, expected, atol=1e-5)


def test_dropout_after_relu_gives_the_same_parameter_gradients():
    # Reading the mask off the output (after_relu) must give exactly the
    # gradients of drawing it again, for every parameter of the reference model.
    pytest.importorskip("numba")
    grads = []
    for after_relu in (True, False):
        torch.manual_seed(0)
        model = CIFAR10Netv2(dropout=0.2).to(memory_format=torch.channels_last)
        use_fast_dropout(model)
        fast = [m for m in model.modules() if isinstance(m, FastDropout)]
        assert len(fast) == 19 and all(m.after_relu for m in fast)
        for m in fast:
            m.after_relu = after_relu
        x = torch.randn(8, 3, 32, 32).contiguous(memory_format=torch.channels_last)
        torch.manual_seed(1)
        model(x).square().sum().backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(*grads, strict=True))
    assert any(g.abs().sum() > 0 for g in grads[0])


def test_only_dropout_right_after_a_relu_is_marked():
    from cifar_lib.layers import DepthwiseSeparableConv2d

    model = nn.Sequential(
        DepthwiseSeparableConv2d(4, 4, dropout=0.1),
        nn.Sequential(nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4), nn.Dropout(0.1)),
        nn.ReLU(),
        nn.Sequential(nn.Dropout(0.1)),  # first in its own Sequential
    )
    use_fast_dropout(model)
    marks = [m.after_relu for m in model.modules() if isinstance(m, FastDropout)]
    assert marks == [True, False, False]


# --- FusedBatchNormReLU ------------------------------------------------------------


def _channels_last(*shape, seed=0):
    torch.manual_seed(seed)
    x = torch.randn(*shape).mul_(2).add_(0.7)
    return x.contiguous(memory_format=torch.channels_last)


def _reference_and_fused(channels, p=0.0, **options):
    torch.manual_seed(10)
    norm = nn.BatchNorm2d(channels, **options)
    if norm.affine:
        with torch.no_grad():
            norm.weight.uniform_(0.5, 1.5)
            norm.bias.uniform_(-0.5, 0.5)
    fused = speed.FusedBatchNormReLU.replacing(copy.deepcopy(norm), p)
    return norm, fused


@pytest.mark.parametrize(
    "shape, options",
    [
        ((8, 16, 8, 8), {}),
        ((4, 6, 5, 3), {}),  # channels not a multiple of 4
        ((3, 5, 4, 4), {"affine": False}),
        ((3, 5, 4, 4), {"momentum": None}),
        ((2, 4, 3, 3), {"track_running_stats": False}),
    ],
)
def test_fused_norm_relu_computes_what_the_three_layers_do(shape, options):
    pytest.importorskip("numba")
    assert speed._get_fused() is not None
    norm, fused = _reference_and_fused(shape[1], **options)
    for step in range(2):  # two steps: the running statistics move twice
        x = _channels_last(*shape, seed=step)
        x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
        expected, out = torch.relu(norm(x1)), fused(x2)
        assert out.is_contiguous(memory_format=torch.channels_last)
        assert torch.allclose(out, expected, atol=1e-5)
        weight = torch.randn(shape)  # NCHW: the gradient arrives in another layout
        (expected * weight).sum().backward()
        (out * weight).sum().backward()
        assert torch.allclose(x2.grad, x1.grad, atol=1e-5)
    for name, tensor in [*norm.named_parameters(), *norm.named_buffers()]:
        mine = dict([*fused.named_parameters(), *fused.named_buffers()])[name]
        assert torch.allclose(mine, tensor, atol=1e-5), name
        if tensor.requires_grad:
            assert torch.allclose(mine.grad, tensor.grad, atol=1e-4), name
    # in evaluation, and for inputs the kernels do not take, the layers' own code
    x = _channels_last(*shape, seed=7)
    assert torch.allclose(fused.eval()(x), torch.relu(norm.eval()(x)), atol=1e-6)
    fused.train(), norm.train()
    nchw = x.contiguous()
    assert torch.allclose(fused(nchw), torch.relu(norm(nchw)), atol=1e-5)


def test_fused_dropout_keeps_nine_in_ten_everywhere_and_gradient_follows():
    pytest.importorskip("numba")
    norm, fused = _reference_and_fused(16, p=0.1, affine=False)
    # 1 and 2 in alternating rows (after BatchNorm: about -1 and +1)
    x = torch.ones(64, 16, 32, 32)
    x[:, :, 1::2] += 1
    x = x.contiguous(memory_format=torch.channels_last).requires_grad_()
    torch.manual_seed(0)
    out = fused(x)
    kept = out[:, :, 1::2] != 0
    assert torch.equal(out[:, :, ::2], torch.zeros_like(out[:, :, ::2]))
    n = kept.numel()
    assert abs(kept.float().mean().item() - 0.9) < 5 * (0.09 / n) ** 0.5
    expected_value = (1 / 0.9) * (1 - 1e-5 / (0.25 + 1e-5)) ** 0.5  # ~(1 - eps) / 0.9
    assert torch.allclose(out[:, :, 1::2][kept], torch.tensor(expected_value))
    per_channel = kept.float().mean((0, 2, 3))
    assert (per_channel - 0.9).abs().max() < 5 * (0.09 / (n / 16)) ** 0.5
    # neighbours in memory (channels-last: the next channel, then the next pixel)
    dropped = ~kept.permute(0, 2, 3, 1).reshape(-1)
    for gap in (1, 2, 3, 4, 5, 16, 17):
        both = (dropped[:-gap] & dropped[gap:]).float().mean().item()
        assert abs(both - 0.01) < 5 * (0.01 * 0.99 / dropped.numel()) ** 0.5, gap
    # the gradient: that of BatchNorm, ReLU and dropout with the same mask
    weight = torch.randn(x.shape)
    (out * weight).sum().backward()
    reference_x = x.detach().clone().requires_grad_()
    mask = torch.where(out != 0, 1 / 0.9, 0.0)
    (torch.relu(norm(reference_x)) * mask * weight).sum().backward()
    assert torch.allclose(x.grad, reference_x.grad, atol=1e-5)


def test_fused_dropout_is_repeatable_and_thread_count_free():
    numba = pytest.importorskip("numba")
    _, fused = _reference_and_fused(12, p=0.3)
    x = _channels_last(16, 12, 9, 9)
    torch.manual_seed(4)
    a, b = fused(x), fused(x)
    assert not torch.equal(a != 0, b != 0)
    threads = numba.get_num_threads()
    try:
        torch.set_num_threads(1)  # the kernels follow torch's thread count
        torch.manual_seed(4)
        one = fused(x)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one != 0, a != 0)
    assert torch.allclose(one, a, atol=1e-6)


def test_fuse_batchnorm_relu_keeps_the_state_dict_and_the_training_step():
    pytest.importorskip("numba")
    from cifar_lib.models import CIFAR10ResNet

    no_dropout = functools.partial(CIFAR10Netv2, dropout=0.0)
    for build, only_fused in [(no_dropout, True), (CIFAR10ResNet, False)]:
        torch.manual_seed(0)
        plain = build().to(memory_format=torch.channels_last)
        fused = speed.fuse_batchnorm_relu(copy.deepcopy(plain))
        assert list(fused.state_dict()) == list(plain.state_dict())
        kinds = [type(m) for m in fused.modules()]
        assert speed.FusedBatchNormReLU in kinds
        if only_fused:  # every ReLU of the reference model follows a BatchNorm
            assert nn.ReLU not in kinds and nn.Dropout not in kinds
        x = _channels_last(8, 3, 32, 32)
        labels = torch.arange(8) % 10
        for model in (plain, fused):
            nn.functional.cross_entropy(model(x), labels).backward()
        pairs = zip(plain.named_parameters(), fused.parameters(), strict=True)
        for (name, a), b in pairs:
            assert torch.allclose(a.grad, b.grad, atol=1e-4, rtol=1e-3), name
        plain.eval(), fused.eval()
        assert torch.allclose(plain(x), fused(x), atol=1e-5)


def test_fused_norm_relu_without_numba_runs_the_layers_one_by_one(monkeypatch):
    monkeypatch.setattr(speed, "_kernel", False)
    monkeypatch.setattr(speed, "_fused", None)
    assert speed._get_fused() is None
    norm, fused = _reference_and_fused(8, p=0.0)
    x = _channels_last(4, 8, 6, 6)
    assert torch.allclose(fused(x), torch.relu(norm(x)), atol=1e-6)
    _, fused = _reference_and_fused(8, p=0.1, affine=False)
    torch.manual_seed(0)
    out = fused(torch.ones(64, 8, 32, 32).contiguous(memory_format=torch.channels_last))
    assert torch.equal(out, torch.zeros_like(out))  # BatchNorm of a constant: 0
    x = _channels_last(64, 8, 32, 32)
    kept = (fused(x) != 0).float().sum() / (x > 0.7).float().sum()  # about half > 0
    assert abs(kept.item() - 0.9) < 0.01


def test_fused_dropout_draws_the_documented_hash(monkeypatch):
    pytest.importorskip("numba")
    seed = (0x1234567 << 32) | 0x89ABCDEF
    monkeypatch.setattr(speed, "_draw_seed", lambda: seed)
    lo, hi, full = seed & 0xFFFFFFFF, seed >> 32, 2**32 - 1
    threshold = speed._threshold(0.5)

    def fmix32(h):  # MurmurHash3's finaliser
        h = ((h ^ (h >> 16)) * 0x85EBCA6B) & full
        h = ((h ^ (h >> 13)) * 0xC2B2AE35) & full
        return h ^ (h >> 16)

    # 1 and 2 in alternating images: after BatchNorm -1 and +1 (about)
    x = torch.ones(6, 6, 5, 3)
    x[1::2] += 1
    x = x.contiguous(memory_format=torch.channels_last)
    out = speed.FusedBatchNormReLU(6, p=0.5, affine=False).train()(x)
    memory = out.permute(0, 2, 3, 1).reshape(-1)  # element e of the kernel's view
    for e, value in enumerate(memory.tolist()):
        positive = (e // (6 * 5 * 3)) % 2 == 1
        keep = fmix32(((e * 0x9E3779B9 + lo) & full) ^ hi) >> 16 >= threshold
        assert (value > 0) == (positive and keep), e


def test_kernels_that_fail_to_compile_warn_and_fall_back(monkeypatch):
    from types import SimpleNamespace

    def broken(*args):
        raise RuntimeError("no compiler")

    monkeypatch.setattr(speed, "_kernel", None)
    monkeypatch.setattr(speed, "_fused", None)
    monkeypatch.setattr(
        speed, "_compile_kernel", lambda: SimpleNamespace(masked_scale=broken)
    )
    with pytest.warns(UserWarning, match="NumPy's generator"):
        assert speed._get_kernel() is None
    assert speed._get_fused() is None  # no kernels at all: nothing to warn about
    kernels = SimpleNamespace(norm_relu_forward=broken)
    monkeypatch.setattr(speed, "_fused", None)
    monkeypatch.setattr(speed, "_get_kernel", lambda: kernels)
    with pytest.warns(UserWarning, match="one by one"):
        assert speed._get_fused() is None
    norm, fused = _reference_and_fused(4)
    x = _channels_last(2, 4, 3, 3)
    assert torch.allclose(fused(x), torch.relu(norm(x)), atol=1e-6)


_REUSE_PROBE = """
import resource, sys, torch
from cifar_lib.speed import keep_freed_memory
told = keep_freed_memory() if sys.argv[1] == "keep" else False
faults = []
for _ in range(8):  # like training steps: the same large blocks, again and again
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    x, y = torch.ones(16 << 20), torch.ones(8 << 20)  # 64 MB and 32 MB
    del x, y
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(told, *faults)
"""


def test_keep_freed_memory_lets_later_blocks_reuse_the_pages():
    """By default every 64 MB and 32 MB block comes as fresh pages that fault in one
    by one (24,576 of 4 KB each time); once freed memory is kept, later blocks
    mostly reuse pages already there. (Not every time: a block that ``posix_memalign``
    asks for is a little larger than the one just freed, so the first reuses
    wait for free blocks to merge.)"""
    import platform
    import subprocess
    import sys

    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        assert not speed.keep_freed_memory()
        pytest.skip("glibc's malloc only")
    huge_pages = Path("/sys/kernel/mm/transparent_hugepage/enabled")
    if huge_pages.is_file() and "[always]" in huge_pages.read_text():
        pytest.skip("transparent huge pages always on: blocks fault in 2 MB at once")

    def faults(mode):
        out = subprocess.run(
            [sys.executable, "-c", _REUSE_PROBE, mode],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
        return out[0] == "True", [int(n) for n in out[1:]]

    told, kept = faults("keep")
    untold, default = faults("default")
    assert told and not untold
    assert min(default[1:]) >= 24_576  # every page, every time
    assert sum(kept[1:]) < sum(default[1:]) / 2


def test_training_on_the_cpu_keeps_freed_memory(monkeypatch):
    """train and bench set the device up through configure_device: on the CPU it
    keeps freed memory; elsewhere it leaves malloc alone."""
    from cifar_lib import train

    calls = []
    monkeypatch.setattr(train, "keep_freed_memory", lambda: calls.append(1) or True)
    train.configure_device(torch.device("cpu"))
    assert calls == [1]
    train.configure_device(torch.device("meta"))  # neither CPU nor CUDA
    assert calls == [1]


def test_cudnn_times_its_algorithms_unless_the_recipe_says_not(monkeypatch):
    """On CUDA configure_device sets cuDNN's benchmark mode from the recipe's
    cudnn_benchmark (setting the flag needs no GPU): on for the long best recipe,
    off for the 8 epochs of fast; elsewhere it leaves the flag alone."""
    from cifar_lib import train

    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    cuda = torch.device("cuda")
    train.configure_device(cuda, train.get_recipe("best").cudnn_benchmark)
    assert torch.backends.cudnn.benchmark is True
    train.configure_device(cuda, train.get_recipe("fast").cudnn_benchmark)
    assert torch.backends.cudnn.benchmark is False
    train.configure_device(torch.device("meta"))
    assert torch.backends.cudnn.benchmark is False
    assert "cudnn_benchmark" in train.Recipe.HOW
