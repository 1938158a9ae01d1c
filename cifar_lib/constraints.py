"""Check a model against the assignment's rules, from the modules themselves.

Taught in ``notebooks/04_model.ipynb``. Nothing here trusts a class name: the
checks run a 32x32 image through the model and look at what each layer did.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from cifar_lib.models import count_parameters
from cifar_lib.receptive_field import functional_spatial_calls, receptive_field

PARAMETER_LIMIT = 200_000
RECEPTIVE_FIELD_MINIMUM = 44


@dataclass
class Check:
    rule: str
    passed: bool
    detail: str


@dataclass
class ConstraintReport:
    checks: list[Check]

    @property
    def passed(self) -> bool:
        return all(check.passed for check in self.checks)

    def __getitem__(self, rule: str) -> Check:
        return next(check for check in self.checks if check.rule == rule)

    def __str__(self) -> str:
        width = max(len(check.rule) for check in self.checks)
        lines = [
            f"[{'PASS' if c.passed else 'FAIL'}] {c.rule:<{width}}  {c.detail}"
            for c in self.checks
        ]
        verdict = "every constraint met" if self.passed else "constraints NOT met"
        return "\n".join(lines + [verdict])


@dataclass
class _Call:
    name: str
    module: nn.Module
    input_shape: tuple
    output_shape: tuple


def _record_calls(model: nn.Module, image_size: int = 32) -> list[_Call]:
    """Every leaf module called in one forward pass, in order, with its shapes."""
    calls: list[_Call] = []
    hooks = []
    for name, module in model.named_modules():
        if next(module.children(), None) is None:

            def hook(module, inputs, output, name=name):
                calls.append(
                    _Call(name, module, tuple(inputs[0].shape), tuple(output.shape))
                )

            hooks.append(module.register_forward_hook(hook))
    was_training = model.training
    try:
        model.eval()
        device = next(model.parameters()).device
        with torch.no_grad():
            model(torch.zeros(1, 3, image_size, image_size, device=device))
    finally:
        model.train(was_training)
        for handle in hooks:
            handle.remove()
    return calls


def _is_depthwise(module: nn.Module) -> bool:
    return (
        isinstance(module, nn.Conv2d)
        and module.groups > 1
        and module.groups == module.in_channels
        and module.kernel_size != (1, 1)
    )


def check_constraints(model: nn.Module) -> ConstraintReport:
    """The assignment's seven rules, each with what was found."""
    calls = _record_calls(model)
    checks = []

    params = count_parameters(model)
    checks.append(
        Check(
            "parameters < 200,000", params < PARAMETER_LIMIT, f"{params:,} parameters"
        )
    )

    functional = functional_spatial_calls(model)
    max_pools = [
        c.name
        for c in calls
        if isinstance(c.module, (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d))
        or isinstance(c.module, (nn.AdaptiveMaxPool2d, nn.FractionalMaxPool2d))
    ] + [name for name in functional if "max_pool" in name]
    checks.append(
        Check(
            "no max-pooling",
            not max_pools,
            f"max-pooling in {max_pools}" if max_pools else "none found",
        )
    )

    spatial = [c for c in calls if len(c.input_shape) == 4 and len(c.output_shape) == 4]
    shrinking = [c for c in spatial if c.output_shape[-1] < c.input_shape[-1]]
    global_pools = [c for c in shrinking if c.output_shape[-2:] == (1, 1)]
    downsamplers = [c for c in shrinking if c not in global_pools]
    bad = [
        c.name
        for c in downsamplers
        if not (isinstance(c.module, nn.Conv2d) and c.module.stride == (2, 2))
    ] + functional  # functional calls escape the hooks: refuse them
    good = [c.name for c in downsamplers if c.name not in bad]
    checks.append(
        Check(
            "downsampling only by stride-2 convolutions",
            bool(good) and not bad,
            f"other downsampling in {bad}" if bad else f"stride-2 convs: {good}",
        )
    )

    separable = []
    for index, call in enumerate(calls):
        pointwise = _next_conv(calls, index) if _is_depthwise(call.module) else None
        if pointwise and pointwise.module.kernel_size == (1, 1):
            separable.append(f"{call.name} -> {pointwise.name}")
    checks.append(
        Check(
            "depthwise-separable convolution",
            bool(separable),
            f"depthwise then 1x1 at {separable[0]}" if separable else "none found",
        )
    )

    dilated = [
        c.name
        for c in calls
        if isinstance(c.module, nn.Conv2d) and max(c.module.dilation) > 1
    ]
    checks.append(
        Check(
            "dilated convolution",
            bool(dilated),
            f"dilation > 1 in {dilated}" if dilated else "none found",
        )
    )

    gap_then_fc = False
    detail = "no global average pooling found"
    gap_calls = [
        i
        for i, c in enumerate(calls)
        if isinstance(c.module, nn.AdaptiveAvgPool2d) and c.output_shape[-2:] == (1, 1)
    ]
    if gap_calls:
        after = calls[gap_calls[-1] + 1 :]
        convs_after = [c.name for c in after if isinstance(c.module, nn.Conv2d)]
        linears = [c.name for c in after if isinstance(c.module, nn.Linear)]
        gap_then_fc = bool(linears) and not convs_after
        detail = (
            f"{calls[gap_calls[-1]].name} then {linears}"
            if gap_then_fc
            else f"after the GAP: linear {linears}, conv {convs_after}"
        )
    checks.append(
        Check("global average pooling then fully connected", gap_then_fc, detail)
    )

    try:
        rf = receptive_field(model)
        rf_check = Check(
            "receptive field > 44",
            rf > RECEPTIVE_FIELD_MINIMUM,
            f"{rf} pixels (analytic walk of the traced graph)",
        )
    except ValueError as error:
        rf_check = Check("receptive field > 44", False, f"not measurable: {error}")
    checks.append(rf_check)
    return ConstraintReport(checks)


def _next_conv(calls: list[_Call], index: int) -> _Call | None:
    """The first convolution called after ``calls[index]``."""
    return next(
        (c for c in calls[index + 1 :] if isinstance(c.module, nn.Conv2d)), None
    )
