"""Receptive fields, worked out two ways that must agree.

Taught in ``notebooks/03_receptive_field.ipynb``.

*Analytic*: walk the model's layers in forward order and apply the recurrence

    jump_out = jump_in * stride
    rf_out   = rf_in + (kernel - 1) * dilation * jump_in

where ``jump`` is the distance, in input pixels, between neighbouring positions of
the current feature map. Forgetting to multiply by the jump (treating every layer
as if it worked on input pixels) undercounts every layer after the first stride.
The walk follows the traced graph (``torch.fx``), so branches that meet again
(residual connections) are handled: where paths join, the union of their
footprints is taken.

*Empirical*: make a copy of the model in which every activation is positive and
every weight is positive, push an input through, and find which input pixels the
gradient of one central output position reaches.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import fx, nn


@dataclass
class LayerReceptiveField:
    """One row of the table: a layer and the receptive field after it."""

    name: str
    kind: str
    kernel: int
    stride: int
    dilation: int
    padding: int
    jump_in: int
    jump_out: int
    receptive_field: int


@dataclass
class _Geometry:
    rf: float  # side of the footprint of one position, in input pixels
    jump: float  # input pixels between neighbouring positions
    start: float  # centre of position 0's footprint, in input coordinates


_POOLS = (nn.MaxPool2d, nn.AvgPool2d)
_GLOBAL_POOLS = (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)


def _pair_first(value) -> int:
    value = value if isinstance(value, tuple) else (value, value)
    if value[0] != value[1]:
        raise ValueError("only square kernels, strides and dilations are supported")
    return int(value[0])


def _module_geometry(module: nn.Module):
    """(kernel, stride, dilation, padding) of a layer that slides a window."""
    if isinstance(module, nn.Conv2d):
        padding = module.padding
        if isinstance(padding, str):
            raise ValueError("string padding is not supported; give numbers")
        return (
            _pair_first(module.kernel_size),
            _pair_first(module.stride),
            _pair_first(module.dilation),
            _pair_first(padding),
        )
    if isinstance(module, _POOLS):
        stride = module.stride if module.stride is not None else module.kernel_size
        dilation = getattr(module, "dilation", 1)
        return (
            _pair_first(module.kernel_size),
            _pair_first(stride),
            _pair_first(dilation),
            _pair_first(module.padding),
        )
    return None


# Functions that look at a neighbourhood of pixels. The walk follows modules
# (nn.Conv2d, nn.MaxPool2d, ...); these functional forms are refused rather than
# silently treated as pixel-by-pixel operations.
SPATIAL_FUNCTIONS = {
    "conv2d",
    "conv_transpose2d",
    "max_pool2d",
    "avg_pool2d",
    "lp_pool2d",
    "fractional_max_pool2d",
    "interpolate",
    "upsample",
    "unfold",
    "fold",
    "pixel_shuffle",
    "pixel_unshuffle",
    "grid_sample",
}


def _function_name(node: fx.Node) -> str:
    return getattr(node.target, "__name__", str(node.target))


def _is_global_pool(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    if node.op == "call_module":
        module = modules[node.target]
        return isinstance(module, _GLOBAL_POOLS) and module.output_size in (1, (1, 1))
    if node.op == "call_function" and _function_name(node).startswith("adaptive_"):
        size = node.args[1] if len(node.args) > 1 else node.kwargs.get("output_size")
        return size in (1, (1, 1))
    if node.op == "call_method" and node.target in ("mean", "amax", "sum"):
        dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
        dims = tuple(dims) if isinstance(dims, (tuple, list)) else (dims,)
        return set(dims) in ({2, 3}, {-2, -1})  # x.mean((2, 3)): over the pixels
    return False


def functional_spatial_calls(model: nn.Module) -> list[str]:
    """Names of the functional calls (F.max_pool2d, ...) that act on pixel
    neighbourhoods, which the module-based tools cannot measure."""
    graph = trace(model)
    return [
        f"{node.name} ({_function_name(node)})"
        for node in graph.graph.nodes
        if node.op in ("call_function", "call_method")
        and _function_name(node) in SPATIAL_FUNCTIONS
    ]


class _LayerTracer(fx.Tracer):
    """Treats every module without children as one call, so that layers with
    Python logic inside (speed.FastDropout) are not traced into."""

    def is_leaf_module(self, module: nn.Module, qualified_name: str) -> bool:
        return next(module.children(), None) is None or super().is_leaf_module(
            module, qualified_name
        )


def trace(model: nn.Module) -> fx.GraphModule:
    """The model's forward pass as a graph of module calls, in execution order."""
    if next(model.children(), None) is None:
        model = nn.Sequential(model)  # a bare layer: trace it as a call, not its code
    return fx.GraphModule(model, _LayerTracer().trace(model))


def receptive_field_table(model: nn.Module) -> list[LayerReceptiveField]:
    """Per-layer table up to the last spatial feature map (before global pooling)."""
    graph = trace(model)
    modules = dict(graph.named_modules())
    geometry: dict[fx.Node, _Geometry] = {}
    rows: list[LayerReceptiveField] = []
    for node in graph.graph.nodes:
        if node.op == "placeholder":
            geometry[node] = _Geometry(rf=1, jump=1, start=0.5)
            continue
        inputs = [arg for arg in node.all_input_nodes if arg in geometry]
        if not inputs:
            continue  # constants, attributes
        if _is_global_pool(node, modules):
            break  # everything after this sees the whole map
        if node.op != "call_module" and _function_name(node) in SPATIAL_FUNCTIONS:
            raise ValueError(
                f"{node.name} calls {_function_name(node)} as a function; the "
                "receptive field is walked over modules: use its nn.Module form."
            )
        if node.op == "call_module" and _module_geometry(modules[node.target]):
            kernel, stride, dilation, padding = _module_geometry(modules[node.target])
            before = geometry[inputs[0]]
            span = (kernel - 1) * dilation
            after = _Geometry(
                rf=before.rf + span * before.jump,
                jump=before.jump * stride,
                start=before.start + (span / 2 - padding) * before.jump,
            )
            geometry[node] = after
            rows.append(
                LayerReceptiveField(
                    name=node.target,
                    kind=type(modules[node.target]).__name__,
                    kernel=kernel,
                    stride=stride,
                    dilation=dilation,
                    padding=padding,
                    jump_in=int(before.jump),
                    jump_out=int(after.jump),
                    receptive_field=int(after.rf),
                )
            )
        elif len(inputs) == 1:
            geometry[node] = geometry[inputs[0]]  # pointwise: BN, ReLU, dropout, ...
        else:
            parts = [geometry[arg] for arg in inputs]
            geometry[node] = _join(node, parts)
            rows.append(
                LayerReceptiveField(
                    name=node.name,
                    kind="join",  # x + f(x), torch.cat, ...: branches meet
                    kernel=1,
                    stride=1,
                    dilation=1,
                    padding=0,
                    jump_in=int(parts[0].jump),
                    jump_out=int(parts[0].jump),
                    receptive_field=int(geometry[node].rf),
                )
            )
    return rows


def _join(node: fx.Node, parts: list[_Geometry]) -> _Geometry:
    """Where branches meet (x + f(x), torch.cat): the union of their footprints."""
    jumps = {part.jump for part in parts}
    if len(jumps) != 1:
        raise ValueError(f"{node.name} joins feature maps of different strides")
    low = min(part.start - part.rf / 2 for part in parts)
    high = max(part.start + part.rf / 2 for part in parts)
    return _Geometry(rf=high - low, jump=parts[0].jump, start=(low + high) / 2)


def receptive_field(model: nn.Module) -> int:
    """The receptive field of one position of the last feature map, in pixels."""
    table = receptive_field_table(model)
    return table[-1].receptive_field if table else 1


def format_table(rows: list[LayerReceptiveField]) -> str:
    """The table as aligned text."""
    header = f"{'layer':<28} {'kind':<9} {'k':>2} {'s':>2} {'d':>2} {'j_in':>4} "
    header += f"{'j_out':>5} {'RF':>4}"
    lines = [header, "-" * len(header)]
    for row in rows:
        lines.append(
            f"{row.name:<28} {row.kind:<9} {row.kernel:>2} {row.stride:>2} "
            f"{row.dilation:>2} {row.jump_in:>4} {row.jump_out:>5} "
            f"{row.receptive_field:>4}"
        )
    return "\n".join(lines)


# --- empirical ---------------------------------------------------------------------


def _positive_copy(model: nn.Module) -> nn.Module:
    """A copy in which every weight is positive and BN is the identity, so that no
    contribution can cancel and no ReLU can block the gradient. Max-pooling is
    swapped for average pooling of the same geometry (max sends its gradient to one
    pixel of the window, which would hide the true footprint)."""
    probe = copy.deepcopy(model).float().eval()
    for name, module in list(probe.named_modules()):
        if isinstance(module, nn.Conv2d):
            fan_in = module.weight[0].numel()
            nn.init.constant_(module.weight, 1.0 / fan_in)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.reset_parameters()  # mean 0, var 1, weight 1, bias 0
        elif isinstance(module, nn.MaxPool2d):
            replacement = nn.AvgPool2d(
                module.kernel_size, module.stride, module.padding, module.ceil_mode
            )
            parent_name, _, child = name.rpartition(".")
            setattr(probe.get_submodule(parent_name), child, replacement)
    return probe


def _last_feature_map(model: nn.Module, image: torch.Tensor) -> torch.Tensor:
    """The input of the global pooling (or the output, if there is none)."""
    graph = trace(model)
    modules = dict(graph.named_modules())
    for node in graph.graph.nodes:
        if _is_global_pool(node, modules):
            feature_node = node.all_input_nodes[0]
            break
    else:
        return model(image)
    graph.graph.output(feature_node)  # cut the graph at the feature map
    for node in reversed(list(graph.graph.nodes)):
        if node.op == "output" and node.args[0] is not feature_node:
            graph.graph.erase_node(node)
            break
    graph.graph.eliminate_dead_code()
    graph.recompile()
    return graph(image)


def input_gradient(model: nn.Module, size: int) -> torch.Tensor:
    """|d feature(centre) / d input| over a ``size`` x ``size`` input, summed over
    channels: the footprint of the central position of the last feature map."""
    probe = _positive_copy(model)
    channels = next(m for m in probe.modules() if isinstance(m, nn.Conv2d)).in_channels
    image = torch.ones(1, channels, size, size, requires_grad=True)
    features = _last_feature_map(probe, image)
    height, width = features.shape[-2:]
    features[0, :, height // 2, width // 2].sum().backward()
    return image.grad[0].abs().sum(0)


def empirical_receptive_field(model: nn.Module, start_size: int = 64) -> int:
    """Measure the receptive field from the input gradient, growing the input until
    the footprint no longer touches its border."""
    size = start_size
    while size <= 2048:
        footprint = input_gradient(model, size) > 0
        rows = torch.nonzero(footprint.any(1)).flatten()
        cols = torch.nonzero(footprint.any(0)).flatten()
        touches = rows[0] == 0 or cols[0] == 0 or rows[-1] == size - 1
        touches = touches or cols[-1] == size - 1
        if not touches:
            height = int(rows[-1] - rows[0] + 1)
            width = int(cols[-1] - cols[0] + 1)
            return max(height, width)
        size *= 2
    raise ValueError("the receptive field is larger than 2048 pixels")


def total_stride(model: nn.Module) -> int:
    """How many input pixels one step of the last feature map covers (the jump
    after the last layer; parallel branches do not multiply)."""
    table = receptive_field_table(model)
    return table[-1].jump_out if table else 1


__all__ = [
    "LayerReceptiveField",
    "empirical_receptive_field",
    "format_table",
    "input_gradient",
    "receptive_field",
    "receptive_field_table",
    "total_stride",
]
