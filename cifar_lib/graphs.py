"""One training step, run eagerly or replayed as one CUDA graph.

On a GPU a training step of these small models is mostly the launching of
kernels: Python asks for several hundred small kernels one after the other, and
the GPU finishes each before the next has been asked for. A CUDA graph records the
kernels of one step once and replays them all with one call, so the GPU no longer
waits for Python: on an H100 a step of the fast recipe (at batch 32, as it was
then) took 8.4-9.3 ms launched from Python and 1.26 ms replayed
(results/gpu/README.md, one benchmark run each, on two machines of the same kind).

``TrainStep`` is the step the training loop calls for every batch:

- forward (and the teacher's, when the recipe distils), loss, backward, the
  optimiser's step, the update of the weight average (if any) and the running
  sums of loss and correct predictions;
- eagerly, exactly as written, on any device; or, on CUDA with ``capture=True``,
  eagerly for the first ``WARM_UP_STEPS`` full batches (they create the momentum
  buffers and let cuDNN choose its algorithms), then captured once and replayed
  for every later batch of the same size. A smaller last batch runs eagerly on
  the same tensors.

What a replay cannot do is read Python numbers that change: the one-cycle
schedule changes the learning rate and the momentum after every step. So the
captured step does not call ``torch.optim.SGD.step`` (which takes them as Python
numbers) but ``sgd_update``, the same arithmetic with the learning rate and the
momentum read from tensors on the GPU, filled from the optimiser's parameter
groups before each replay. The optimiser keeps its parameter groups, its momentum
buffers and its state dict: checkpoints and schedulers see no difference.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

WARM_UP_STEPS = 3


def graph_unsupported(recipe, device: torch.device, scaler=None) -> str | None:
    """Why ``recipe`` cannot train with a captured step on ``device`` (None if it
    can): the captured step is for CUDA, SGD with momentum, no loss scaling."""
    if not recipe.cuda_graph:
        return "the recipe turns it off"
    if device.type != "cuda":
        return "CUDA graphs need a CUDA GPU"
    if recipe.optimizer != "sgd":
        return f"the captured step implements SGD, not {recipe.optimizer}"
    if recipe.schedule != "onecycle" and recipe.momentum == 0:
        return "SGD without momentum keeps no momentum buffers to capture"
    if scaler is not None and scaler.is_enabled():
        return "float16 loss scaling reads an overflow flag back every step"
    return None


@torch.no_grad()
def sgd_update(optimizer: torch.optim.SGD, hyper: list[tuple[Tensor, Tensor]]) -> None:
    """``optimizer.step()`` for SGD with momentum (``dampening`` 0), with each
    parameter group's learning rate and momentum read from the 0-dimensional
    tensors ``hyper[g] = (lr, momentum)`` rather than from the group.

    As ``torch.optim.SGD`` (foreach): d = grad + weight_decay * p;
    buf = momentum * buf + d; d = d + momentum * buf (Nesterov) or d = buf;
    p = p - lr * d. The momentum buffers must exist (one eager step makes them).
    """
    for group, (lr, momentum) in zip(optimizer.param_groups, hyper, strict=True):
        if group["dampening"] or group["maximize"]:
            raise ValueError("sgd_update implements dampening 0, maximize False")
        params = [p for p in group["params"] if p.grad is not None]
        if not params:
            continue
        grads = [p.grad for p in params]
        buffers = [optimizer.state[p]["momentum_buffer"] for p in params]
        if group["weight_decay"]:
            grads = torch._foreach_add(grads, params, alpha=group["weight_decay"])
        torch._foreach_mul_(buffers, momentum)
        torch._foreach_add_(buffers, grads)
        if group["nesterov"]:
            steps = torch._foreach_add(grads, torch._foreach_mul(buffers, momentum))
        else:
            steps = list(buffers)
        torch._foreach_sub_(params, torch._foreach_mul(steps, lr))


class TrainStep:
    """One training step per call, with running sums over the calls (see the
    module's docstring). ``loss_sum`` and ``correct`` stay on the device; read
    them (a synchronisation) only when needed."""

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        criterion: nn.Module,
        device: torch.device,
        ema=None,
        scaler: torch.amp.GradScaler | None = None,
        amp_dtype: torch.dtype | None = None,
        capture: bool = False,
        teacher: nn.Module | None = None,
    ) -> None:
        if capture and device.type != "cuda":
            raise ValueError("capture=True needs a CUDA device")
        self.model, self.optimizer, self.criterion = model, optimizer, criterion
        self.device, self.ema, self.amp_dtype = device, ema, amp_dtype
        self.teacher = teacher  # criterion(logits, labels, teacher's logits) if any
        self.scaler = scaler if scaler is not None and scaler.is_enabled() else None
        if capture and self.scaler is not None:
            raise ValueError("a captured step cannot scale the loss")
        self.capture = capture
        self.loss_sum = torch.zeros((), device=device)
        self.correct = torch.zeros((), device=device, dtype=torch.long)
        self.seen = 0
        self.eager_steps = 0
        self.replays = 0
        self._batch_size = 0  # the largest batch met: the one that is captured
        self.graph: torch.cuda.CUDAGraph | None = None
        self._side = torch.cuda.Stream(device) if capture else None

    def reset(self) -> None:
        """Start new running sums (each epoch)."""
        self.loss_sum.zero_()
        self.correct.zero_()
        self.seen = 0

    def __call__(self, images: Tensor, labels: Tensor) -> None:
        if self.capture:  # streams and graphs belong to the current GPU: make it ours
            with torch.cuda.device(self.device):
                self._step(images, labels)
        else:
            self._eager(images, labels)
        self.seen += len(labels)

    def _step(self, images: Tensor, labels: Tensor) -> None:
        if self.graph is None and self.eager_steps >= WARM_UP_STEPS:
            if len(labels) == self._batch_size:
                self._capture(images, labels)
        if self.graph is not None and len(labels) == self._batch_size:
            self._replay(images, labels)
        elif self.graph is None:
            self._warm_up(images, labels)
        else:
            self._eager(images, labels)

    # --- eager ---------------------------------------------------------------------

    def _forward(self, images: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        use_amp = self.amp_dtype is not None
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=use_amp):
            logits = self.model(images)
            if self.teacher is None:
                loss = self.criterion(logits, labels)
            else:
                with torch.no_grad():
                    taught = self.teacher(images)
                loss = self.criterion(logits, labels, taught)
        return logits, loss

    def _count(self, logits: Tensor, loss: Tensor, labels: Tensor) -> None:
        self.loss_sum += loss.detach() * len(labels)
        self.correct += (logits.argmax(1) == labels).sum()

    def _eager(self, images: Tensor, labels: Tensor) -> None:
        # Once a graph exists its gradient tensors must stay: zero them in place.
        self.optimizer.zero_grad(set_to_none=self.graph is None)
        logits, loss = self._forward(images, labels)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss.backward()
            self.optimizer.step()
        if self.ema is not None:
            self.ema.update_parameters(self.model)
        self._count(logits, loss, labels)
        self.eager_steps += 1

    def _warm_up(self, images: Tensor, labels: Tensor) -> None:
        """An eager step on a side stream, as CUDA graph capture wants."""
        self._batch_size = max(self._batch_size, len(labels))
        self._side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(self._side):
            self._eager(images, labels)
        torch.cuda.current_stream(self.device).wait_stream(self._side)

    # --- captured ------------------------------------------------------------------

    def _capture(self, images: Tensor, labels: Tensor) -> None:
        self._images = torch.empty_like(images)  # same shape, dtype and layout
        self._labels = torch.empty_like(labels)
        self._hyper = [
            (torch.zeros((), device=self.device), torch.zeros((), device=self.device))
            for _ in self.optimizer.param_groups
        ]
        torch.cuda.synchronize(self.device)
        self.optimizer.zero_grad(set_to_none=True)  # backward allocates them inside
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            logits, loss = self._forward(self._images, self._labels)
            loss.backward()
            sgd_update(self.optimizer, self._hyper)
            if self.ema is not None:
                self.ema.blend(self.model)
            self._count(logits, loss, self._labels)
        self.graph = graph  # nothing ran yet: the first replay makes this step

    def _replay(self, images: Tensor, labels: Tensor) -> None:
        self._images.copy_(images)
        self._labels.copy_(labels)
        for group, (lr, momentum) in zip(
            self.optimizer.param_groups, self._hyper, strict=True
        ):
            lr.fill_(group["lr"])
            momentum.fill_(group["momentum"])
        self.graph.replay()
        if self.ema is not None:
            self.ema.n_averaged += 1
        self.replays += 1
