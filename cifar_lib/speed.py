"""Making training fast without changing what is trained.

Taught in ``notebooks/06_beyond_85.ipynb``. Each device here draws from the same
distribution as the straightforward code it replaces; ``tests/test_speed.py``
checks that.

* ``FastDropout``: on the CPU, ``nn.Dropout`` spends most of its time drawing
  Bernoulli numbers (measured here: about 40% of a CIFAR10Netv2 training step).
  With Numba installed, one compiled loop, run on every core, draws the mask and
  applies it in a single pass over memory; the mask is never stored: the
  backward pass draws it again from the same seed or, when the input came out of
  a ReLU, reads it off the output (zero where dropped). The random numbers are
  SplitMix64's sequence (a counter-based generator: word ``i`` of the sequence is
  a fixed mixing function of ``seed + i``, so any thread can draw any part of the
  mask, and the result does not depend on the number of threads). Without Numba,
  NumPy's PCG64 fills memory with random bits instead. Either way, comparing
  16-bit numbers with a threshold gives each element the keep probability
  ``1 - p`` rounded to a multiple of 1/65536 (0.9 becomes 0.899994).
* ``FusedBatchNormReLU``: BatchNorm (training statistics), ReLU and dropout as one
  layer on the CPU, one compiled call each way that makes two passes over memory
  (the separate layers make one or two each, forward and backward). Its dropout
  keeps with the same probability, from a 32-bit hash of each element's index.
  ``fuse_batchnorm_relu(model)`` puts it in place of BatchNorm, ReLU, Dropout
  wherever they follow each other in an ``nn.Sequential``.
* ``BatchAugment`` and ``TensorBatchLoader``: the reference augmentation applied
  to whole batches as tensors, from the same distribution.
* ``keep_freed_memory``: glibc's malloc told to keep large freed blocks for the
  next step instead of handing them back to the system (not a change of what is
  computed at all).
"""

from __future__ import annotations

import ctypes
import platform
import sys
import threading
import warnings
from types import SimpleNamespace

import numpy as np
import torch
from torch import Tensor, nn

_LEVELS = 1 << 16
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4  # mallopt's parameters, from glibc's malloc.h


def keep_freed_memory() -> bool:
    """Tell glibc's malloc to keep the memory that a training step frees, for the
    next step to reuse; True if it was told, False where the C library is not
    glibc (macOS, Windows, musl), where nothing changes.

    By default glibc gives a large block its own ``mmap`` and unmaps it when it is
    freed (above a threshold that starts at 128 KB and rises as such blocks are
    freed, to at most 32 MB on 64-bit Linux), so the next step's activations of the
    same size arrive as fresh pages that the kernel faults in and zeroes, 4 KB at a
    time. At batch 256 the depthwise model's activations (50 MB each at full
    resolution) are above any threshold: a best-recipe run on the 2-core CPU made
    about 300,000 page faults a second and spent 30% of its time in the kernel
    (sampled once from /proc and vmstat during its second epoch).
    With freed memory kept (``M_MMAP_MAX`` 0: no block gets its own mapping;
    ``M_TRIM_THRESHOLD`` 2 GB: the heap is not trimmed back) later steps reuse the
    pages; ``benchmarks/malloc_cost.py`` measures both ways
    (``results/bench_cpu_malloc.json``). It holds for the whole process, and the
    memory stays with the process until it ends.
    """
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return False
    mallopt = ctypes.CDLL(None).mallopt  # the C library the interpreter runs on
    return bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))


def _draw_seed() -> int:
    """A 62-bit seed taken from PyTorch's generator, so ``torch.manual_seed``
    makes every mask repeatable (and checkpoints restore the stream)."""
    return int(torch.randint(0, 2**62, (1,)).item())


def _threshold(p: float) -> int:
    """16-bit draws below this are dropped: P(drop) = round(p * 65536) / 65536."""
    return round(p * _LEVELS)


def _keep_mask(x: Tensor, p: float) -> Tensor:
    """A boolean tensor shaped like ``x`` (same memory layout), True with
    probability 1 - p, independently for each element (NumPy's PCG64)."""
    # Raw 64-bit outputs of PCG64, read as four 16-bit integers each: the fastest
    # way NumPy offers to fill memory with random bits.
    words = -(-x.numel() // 4)
    raw = np.random.PCG64(_draw_seed()).random_raw(words).view(np.int16)
    # int16 covers [-32768, 32767]: shift the threshold by the same amount.
    keep = torch.from_numpy(raw[: x.numel()]) >= _threshold(p) - _LEVELS // 2
    if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last):
        n, c, h, w = x.shape
        return keep.view(n, h, w, c).permute(0, 3, 1, 2)
    return keep.view(x.shape)


class _Multiply(torch.autograd.Function):
    """x * mask, with the mask kept for the backward pass (no gradient for it)."""

    @staticmethod
    def forward(ctx, x: Tensor, mask: Tensor) -> Tensor:
        ctx.save_for_backward(mask)
        return x * mask

    @staticmethod
    def backward(ctx, grad: Tensor):
        (mask,) = ctx.saved_tensors
        return grad * mask, None


# --- the compiled kernel (Numba) ------------------------------------------------

_kernel = None  # compiled on first use; False when Numba is missing or fails


def _compile_kernel():
    """Compile the dropout loop with Numba, or return None without Numba."""
    try:
        import numba
    except ImportError:
        return None

    gamma = np.uint64(0x9E3779B97F4A7C15)  # SplitMix64's constants
    m1, m2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)
    s16, s27, s30 = np.uint64(16), np.uint64(27), np.uint64(30)
    s31, s32, s48 = np.uint64(31), np.uint64(32), np.uint64(48)
    low16, zero = np.uint64(0xFFFF), np.float32(0.0)

    @numba.njit(inline="always")
    def splitmix64(seed, word):  # pragma: no cover (JIT)
        # SplitMix64's output number word + 1 from state seed
        z = seed + np.uint64(word + 1) * gamma
        z = (z ^ (z >> s30)) * m1
        z = (z ^ (z >> s27)) * m2
        return z ^ (z >> s31)

    # Plain loops over the elements (prange splits them between the threads):
    # measured here, they run 1.2x (masked_scale) and 10x (scale_where_positive)
    # faster than the same loops split into blocks by hand.
    @numba.njit(parallel=True, cache=True)
    def masked_scale(src, dst, seed, threshold, scale):  # pragma: no cover (JIT)
        # dst[j] = src[j] * scale where 16-bit draw j >= threshold, else 0.
        # Draw j is bits 16*(j % 4) .. of SplitMix64's output number j // 4 + 1.
        n = src.size
        full = n // 4
        for w in numba.prange(full):
            z = splitmix64(seed, w)
            j = 4 * w
            dst[j] = src[j] * scale if (z & low16) >= threshold else zero
            dst[j + 1] = src[j + 1] * scale if (z >> s16 & low16) >= threshold else zero
            dst[j + 2] = src[j + 2] * scale if (z >> s32 & low16) >= threshold else zero
            dst[j + 3] = src[j + 3] * scale if (z >> s48) >= threshold else zero
        z = splitmix64(seed, full)
        for j in range(4 * full, n):  # the last 1 to 3 elements
            draw = (z >> np.uint64(16 * (j - 4 * full))) & low16
            dst[j] = src[j] * scale if draw >= threshold else zero

    @numba.njit(parallel=True, cache=True)
    def scale_where_positive(src, dst, ref, scale):  # pragma: no cover (JIT)
        # dst[j] = src[j] * scale where ref[j] > 0, else 0.
        for j in numba.prange(src.size):
            dst[j] = src[j] * scale if ref[j] > zero else zero

    # --- BatchNorm, ReLU and dropout in two passes each way (FusedBatchNormReLU) ---
    # x is a (rows, channels) view of a channels-last activation: row i is one
    # pixel of one image, so channel j's statistics are column j's. Sums are kept
    # in float64, one partial sum per block of rows, added up at the end. One call
    # each way does everything (a call from Python costs far more than the
    # per-channel arithmetic).

    @numba.njit(parallel=True, cache=True)
    def gradient_sums(grad, out, x, mean, blocks):  # pragma: no cover (JIT)
        # sums over each column of g and of g * (x - mean), g = grad where out > 0
        rows, cols = x.shape
        part = np.zeros((blocks, 2, cols))
        size = -(-rows // blocks)
        for k in numba.prange(blocks):
            s0, s1 = np.zeros(cols), np.zeros(cols)
            for i in range(k * size, min(rows, (k + 1) * size)):
                for j in range(cols):
                    g = np.float64(grad[i, j] if out[i, j] > zero else zero)
                    s0[j] += g
                    s1[j] += g * (x[i, j] - mean[j])
            part[k, 0], part[k, 1] = s0, s1
        return part.sum(axis=0)

    @numba.njit(parallel=True, cache=True)
    def moments(x, blocks):  # pragma: no cover (JIT)
        # sums of x and of x * x over each column
        rows, cols = x.shape
        part = np.zeros((blocks, 2, cols))
        size = -(-rows // blocks)
        for k in numba.prange(blocks):
            s0, s1 = np.zeros(cols), np.zeros(cols)
            for i in range(k * size, min(rows, (k + 1) * size)):
                for j in range(cols):
                    v = np.float64(x[i, j])
                    s0[j] += v
                    s1[j] += v * v
            part[k, 0], part[k, 1] = s0, s1
        return part.sum(axis=0)

    # The dropout draws one 32-bit hash per element (MurmurHash3's finaliser, which
    # the compiler vectorises; SplitMix64's 64-bit products it cannot): measured
    # here, the pass with dropout then costs about twice the pass without, not
    # about four times. Element e of a call keyed (lo, hi) keeps where the top 16
    # bits of fmix32(((e * golden + lo) mod 2**32) xor hi) reach the threshold.
    golden32, f1, f2 = (
        np.uint64(0x9E3779B9),
        np.uint64(0x85EBCA6B),
        np.uint64(0xC2B2AE35),
    )
    low32, s13 = np.uint64(0xFFFFFFFF), np.uint64(13)

    @numba.njit(parallel=True, cache=True)
    def norm_relu_forward(
        x, out, weight, bias, running_mean, running_var, momentum, eps, blocks, drop
    ):  # pragma: no cover (JIT)
        # out = max(x * a + b, 0) (then dropout), a = weight / sqrt(var + eps),
        # b = bias - mean * a; the running statistics are updated in place when
        # momentum > 0; drop = (lo, hi, threshold, scale), threshold 0 for
        # no dropout. Returns the batch mean and 1 / sqrt(var + eps).
        rows, cols = x.shape
        sums = moments(x, blocks)
        mean = np.empty(cols, np.float32)
        invstd = np.empty(cols, np.float32)
        a = np.empty(cols, np.float32)
        b = np.empty(cols, np.float32)
        for j in range(cols):
            m = sums[0, j] / rows
            var = max(sums[1, j] / rows - m * m, 0.0)
            inv = 1.0 / np.sqrt(var + eps)
            mean[j], invstd[j] = m, inv
            a[j] = weight[j] * inv
            b[j] = bias[j] - m * weight[j] * inv
            if momentum > 0:
                unbiased = var * rows / max(rows - 1, 1)
                running_mean[j] = (1 - momentum) * running_mean[j] + momentum * m
                running_var[j] = (1 - momentum) * running_var[j] + momentum * unbiased
        lo, hi, threshold, scale = drop
        factor = np.float32(scale)
        if threshold == 0:  # nothing dropped (p = 0, or p below 1/131072)
            for i in numba.prange(rows):
                for j in range(cols):
                    v = x[i, j] * a[j] + b[j]
                    out[i, j] = v * factor if v > zero else zero
            return mean, invstd
        for i in numba.prange(rows):
            first = np.uint64(i * cols)
            for j in range(cols):
                h = (((first + np.uint64(j)) * golden32 + lo) & low32) ^ hi
                h = ((h ^ (h >> s16)) * f1) & low32
                h = ((h ^ (h >> s13)) * f2) & low32
                h = h ^ (h >> s16)
                v = x[i, j] * a[j] + b[j]
                keep = (h >> s16) >= threshold
                out[i, j] = v * factor if v > zero and keep else zero
        return mean, invstd

    @numba.njit(parallel=True, cache=True)
    def norm_relu_backward(
        grad, out, x, dx, mean, invstd, weight, scale, blocks
    ):  # pragma: no cover (JIT)
        # With g the gradient reaching BatchNorm's output (scale * grad where out
        # > 0): d bias = sum g, d weight = sum g * xhat, and
        # dx = a * (g - mean(g) - xhat * mean(g * xhat)), xhat = (x - mean) * invstd,
        # written as dx = p * grad (where out > 0) + q * x + r per column.
        rows, cols = x.shape
        sums = gradient_sums(grad, out, x, mean, blocks)
        p = np.empty(cols, np.float32)
        q = np.empty(cols, np.float32)
        r = np.empty(cols, np.float32)
        d_weight = np.empty(cols, np.float32)
        d_bias = np.empty(cols, np.float32)
        for j in range(cols):
            sum_g = scale * sums[0, j]
            sum_gx = scale * sums[1, j] * invstd[j]
            a = np.float64(weight[j]) * invstd[j]
            p[j] = a * scale
            q[j] = -a * invstd[j] * sum_gx / rows
            r[j] = -a * sum_g / rows - q[j] * np.float64(mean[j])
            d_weight[j], d_bias[j] = sum_gx, sum_g
        for i in numba.prange(rows):
            for j in range(cols):
                g = grad[i, j] * p[j] if out[i, j] > zero else zero
                dx[i, j] = g + q[j] * x[i, j] + r[j]
        return d_weight, d_bias

    return SimpleNamespace(
        masked_scale=masked_scale,
        scale_where_positive=scale_where_positive,
        norm_relu_forward=norm_relu_forward,
        norm_relu_backward=norm_relu_backward,
    )


def _ready(kernel, warm_up, instead: str):
    """``kernel`` once ``warm_up(kernel)`` has run (it calls the kernels on tiny
    inputs, so that Numba compiles them now and a failure shows here); False when
    there is no kernel or it fails, with a warning saying what is done ``instead``."""
    if kernel is None:
        return False
    try:
        warm_up(kernel)
        return kernel
    except Exception as error:  # noqa: BLE001 (any Numba failure)
        warnings.warn(f"Numba could not compile ({error}); {instead}", stacklevel=3)
        return False


def _warm_dropout(kernel) -> None:
    one = np.ones(5, np.float32)
    kernel.masked_scale(one, one.copy(), np.uint64(1), np.uint64(1), np.float32(1))
    kernel.scale_where_positive(one, one.copy(), one, np.float32(1))


def _get_kernel():
    """The compiled kernels, or None (then FastDropout uses NumPy's PCG64)."""
    global _kernel
    if _kernel is None:
        instead = "FastDropout uses NumPy's generator (slower, same distribution)."
        _kernel = _ready(_compile_kernel(), _warm_dropout, instead)
    return _kernel or None


def _dense(x: Tensor) -> tuple[Tensor, torch.memory_format]:
    """``x`` laid out densely (channels-last kept as it is), and its layout."""
    if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last):
        return x, torch.channels_last
    return x.contiguous(), torch.contiguous_format


def _flat(x: Tensor) -> np.ndarray:
    """A one-dimensional NumPy view of a dense tensor's memory."""
    return x.detach().as_strided((x.numel(),), (1,)).numpy()


_threads = threading.local()  # the count last given to Numba (per thread, as Numba's)


def _set_threads() -> None:
    """Numba's kernels use as many threads as PyTorch does."""
    threads = torch.get_num_threads()
    if getattr(_threads, "count", None) != threads:
        import numba

        numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
        _threads.count = threads


def _masked_scale(x: Tensor, seed: int, threshold: int, scale: float) -> Tensor:
    """x * scale where the draws from ``seed`` keep an element, else 0."""
    out = torch.empty_like(x)  # same (dense) strides as x
    if x.numel():
        _set_threads()
        _get_kernel().masked_scale(
            _flat(x),
            _flat(out),
            np.uint64(seed),
            np.uint64(threshold),
            np.float32(scale),
        )
    return out


def _scale_where_positive(x: Tensor, ref: Tensor, scale: float) -> Tensor:
    """x * scale where ``ref`` (laid out as x) is positive, else 0."""
    out = torch.empty_like(x)
    if x.numel():
        _set_threads()
        _get_kernel().scale_where_positive(
            _flat(x), _flat(out), _flat(ref), np.float32(scale)
        )
    return out


class _CompiledDropout(torch.autograd.Function):
    """Dropout whose mask is drawn inside the kernel from a seed, and drawn again
    in the backward pass: nothing but the seed is kept between the two."""

    @staticmethod
    def forward(ctx, x: Tensor, p: float) -> Tensor:
        x, layout = _dense(x)
        ctx.args = (_draw_seed(), _threshold(p), 1.0 / (1.0 - p))
        ctx.layout = layout
        return _masked_scale(x, *ctx.args)

    @staticmethod
    def backward(ctx, grad: Tensor):
        # The gradient must be laid out as x was, so element j meets draw j.
        grad = grad.contiguous(memory_format=ctx.layout)
        return _masked_scale(grad, *ctx.args), None


class _CompiledDropoutAfterReLU(_CompiledDropout):
    """The same forward pass, for an input that comes out of a ReLU. The backward
    pass reads the mask off the output instead of drawing it again: where the
    output is 0 the gradient is 0, which differs from plain dropout only where
    the ReLU already output 0, and there the ReLU's own backward pass zeroes the
    gradient anyway. The gradient that reaches the layer before the ReLU is
    exactly that of ReLU then ``nn.Dropout``."""

    @staticmethod
    def forward(ctx, x: Tensor, p: float) -> Tensor:
        out = _CompiledDropout.forward(ctx, x, p)
        ctx.save_for_backward(out)  # the next layer keeps it anyway
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):
        (out,) = ctx.saved_tensors
        grad = grad.contiguous(memory_format=ctx.layout)
        return _scale_where_positive(grad, out, ctx.args[2]), None


class FastDropout(nn.Dropout):
    """``nn.Dropout`` with cheaper masks on the CPU (float32 tensors): drawn and
    applied by a compiled kernel when Numba is installed, by NumPy's PCG64
    otherwise. On other devices and dtypes it is ``nn.Dropout``.

    ``after_relu=True`` says the input comes straight out of a ReLU (as in
    ``ConvBNReLU``); the backward pass then reuses the output instead of drawing
    the mask again (see ``_CompiledDropoutAfterReLU``).
    """

    def __init__(self, p: float = 0.5, after_relu: bool = False) -> None:
        super().__init__(p)
        self.after_relu = after_relu

    def extra_repr(self) -> str:
        return super().extra_repr() + (", after_relu=True" if self.after_relu else "")

    def forward(self, x: Tensor) -> Tensor:
        return fast_dropout(x, self.p, self.training, self.after_relu)


def fast_dropout(x: Tensor, p: float, training: bool, after_relu: bool) -> Tensor:
    """What ``FastDropout`` computes, as a function."""
    if not training or p in (0, 1) or x.device.type != "cpu":
        return nn.functional.dropout(x, p, training)
    if x.dtype == torch.float32 and _get_kernel() is not None:
        if after_relu:
            return _CompiledDropoutAfterReLU.apply(x, p)
        return _CompiledDropout.apply(x, p)
    # 0 where dropped, 1 / (1 - p) where kept: one multiplication each way.
    mask = _keep_mask(x, p).to(x.dtype).mul_(1.0 / (1.0 - p))
    return _Multiply.apply(x, mask)


def use_fast_dropout(model: nn.Module) -> nn.Module:
    """Swap every ``nn.Dropout`` of ``model`` for a ``FastDropout`` (in place),
    marked ``after_relu`` where the module before it in an ``nn.Sequential`` is a
    ReLU. Dropout has no parameters, so state dicts are unchanged."""
    for module in list(model.modules()):
        previous = None
        for child_name, child in list(module.named_children()):
            if type(child) is nn.Dropout:
                after_relu = isinstance(module, nn.Sequential) and isinstance(
                    previous, nn.ReLU
                )
                fast = FastDropout(child.p, after_relu).train(child.training)
                setattr(module, child_name, fast)
            previous = child
    return model


# --- BatchNorm, ReLU and dropout fused ------------------------------------------------

_fused = None  # the fused kernels once compiled; False when they cannot be


def _warm_fused(kernel) -> None:
    x = np.ones((3, 5), np.float32)
    c = np.ones(5, np.float32)
    for drop in (_NO_DROPOUT, (1, 1, 1, 1.0)):
        kernel.norm_relu_forward(
            x, x.copy(), c, c, c, c.copy(), 0.1, 1e-5, 2, _drop_key(drop)
        )
    kernel.norm_relu_backward(x, x, x, x.copy(), c, c, c, 1.0, 2)


def _get_fused():
    """The compiled kernels of ``FusedBatchNormReLU``, or None without Numba."""
    global _fused
    if _fused is None:
        instead = "FusedBatchNormReLU runs BatchNorm, ReLU and dropout one by one."
        _fused = _ready(_get_kernel(), _warm_fused, instead)
    return _fused or None


_NO_DROPOUT = (0, 0, 0, 1.0)


def _drop_key(drop: tuple) -> tuple:
    """(lo, hi, threshold, scale) with the types the kernel is compiled for."""
    lo, hi, threshold, scale = drop
    return np.uint64(lo), np.uint64(hi), np.uint64(threshold), np.float64(scale)


def _rows(x: Tensor) -> np.ndarray:
    """A (pixels, channels) NumPy view of a channels-last 4-D tensor."""
    n, c, h, w = x.shape
    return x.detach().permute(0, 2, 3, 1).numpy().reshape(n * h * w, c)


def _blocks() -> int:
    """How many partial sums a reduction keeps: a few per thread."""
    return 4 * torch.get_num_threads()


class _FusedBatchNormReLU(torch.autograd.Function):
    """Training-mode BatchNorm (batch statistics), ReLU, then dropout, for a
    channels-last float32 input on the CPU. Forward: one pass for the channel
    statistics, one to normalise, rectify and drop. Backward: one pass for the
    two channel sums BatchNorm's gradient needs, one to write it. Only the input
    and the output are kept; the output says where the gradient flows (it is
    positive exactly where the ReLU passed and dropout kept)."""

    @staticmethod
    def forward(ctx, x, weight, bias, running_mean, running_var, eps, momentum, p):
        _set_threads()
        out = torch.empty_like(x)  # channels-last, as x
        drop = _NO_DROPOUT
        if p > 0:
            seed = _draw_seed()
            drop = (seed & 0xFFFFFFFF, seed >> 32, _threshold(p), 1.0 / (1.0 - p))
        mean, invstd = _get_fused().norm_relu_forward(
            _rows(x),
            _rows(out),
            weight.detach().numpy(),
            bias.detach().numpy(),
            running_mean.numpy(),
            running_var.numpy(),
            float(momentum),
            float(eps),
            _blocks(),
            _drop_key(drop),
        )
        ctx.save_for_backward(x, out)
        ctx.stats = (mean, invstd, weight.detach().numpy().copy(), drop[3])
        return out

    @staticmethod
    def backward(ctx, grad):
        _set_threads()
        x, out = ctx.saved_tensors
        grad = grad.contiguous(memory_format=torch.channels_last)
        dx = torch.empty_like(x)
        d_weight, d_bias = _get_fused().norm_relu_backward(
            _rows(grad), _rows(out), _rows(x), _rows(dx), *ctx.stats, _blocks()
        )
        d_weight = torch.from_numpy(d_weight) if ctx.needs_input_grad[1] else None
        d_bias = torch.from_numpy(d_bias) if ctx.needs_input_grad[2] else None
        return dx, d_weight, d_bias, *[None] * 5


class FusedBatchNormReLU(nn.BatchNorm2d):
    """``nn.BatchNorm2d``, ``nn.ReLU`` and ``nn.Dropout(p)`` as one module, with
    the same parameters and buffers as the BatchNorm it replaces (state dicts
    are unchanged). Training on the CPU with a channels-last float32 input, it
    runs compiled kernels (Numba) that make two passes over memory each way,
    where the three layers make four (BatchNorm two, ReLU and dropout one each);
    anywhere else (evaluation, other devices and
    dtypes, no Numba) it runs BatchNorm, ReLU and ``FastDropout`` one by one.
    Its dropout keeps each element with ``FastDropout``'s probability (``1 - p``
    rounded to a multiple of 1/65536), from a 32-bit hash of the element's index
    (see ``norm_relu_forward``), independently of the number of threads."""

    def __init__(self, num_features: int, p: float = 0.0, **options) -> None:
        super().__init__(num_features, **options)
        self.p = p

    def extra_repr(self) -> str:
        return super().extra_repr() + f", then ReLU and dropout p={self.p}"

    @classmethod
    def replacing(cls, norm: nn.BatchNorm2d, p: float) -> FusedBatchNormReLU:
        """A fused module holding ``norm``'s own parameters and buffers."""
        fused = cls(
            norm.num_features,
            p,
            eps=norm.eps,
            momentum=norm.momentum,
            affine=norm.affine,
            track_running_stats=norm.track_running_stats,
        )
        fused.train(norm.training)
        for name, value in [*norm.named_parameters(), *norm.named_buffers()]:
            setattr(fused, name, value)
        return fused

    def _fusable(self, x: Tensor) -> bool:
        return (
            self.training
            and x.device.type == "cpu"
            and x.dtype == torch.float32
            and x.dim() == 4
            and x.is_contiguous(memory_format=torch.channels_last)
            and x.numel() > 0
            and self.p < 1
            and _get_fused() is not None
        )

    def forward(self, x: Tensor) -> Tensor:
        if not self._fusable(x):
            out = torch.relu_(super().forward(x))  # in place, as nn.ReLU(inplace=True)
            return fast_dropout(out, self.p, self.training, after_relu=True)
        channels = x.shape[1]
        weight, bias = self.weight, self.bias
        if not self.affine:
            weight, bias = torch.ones(channels), torch.zeros(channels)
        if self.track_running_stats:
            self.num_batches_tracked.add_(1)
            momentum = self.momentum
            if momentum is None:  # a cumulative average, as nn.BatchNorm2d does
                momentum = 1.0 / float(self.num_batches_tracked)
            running = (self.running_mean, self.running_var)
        else:  # momentum 0: the kernel leaves these (unused) buffers alone
            momentum, running = 0.0, torch.zeros(2, channels)
        return _FusedBatchNormReLU.apply(
            x, weight, bias, *running, self.eps, momentum, self.p
        )


def fuse_batchnorm_relu(model: nn.Module) -> nn.Module:
    """Wherever an ``nn.Sequential`` of ``model`` holds ``BatchNorm2d``, ``ReLU``
    and optionally a ``Dropout`` right after each other, make the BatchNorm a
    ``FusedBatchNormReLU`` and the others ``nn.Identity`` (in place). The
    parameters are the same objects, so state dicts and optimisers are unchanged.
    """
    for module in list(model.modules()):
        if not isinstance(module, nn.Sequential):
            continue
        children = list(module.named_children())
        for k, (name, child) in enumerate(children):
            if type(child) is not nn.BatchNorm2d or k + 1 >= len(children):
                continue
            if not isinstance(children[k + 1][1], nn.ReLU):
                continue
            fused_away = [children[k + 1][0]]
            p = 0.0
            if k + 2 < len(children) and isinstance(children[k + 2][1], nn.Dropout):
                p = children[k + 2][1].p
                fused_away.append(children[k + 2][0])
            setattr(module, name, FusedBatchNormReLU.replacing(child, p))
            for other in fused_away:
                setattr(module, other, nn.Identity())
    return model


# --- augmentation of whole batches, as tensors ---------------------------------------


class BatchAugment(nn.Module):
    """The reference augmentation applied to a whole batch at once, on any device.

    Input: uint8 images (N, H, W, 3). Output: normalised float (N, 3, H, W).
    Each image draws its own parameters from the same distributions as
    ``augment.build_train_transform`` (flip with ``flip_p``; with ``affine_p`` a
    shift of up to ``shift`` of the side on each axis, one scale factor in
    [1 - scale, 1 + scale] and a rotation in [-rotate, rotate] degrees about the
    centre (the shift truncated to whole pixels, as albumentations does), borders
    filled by reflection, bilinear interpolation; with ``hole_p``
    one ``hole_size`` square hole of zeros at a uniformly drawn position inside
    the image), in the same order. It differs from albumentations only in
    rounding: OpenCV returns the warped image as uint8, this keeps floats.
    """

    def __init__(self, config=None, mean=None, std=None) -> None:
        super().__init__()
        from cifar_lib.augment import AugmentationConfig
        from cifar_lib.data import CIFAR10_MEAN, CIFAR10_STD

        self.config = config or AugmentationConfig()
        mean = torch.tensor(mean or CIFAR10_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(std or CIFAR10_STD).view(1, 3, 1, 1)
        self.register_buffer("mean", mean, persistent=False)
        self.register_buffer("std", std, persistent=False)

    def forward(
        self,
        images: Tensor,
        generator: torch.Generator | None = None,
        flip: Tensor | None = None,
    ) -> Tensor:
        """``flip``: which images to flip (booleans), chosen by the caller (for
        alternating flip, ``TensorBatchLoader``); by default each draws its coin."""
        x = images.permute(0, 3, 1, 2).float().div_(255)
        n, _, height, width = x.shape
        c = self.config

        def uniform(low, high, size=n):
            draw = torch.rand(size, generator=generator, device=x.device)
            return low + (high - low) * draw

        def chosen(p):
            return torch.rand(n, generator=generator, device=x.device) < p

        if flip is None:
            flip = chosen(c.flip_p)
        x = torch.where(flip.view(n, 1, 1, 1), x.flip(3), x)

        warp = chosen(c.affine_p)
        # albumentations truncates the shift to whole pixels: int(U(-f, f) * side)
        shift = uniform(-c.shift, c.shift, (n, 2)).mul_(width).trunc_().div_(width)
        scale = uniform(1 - c.scale, 1 + c.scale)
        angle = torch.deg2rad(uniform(-c.rotate, c.rotate))
        if c.affine_p > 0:  # not warp.any(): that would wait for a GPU each step
            x = torch.where(warp.view(n, 1, 1, 1), _warp(x, shift, scale, angle), x)

        hole = chosen(c.hole_p)
        size = c.hole_size
        top = torch.randint(
            0, height - size + 1, (n,), generator=generator, device=x.device
        )
        left = torch.randint(
            0, width - size + 1, (n,), generator=generator, device=x.device
        )
        rows = torch.arange(height, device=x.device).view(1, height, 1)
        cols = torch.arange(width, device=x.device).view(1, 1, width)
        inside = (
            (rows >= top.view(n, 1, 1))
            & (rows < (top + size).view(n, 1, 1))
            & (cols >= left.view(n, 1, 1))
            & (cols < (left + size).view(n, 1, 1))
        )
        x = x.masked_fill((inside & hole.view(n, 1, 1)).unsqueeze(1), 0.0)
        return (x - self.mean) / self.std


def _warp(x: Tensor, shift: Tensor, scale: Tensor, angle: Tensor) -> Tensor:
    """Shift (fraction of the side), scale and rotate about the centre.

    ``affine_grid`` wants, for every output pixel, where to read the input, so
    the matrix is the inverse of the forward map p_out = scale * R(angle) p_in +
    shift; in normalised coordinates ([-1, 1] across the image) a shift of a
    fraction f of the side is 2f.
    """
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    inverse = torch.stack([torch.stack([cos, sin], 1), torch.stack([-sin, cos], 1)], 1)
    offset = -torch.bmm(inverse, (2 * shift).unsqueeze(2))
    theta = torch.cat([inverse, offset], 2)
    grid = torch.nn.functional.affine_grid(theta, list(x.shape), align_corners=False)
    # OpenCV's BORDER_REFLECT_101 mirrors about the outermost pixel centres
    # (dcb|abcd|cba); grid_sample's "reflection" would mirror about the image
    # edge (cba|abcd|dcb). So reflect by hand, in pixel units.
    size = x.shape[-1]
    pixels = ((grid + 1) * size - 1) / 2
    period = 2 * (size - 1)
    pixels = (size - 1) - ((pixels % period) - (size - 1)).abs()
    grid = (2 * pixels + 1) / size - 1
    return torch.nn.functional.grid_sample(
        x, grid, mode="bilinear", padding_mode="border", align_corners=False
    )


class TensorBatchLoader:
    """Batches sliced from one uint8 tensor held on the training device, augmented
    there with ``BatchAugment`` (or only normalised): no per-image Python work,
    no worker processes, and on a GPU no copies from the CPU each step.

    ``chunk`` images (rounded down to whole batches; default one batch) are
    augmented in one call and then cut into batches: each image still draws its
    own transform, so the distribution is the same, but the random numbers are
    drawn in another order than batch by batch. On a GPU launching a call's few
    dozen small kernels takes longer than a captured training step
    (graphs.TrainStep): on an H100, 1.7 ms a batch of 32 for the augmentation
    (results/gpu/bench_h100_fast_fp32.json) against 1.26 ms for a replayed step.
    """

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray,
        batch_size: int,
        device: torch.device | str = "cpu",
        shuffle: bool = False,
        augment: BatchAugment | None = None,
        seed: int = 0,
        chunk: int | None = None,
    ) -> None:
        device = torch.device(device)
        self.chunk = max(batch_size, (chunk or batch_size) // batch_size * batch_size)
        self.images = torch.as_tensor(images).to(device)
        self.labels = torch.as_tensor(labels, dtype=torch.long).to(device)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.augment = (augment or BatchAugment()).to(device)
        self.train = augment is not None
        self.generator = torch.Generator(device=device)
        self.order_generator = torch.Generator()
        self.flipped = None  # with alternating flip: this epoch's, per image
        self.set_epoch(seed, 0)

    def __len__(self) -> int:
        return -(-len(self.labels) // self.batch_size)

    @property
    def num_images(self) -> int:
        return len(self.labels)

    def set_epoch(self, seed: int, epoch: int) -> None:
        epoch_seed = seed * 100_003 + epoch
        self.generator.manual_seed(epoch_seed)
        self.order_generator.manual_seed(epoch_seed)
        if self.train and self.augment.config.alternate_flip:
            from cifar_lib.augment import alternate_flips

            flipped = alternate_flips(len(self.labels), seed, epoch)
            self.flipped = torch.from_numpy(flipped).to(self.images.device)

    def __iter__(self):
        count = len(self.labels)
        if self.shuffle:
            order = torch.randperm(count, generator=self.order_generator)
            order = order.to(self.images.device)
        else:
            order = torch.arange(count, device=self.images.device)
        size = self.batch_size
        for start in range(0, count, self.chunk):
            index = order[start : start + self.chunk]
            images, labels = self.images[index], self.labels[index]
            if self.train:
                flip = None if self.flipped is None else self.flipped[index]
                images = self.augment(images, self.generator, flip)
            else:
                images = _normalise(images, self.augment)
            for first in range(0, len(index), size):
                yield images[first : first + size], labels[first : first + size]


def _normalise(images: Tensor, augment: BatchAugment) -> Tensor:
    x = images.permute(0, 3, 1, 2).float().div_(255)
    return (x - augment.mean) / augment.std
