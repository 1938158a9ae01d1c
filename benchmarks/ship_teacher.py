"""Ship a teacher's weights: a weights file written by ``train`` (a run's
``final_model.pt``) stored in half precision as ``pretrained/teacher_resnet.pt``,
which ``train --teacher teacher_resnet`` loads (``train.SHIPPED_TEACHER``).

    python benchmarks/ship_teacher.py RUN/final_model.pt [--out FILE]

The convolution and linear weights and biases and BatchNorm's affine parameters
are stored as float16 (half the bytes: 6.8 MB instead of 13.6 for
CIFAR10TeacherResNet); BatchNorm's running statistics stay float32 (some running
variances are near 1e-6, below float16's normal range). Loading casts them back
to float32. The file keeps the source's metadata (recipe, epoch, test accuracy).
Before it writes, the script compares the two on random images in evaluation
mode and refuses if any logit moves by more than ``--tolerance``; the
sixth GPU session's teacher scored 92.09% on the JPEG copy's test set either way
(this project's CPU).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cifar_lib import checkpoints  # noqa: E402
from cifar_lib.errors import CheckpointError  # noqa: E402
from cifar_lib.train import SHIPPED_TEACHER, load_trained_model  # noqa: E402

KEPT_IN_FLOAT32 = ("running_mean", "running_var")


def halve(state: dict) -> dict:
    """The state dict with its floating tensors in float16, except BatchNorm's
    running statistics."""
    return {
        name: (
            tensor.half()
            if tensor.is_floating_point() and not name.endswith(KEPT_IN_FLOAT32)
            else tensor
        ).contiguous()
        for name, tensor in state.items()
    }


def largest_change(source: Path, shipped: Path, images: int = 64) -> float:
    """The largest absolute change of a logit between the two files' models, on
    random normalised images, in evaluation mode, float32."""
    generator = torch.Generator().manual_seed(0)
    batch = torch.randn(images, 3, 32, 32, generator=generator)
    with torch.inference_mode():
        before = load_trained_model(source)(batch)
        after = load_trained_model(shipped)(batch)
    return (before - after).abs().max().item()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, allow_abbrev=False)
    parser.add_argument("source", type=Path, help="a weights file written by train")
    parser.add_argument(
        "--out", type=Path, default=ROOT / "pretrained" / f"{SHIPPED_TEACHER}.pt"
    )
    parser.add_argument("--tolerance", type=float, default=0.05)
    args = parser.parse_args(argv)
    try:
        payload = checkpoints.load(args.source, kind=checkpoints.WEIGHTS)
    except CheckpointError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    content = {k: v for k, v in payload.items() if k not in ("format", "kind")}
    content["model"] = halve({k: v.cpu() for k, v in payload["model"].items()})
    candidate = args.out.with_name(args.out.name + ".candidate")
    try:
        checkpoints.save(candidate, checkpoints.WEIGHTS, **content)
        change = largest_change(args.source, candidate)
        if change > args.tolerance:
            print(
                f"error: half precision moved a logit by {change:.4f}, more than "
                f"{args.tolerance}; {args.out} not written.",
                file=sys.stderr,
            )
            return 1
        candidate.replace(args.out)
    finally:
        candidate.unlink(missing_ok=True)  # refused, or stopped on the way
    print(
        f"{args.out}: {args.out.stat().st_size / 1e6:.1f} MB (source "
        f"{args.source.stat().st_size / 1e6:.1f} MB); epoch {payload['epoch']}, "
        f"test accuracy {payload['test_accuracy']:.2%}; largest logit change on "
        f"random images {change:.2e}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
