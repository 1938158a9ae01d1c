"""The whitening initialisation decorrelates the first layer's inputs."""

import pytest
import torch
from torch import nn

from cifar_lib.data import make_synthetic_cifar
from cifar_lib.errors import ConfigError
from cifar_lib.models import CIFAR10ResNet
from cifar_lib.whitening import patch_covariance, whitening_init


@pytest.fixture(scope="module")
def images():
    return make_synthetic_cifar(train_per_class=40, test_per_class=1).train_images


def test_first_layer_starts_decorrelated(images):
    model = CIFAR10ResNet()
    conv = whitening_init(model, images, eps=0.0)
    weight = conv.weight.detach().double().flatten(1)  # (32, 27)
    # output covariance of the filters over the same patches: W C W^T
    covariance = weight @ patch_covariance(images, 3) @ weight.T
    half = weight.shape[0] // 2
    assert torch.allclose(
        covariance[:half, :half], torch.eye(half, dtype=torch.double), atol=1e-6
    )
    assert torch.equal(conv.weight[half:], -conv.weight[:half])
    # the parameter count is unchanged and the layer still trains
    assert conv.weight.requires_grad


def test_whitening_keeps_the_directions_of_largest_variance(images):
    conv = whitening_init(CIFAR10ResNet(), images, eps=0.0)
    variances = torch.linalg.eigvalsh(patch_covariance(images, 3))
    filters = conv.weight.detach().double().flatten(1)[:16]
    # a whitened direction of variance v has a filter of norm 1 / sqrt(v)
    norms = filters.norm(dim=1).sort().values
    expected = (1 / variances[-16:].sqrt()).sort().values
    assert torch.allclose(norms, expected, rtol=1e-6)


def test_first_layers_that_cannot_be_whitened_are_refused(images):
    too_wide = nn.Sequential(nn.Conv2d(3, 64, 3))  # 32 pairs > 27 directions
    with pytest.raises(ConfigError, match="at most 54; this one has 64"):
        whitening_init(too_wide, images)
    grouped = nn.Sequential(nn.Conv2d(3, 3, 3, groups=3))
    with pytest.raises(ConfigError, match="groups=3"):
        whitening_init(grouped, images)


def test_the_torch_covariance_equals_the_numpy_one(images):
    """On a GPU the covariance is computed with PyTorch there; run that code on the
    CPU here (chunks of 7 images, so that the sums run over several) and compare."""
    from cifar_lib.whitening import _patch_covariance_torch

    expected = patch_covariance(images, 3)
    computed = _patch_covariance_torch(images, 3, 7, torch.device("cpu"))
    assert computed.dtype == torch.float64 and computed.device.type == "cpu"
    assert torch.allclose(computed, expected, rtol=1e-10, atol=1e-12)
    five = _patch_covariance_torch(images, 5, 1000, torch.device("cpu"))
    assert torch.allclose(five, patch_covariance(images, 5), rtol=1e-10, atol=1e-12)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_the_covariance_on_the_gpu_is_the_cpu_one(images):
    """(The filters are then computed on the CPU from it, the same code either way;
    an eigenvector's sign may flip for a change in the last bits, so they are not
    compared.)"""
    on_gpu = patch_covariance(images, 3, device=torch.device("cuda"))
    assert on_gpu.device.type == "cpu"
    assert torch.allclose(on_gpu, patch_covariance(images, 3), rtol=1e-10, atol=1e-12)
    whitening_init(CIFAR10ResNet(), images, device=torch.device("cuda"))
