"""The training step: its SGD arithmetic on tensors equals torch.optim.SGD, the
eager step is the plain loop, and (on a CUDA GPU only) the captured step trains
as the eager one does."""

import copy
import dataclasses
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from cifar_lib import graphs
from cifar_lib.augment import AugmentationConfig
from cifar_lib.distill import DistillationLoss, freeze
from cifar_lib.graphs import TrainStep, graph_unsupported, sgd_update
from cifar_lib.models import CIFAR10ResNet
from cifar_lib.speed import BatchAugment, TensorBatchLoader
from cifar_lib.train import (
    ExponentialMovingAverage,
    get_recipe,
    make_optimizer,
    make_scheduler,
    reference_implementation,
    train,
)

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _small_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 10),
    )


@pytest.mark.parametrize("nesterov", [True, False])
def test_sgd_update_is_torch_sgd_with_changing_lr_and_momentum(nesterov):
    """Two parameter groups (weight decay on one), the learning rate and the
    momentum changed before every step, as the one-cycle schedule does."""
    model = _small_model()
    twin = copy.deepcopy(model)
    recipe = get_recipe("fast", decay_norms_and_biases=False, nesterov=nesterov)
    ours, theirs = make_optimizer(model, recipe), make_optimizer(twin, recipe)
    assert len(ours.param_groups) == 2
    hyper = [(torch.zeros(()), torch.zeros(())) for _ in ours.param_groups]
    x = torch.randn(16, 3, 8, 8)
    y = torch.randint(0, 10, (16,))
    for step in range(6):
        for optimizer in (ours, theirs):
            for group in optimizer.param_groups:
                group["lr"] = 0.05 + 0.02 * step
                group["momentum"] = 0.95 - 0.02 * step
        for net, optimizer in ((model, ours), (twin, theirs)):
            optimizer.zero_grad()
            nn.functional.cross_entropy(net(x), y).backward()
        if step == 0:  # the first step makes the momentum buffers
            ours.step()
        else:
            for group, (lr, momentum) in zip(ours.param_groups, hyper, strict=True):
                lr.fill_(group["lr"])
                momentum.fill_(group["momentum"])
            sgd_update(ours, hyper)
        theirs.step()
    for a, b in zip(model.parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
        buffer_a = ours.state[a]["momentum_buffer"]
        buffer_b = theirs.state[b]["momentum_buffer"]
        torch.testing.assert_close(buffer_a, buffer_b, rtol=1e-5, atol=1e-6)
    # the weights moved: the test compares updates, not two idle models
    assert not torch.equal(model[0].weight, _small_model()[0].weight)


def test_sgd_update_refuses_what_it_does_not_implement():
    model = _small_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, dampening=0.1)
    with pytest.raises(ValueError, match="dampening"):
        sgd_update(optimizer, [(torch.tensor(0.1), torch.tensor(0.9))])


def _plain_loop(model, optimizer, ema, batches, scheduler):
    """The training loop as written before TrainStep: the reference for it."""
    criterion = nn.CrossEntropyLoss(label_smoothing=0.1)
    loss_sum, correct = 0.0, 0
    for images, labels in batches:
        logits = model(images)
        loss = criterion(logits, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        ema.update_parameters(model)
        scheduler.step()
        loss_sum += loss.item() * len(labels)
        correct += (logits.argmax(1) == labels).sum().item()
    return loss_sum, correct


def test_eager_step_is_the_plain_loop():
    recipe = get_recipe("fast", epochs=1)
    batches = [
        (torch.randn(n, 3, 8, 8), torch.randint(0, 10, (n,))) for n in (16, 16, 16, 5)
    ]
    runs = []
    for use_step in (True, False):
        model = _small_model().train()
        optimizer = make_optimizer(model, recipe)
        scheduler, _ = make_scheduler(optimizer, recipe, len(batches))
        ema = ExponentialMovingAverage(model, 0.9)
        if use_step:
            criterion = nn.CrossEntropyLoss(label_smoothing=0.1)
            step = TrainStep(model, optimizer, criterion, torch.device("cpu"), ema)
            for images, labels in batches:
                step(images, labels)
                scheduler.step()
            sums = step.loss_sum.item(), step.correct.item()
            assert step.seen == 53 and step.eager_steps == 4 and step.replays == 0
        else:
            sums = _plain_loop(model, optimizer, ema, batches, scheduler)
        runs.append((model, ema, sums))
    (model, ema, sums), (model2, ema2, sums2) = runs
    assert sums[0] == pytest.approx(sums2[0], rel=1e-6) and sums[1] == sums2[1]
    for a, b in zip(
        model.state_dict().values(), model2.state_dict().values(), strict=True
    ):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    for a, b in zip(ema.state_dict().values(), ema2.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_which_recipes_are_captured():
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    assert "CUDA" in graph_unsupported(get_recipe("fast"), cpu)
    assert graph_unsupported(get_recipe("fast"), gpu) is None
    assert graph_unsupported(get_recipe("best"), gpu) is None
    assert "adam" in graph_unsupported(get_recipe("seed"), gpu)
    assert "turns it off" in graph_unsupported(
        reference_implementation(get_recipe("fast")), gpu
    )
    no_momentum = get_recipe("fast", schedule="plateau", momentum=0.0)
    assert "momentum" in graph_unsupported(no_momentum, gpu)
    scaler = SimpleNamespace(is_enabled=lambda: True)  # a GradScaler in use
    assert "scaling" in graph_unsupported(get_recipe("fast"), gpu, scaler)
    with pytest.raises(ValueError, match="CUDA"):
        TrainStep(_small_model(), None, None, cpu, capture=True)


def test_how_the_step_runs_is_not_what_is_trained():
    fast = get_recipe("fast")
    eager = dataclasses.replace(fast, cuda_graph=False)
    assert fast.what_is_trained() == eager.what_is_trained()
    assert "cuda_graph" in fast.HOW


@pytest.mark.parametrize("chunk", [None, 48, 50, 1000])
def test_chunked_loader_gives_the_same_batches_in_the_same_order(chunk):
    """Augmenting several batches at once changes only which random numbers each
    image draws; the order of the images and the batch sizes are unchanged."""
    images = torch.randint(0, 256, (100, 32, 32, 3), dtype=torch.uint8).numpy()
    labels = torch.arange(100).numpy()
    nothing = BatchAugment(AugmentationConfig(flip_p=0.0, affine_p=0.0, hole_p=0.0))
    batches = {}
    for size in (None, chunk):
        loader = TensorBatchLoader(
            images, labels, 16, shuffle=True, augment=nothing, seed=3, chunk=size
        )
        loader.set_epoch(3, 2)
        batches[size] = list(loader)
    for (x, y), (x2, y2) in zip(batches[None], batches[chunk], strict=True):
        assert torch.equal(y, y2) and torch.equal(x, x2)
    assert [len(y) for _, y in batches[chunk]] == [16] * 6 + [4]


def test_chunked_augmentation_draws_each_image_its_own_transform():
    image = torch.randint(0, 256, (1, 32, 32, 3), dtype=torch.uint8)
    images = image.repeat(4000, 1, 1, 1).numpy()
    flips = BatchAugment(AugmentationConfig(flip_p=0.5, affine_p=0.0, hole_p=0.0))
    loader = TensorBatchLoader(
        images, torch.zeros(4000).long().numpy(), 32, augment=flips, chunk=4000
    )
    x = torch.cat([batch for batch, _ in loader])
    flipped = (x - x[:1].flip(3)).abs().amax((1, 2, 3)) < 1e-6
    same = (x - x[:1]).abs().amax((1, 2, 3)) < 1e-6
    if bool(flipped[0]):  # the first image itself was flipped: swap the roles
        flipped, same = same, flipped
    assert bool((flipped | same).all())
    share = flipped.float().mean().item()
    assert abs(share - 0.5) < 5 * (0.25 / 4000) ** 0.5
    # neighbours are independent: as many changes between neighbours as chance gives
    changes = (flipped[1:] != flipped[:-1]).float().mean().item()
    assert abs(changes - 0.5) < 5 * (0.25 / 3999) ** 0.5


# --- on a CUDA GPU only ---------------------------------------------------------------


def _step_by_step_against_eager(
    device: torch.device, capture: bool, taught: bool = False
) -> TrainStep:
    """Train with ``TrainStep(capture=capture)``; before every step copy the whole
    state (weights, BatchNorm statistics, momentum buffers, learning rate and
    momentum, weight average) into an eager twin, make the same step with both
    and compare. Comparing step by step keeps the test exact: over several steps
    these trainings are chaotic (a change of one part in a million in one weight
    grows to 0.05 in the stem's weights within 16 steps of the fast recipe).
    ``taught``: both steps distil from the same frozen teacher."""
    torch.manual_seed(1)
    recipe = get_recipe("fast", epochs=1, decay_norms_and_biases=False)
    sizes = [32] * 6 + [7] + [32] * 3  # a smaller batch in between runs eagerly
    batches = [
        (torch.randn(n, 3, 32, 32).to(device), torch.randint(0, 10, (n,)).to(device))
        for n in sizes
    ]
    torch.manual_seed(0)
    model = CIFAR10ResNet().to(device).to(memory_format=torch.channels_last)
    optimizer = make_optimizer(model, recipe)
    scheduler, _ = make_scheduler(optimizer, recipe, len(batches))
    ema = ExponentialMovingAverage(model, recipe.ema)
    criterion = nn.CrossEntropyLoss(label_smoothing=recipe.label_smoothing)
    teacher = None
    if taught:
        criterion = DistillationLoss(0.9, 4.0, recipe.label_smoothing)
        teacher = CIFAR10ResNet().to(device).to(memory_format=torch.channels_last)
        teacher = freeze(teacher)
    step = TrainStep(
        model, optimizer, criterion, device, ema, capture=capture, teacher=teacher
    )
    for number, (images, labels) in enumerate(batches):
        twin = copy.deepcopy(model)
        twin_optimizer = make_optimizer(twin, recipe)
        # a deep copy: load_state_dict keeps the very tensors it is given
        twin_optimizer.load_state_dict(copy.deepcopy(optimizer.state_dict()))
        twin_ema = copy.deepcopy(ema)
        twin_ema.module = copy.deepcopy(ema.module)
        twin_step = TrainStep(
            twin, twin_optimizer, criterion, device, twin_ema, teacher=teacher
        )
        before = step.loss_sum.clone()
        step(images, labels)
        twin_step(images, labels)
        scheduler.step()
        pairs = [
            *zip(model.state_dict().values(), twin.state_dict().values(), strict=True),
            *zip(
                ema.state_dict().values(), twin_ema.state_dict().values(), strict=True
            ),
            *[
                (
                    optimizer.state[p]["momentum_buffer"],
                    twin_optimizer.state[q]["momentum_buffer"],
                )
                for p, q in zip(model.parameters(), twin.parameters(), strict=True)
            ],
            (step.loss_sum - before, twin_step.loss_sum),
        ]
        for index, (a, b) in enumerate(pairs):
            message = f"step {number}, tensor {index} of {len(pairs)}"
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6, msg=message)
    assert step.seen == sum(sizes)
    assert int(ema.n_averaged) == len(sizes)
    return step


@pytest.mark.parametrize("taught", [False, True])
def test_step_by_step_harness_on_the_cpu(taught):
    """The CUDA test's harness, both steps eager: it must pass exactly."""
    step = _step_by_step_against_eager(torch.device("cpu"), False, taught)
    assert step.eager_steps == 10 and step.replays == 0


@cuda
@pytest.mark.parametrize("taught", [False, True])
def test_captured_step_makes_the_eager_step(taught):
    """With a teacher too: its forward pass is part of the captured step."""
    # the same convolution algorithms in both
    with torch.backends.cudnn.flags(enabled=True, benchmark=False, deterministic=True):
        step = _step_by_step_against_eager(torch.device("cuda"), True, taught)
    assert step.graph is not None
    assert step.eager_steps == graphs.WARM_UP_STEPS + 1  # the warm-up, the 7 images
    assert step.replays == 10 - graphs.WARM_UP_STEPS - 1


@cuda
def test_a_cuda_run_replays_its_steps(tmp_path, synthetic):
    """A whole run on the GPU (300 images, batch 32: nine full steps and one of 12
    per epoch) says it replays a graph, and learns."""
    lines = []
    result = train(
        get_recipe("fast", epochs=3, batch_size=32, target=1.0),
        tmp_path / "run",
        arrays=synthetic,
        device="cuda",
        progress=False,
        log=lines.append,
    )
    assert any("replays one CUDA graph" in line for line in lines)
    first, last = result.history[0], result.history[-1]
    assert last["train_loss"] < first["train_loss"]
    assert last["train_accuracy"] > 0.3  # ten classes: chance is 0.1
    for name, tensor in result.model.state_dict().items():
        assert torch.isfinite(tensor.float()).all(), name
