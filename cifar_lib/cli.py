"""The command line: ``python -m cifar_lib train|summary``.

A user's mistake (a missing dataset, a wrong folder, an option out of range) is
printed as one sentence on stderr with exit code 2; a traceback means a bug.
"""

from __future__ import annotations

import argparse
import os
import sys

from cifar_lib.errors import CifarLibError


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(
            f"{value} is out of range: it must be at least 1"
        )
    return value


def augmentation_changes(text: str) -> dict:
    """``--augmentation hole_p=0.5,scale=0.1`` as {field: value} of
    ``AugmentationConfig``, each value of its field's type; one sentence if not."""
    import dataclasses

    from cifar_lib.augment import AugmentationConfig
    from cifar_lib.errors import ConfigError

    types = {f.name: type(f.default) for f in dataclasses.fields(AugmentationConfig)}
    changes = {}
    for item in filter(None, text.split(",")):
        name, sep, value = item.strip().partition("=")
        if not sep or name not in types:
            raise ConfigError(
                f"--augmentation {item!r}: give NAME=VALUE, NAME one of "
                f"{', '.join(types)} (e.g. --augmentation hole_p=0.5,scale=0.1)."
            )
        try:
            if types[name] is bool:
                if value.lower() not in ("true", "false"):
                    raise ValueError
                changes[name] = value.lower() == "true"
            else:
                changes[name] = types[name](value)
        except ValueError:
            kind = {bool: "true or false", int: "a whole number", float: "a number"}
            raise ConfigError(
                f"--augmentation {item!r}: {value!r} is not {kind[types[name]]}."
            ) from None
    if not changes:
        raise ConfigError("--augmentation needs NAME=VALUE, e.g. hole_p=0.5.")
    return changes


def _number(text: str, ok, rule: str) -> float:
    """``text`` as a float for which ``ok`` holds; else one sentence naming ``rule``."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not ok(value):
        raise argparse.ArgumentTypeError(f"{value} is out of range: {rule}")
    return value


def _fraction(text: str) -> float:
    return _number(
        text, lambda v: 0 < v <= 1, "give a fraction in (0, 1], e.g. 0.85 for 85%"
    )


def _decay(text: str) -> float:
    return _number(
        text, lambda v: 0 <= v < 1, "give a decay in [0, 1), e.g. 0.99, or 0 for none"
    )


def _smoothing(text: str) -> float:
    return _number(text, lambda v: 0 <= v < 1, "give a fraction in [0, 1), e.g. 0.1")


def _positive_float(text: str) -> float:
    return _number(text, lambda v: v > 0, "it must be above 0")


_AMP_HELP = (
    "mixed precision on CUDA: bfloat16 autocast (float16 with loss scaling on GPUs "
    "before compute capability 8.0); off by default, as it was slower for these "
    "small models on an H100"
)


_GRAPH_HELP = (
    "on CUDA, launch every kernel of each training step from Python instead of "
    "replaying the step as one captured CUDA graph (which SGD recipes do by default)"
)
_CUDNN_HELP = (
    "on CUDA, let cuDNN pick convolution algorithms by its heuristics instead of "
    "timing them for each new shape (which lengthens the first steps)"
)


def build_parser() -> argparse.ArgumentParser:
    from cifar_lib.models import MODELS
    from cifar_lib.train import RECIPES

    parser = argparse.ArgumentParser(
        prog="python -m cifar_lib",
        description="Train and inspect the compact CIFAR-10 CNN of the workbook.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    train = commands.add_parser(
        "train",
        help="train a recipe and write its run folder",
        description="Train a recipe. Everything of the run goes into --out: run.json, "
        "history.json, checkpoint.pt, best_model.pt, final_model.pt and "
        "training_curves.png.",
    )
    train.add_argument(
        "--recipe",
        choices=sorted(RECIPES),
        help="training recipe (default: seed, the reference's)",
    )
    train.add_argument(
        "--data-dir",
        help="folder with CIFAR-10: an image folder (train/<class>/*, test/<class>/*) "
        "or torchvision's cifar-10-batches-py, downloaded there if missing "
        "(default: $CIFAR_LIB_DATA_DIR, else ./data)",
    )
    train.add_argument(
        "--model", choices=sorted(MODELS), help="model (default: the recipe's)"
    )

    def recipes_say(field: str) -> str:
        """'(default: the recipe's: seed 50, fast 8, best 183)' for ``field``."""
        values = ", ".join(f"{n} {getattr(r, field):g}" for n, r in RECIPES.items())
        return f" (default: the recipe's: {values})"

    train.add_argument(
        "--epochs",
        type=_positive_int,
        help="most epochs to train" + recipes_say("epochs"),
    )
    train.add_argument(
        "--batch-size",
        type=_positive_int,
        help="images per step" + recipes_say("batch_size"),
    )
    train.add_argument(
        "--lr",
        type=_positive_float,
        help="learning rate (peak, for one-cycle)" + recipes_say("lr"),
    )
    train.add_argument(
        "--ema",
        type=_decay,
        metavar="DECAY",
        help="decay per step of the moving average of the weights that is evaluated "
        "and saved; it spans about 1/(1 - DECAY) steps; 0 for none"
        + recipes_say("ema"),
    )
    train.add_argument(
        "--label-smoothing",
        type=_smoothing,
        metavar="EPS",
        help="train towards the one-hot labels mixed with EPS of the uniform "
        "distribution over the 10 classes" + recipes_say("label_smoothing"),
    )
    train.add_argument(
        "--target",
        type=_fraction,
        help="stop once test accuracy reaches this fraction (1 never stops early)"
        + recipes_say("target"),
    )
    train.add_argument(
        "--out",
        help="run folder to write (default: runs/latest); refused if it holds a run",
    )
    train.add_argument(
        "--device",
        default="auto",
        help="auto (CUDA, then Apple MPS, then CPU), cpu, cuda, cuda:N or mps",
    )
    train.add_argument("--seed", type=int, help="random seed (default 0)")
    train.add_argument(
        "--subset",
        type=_positive_int,
        help="train on N training images only, drawn at random (the same N each time)",
    )
    train.add_argument(
        "--workers",
        type=int,
        default=None,
        help="DataLoader worker processes, for the albumentations backend only "
        "(default: 0 on CPU, up to 4 with a GPU)",
    )
    train.add_argument(
        "--resume",
        metavar="RUN_FOLDER",
        help="continue the interrupted run in RUN_FOLDER from its last finished epoch",
    )
    train.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the run files in --out if it holds a run already",
    )
    train.add_argument(
        "--augmentation",
        metavar="NAME=VALUE,...",
        help="change fields of the recipe's augmentation, e.g. hole_p=0.5,scale=0.1 "
        "(flip_p, shift, scale, rotate, affine_p, hole_size, hole_p, alternate_flip)",
    )
    train.add_argument(
        "--teacher",
        metavar="RECIPE_OR_FILE",
        help="distil: also learn from the predictions of a trained network, a recipe "
        "whose weights ship (best, fast, seed; best_alone, the best recipe trained "
        "without one), the shipped teacher_resnet (3.4 million parameters, outside "
        "the rules; the best recipe's teacher) or a weights file written by train "
        "(a run's best_model.pt); '' for none",
    )
    train.add_argument(
        "--distill-weight",
        type=_fraction,
        metavar="W",
        help="with a teacher (--teacher, or the recipe's own: best's teacher_resnet): "
        "the loss is (1 - W) * cross-entropy with the labels + W * the teacher's "
        "term (default 0.9)",
    )
    train.add_argument(
        "--distill-temperature",
        type=_positive_float,
        metavar="T",
        help="with a teacher: the temperature of both softmaxes (default 4)",
    )
    train.add_argument("--amp", action="store_true", help=_AMP_HELP)
    train.add_argument("--no-cuda-graph", action="store_true", help=_GRAPH_HELP)
    train.add_argument("--no-cudnn-benchmark", action="store_true", help=_CUDNN_HELP)
    train.add_argument("--no-progress", action="store_true", help="hide progress bars")

    summary = commands.add_parser(
        "summary",
        help="print the model summary, the constraint report and the receptive field",
    )
    summary.add_argument(
        "--recipe",
        default="seed",
        choices=sorted(RECIPES),
        help="whose model to describe (default: seed)",
    )
    summary.add_argument(
        "--model", choices=sorted(MODELS), help="describe this model instead"
    )
    bench = commands.add_parser(
        "bench",
        help="measure training images per second, beside the reference implementation",
        description="Measure how many training images per second a recipe processes "
        "(augmentation, forward, backward and optimiser step, after a warm-up), with "
        "the data pipeline and the model step separately, beside the reference "
        "implementation of the same recipe. The last line is one JSON object.",
    )
    bench.add_argument(
        "--recipe", default="seed", choices=sorted(RECIPES), help="(default: seed)"
    )
    bench.add_argument(
        "--model", choices=sorted(MODELS), help="model (default: the recipe's)"
    )
    bench.add_argument(
        "--device",
        default="auto",
        help="auto, cpu, cuda, cuda:N or mps (default: auto)",
    )
    bench.add_argument(
        "--steps", type=_positive_int, default=20, help="steps per round (default: 20)"
    )
    bench.add_argument(
        "--warmup", type=_positive_int, default=3, help="warm-up steps (default: 3)"
    )
    bench.add_argument(
        "--rounds",
        type=_positive_int,
        default=3,
        help="timed rounds, taking turns with the reference (default: 3; the "
        "README's recorded CPU figures used --rounds 7 --steps 30)",
    )
    bench.add_argument(
        "--batch-size",
        type=_positive_int,
        help="images per step (default: the recipe's)",
    )
    bench.add_argument(
        "--no-compare", action="store_true", help="skip the reference implementation"
    )
    bench.add_argument(
        "--teacher",
        metavar="RECIPE_OR_FILE",
        help="time the step with this teacher instead of the recipe's own ('' for "
        "none: the best recipe alone)",
    )
    bench.add_argument("--amp", action="store_true", help=_AMP_HELP)
    bench.add_argument("--no-cuda-graph", action="store_true", help=_GRAPH_HELP)
    bench.add_argument("--no-cudnn-benchmark", action="store_true", help=_CUDNN_HELP)
    bench.add_argument(
        "--out", help="also write the result, with date and hardware, to this JSON file"
    )
    return parser


def _bench(args: argparse.Namespace) -> None:
    import dataclasses
    from pathlib import Path

    from cifar_lib.bench import run_benchmark
    from cifar_lib.errors import ConfigError
    from cifar_lib.train import get_recipe, select_device

    if args.out and Path(args.out).is_dir():
        raise ConfigError(
            f"--out {args.out} is a folder; give the path of a JSON file to write."
        )
    if args.out and not Path(args.out).resolve().parent.is_dir():
        raise ConfigError(
            f"--out {args.out}: the folder {Path(args.out).parent} does not exist; "
            "create it or choose another path."
        )
    recipe = get_recipe(args.recipe)
    if args.model:
        recipe = dataclasses.replace(recipe, model=args.model)
    if args.batch_size:
        recipe = dataclasses.replace(recipe, batch_size=args.batch_size)
    if args.teacher is not None:
        recipe = dataclasses.replace(recipe, teacher=args.teacher).validate()
    if args.amp:
        recipe = dataclasses.replace(recipe, amp=True)
    if args.no_cuda_graph:
        recipe = dataclasses.replace(recipe, cuda_graph=False)
    if args.no_cudnn_benchmark:
        recipe = dataclasses.replace(recipe, cudnn_benchmark=False)
    result = run_benchmark(
        recipe,
        select_device(args.device),
        steps=args.steps,
        warmup=args.warmup,
        rounds=args.rounds,
        compare=not args.no_compare,
    )
    if args.out:
        from cifar_lib.files import atomic_write_json
        from cifar_lib.results import provenance

        atomic_write_json(args.out, {**provenance(), **result})


def _train(args: argparse.Namespace) -> None:
    import dataclasses

    from cifar_lib.errors import ConfigError
    from cifar_lib.train import get_recipe, resume, train

    if args.workers is not None and args.workers < 0:
        raise ConfigError(f"--workers {args.workers} is out of range; use 0 or more.")
    if args.resume:
        fixed = ("recipe", "model", "epochs", "batch_size", "lr", "ema", "target")
        fixed += ("seed", "subset", "out", "workers", "augmentation")
        fixed += ("label_smoothing", "teacher", "distill_weight", "distill_temperature")
        changed = [
            f"--{name.replace('_', '-')}"
            for name in fixed
            if getattr(args, name) is not None
        ]
        changed += ["--overwrite"] if args.overwrite else []
        changed += ["--amp"] if args.amp else []
        changed += ["--no-cuda-graph"] if args.no_cuda_graph else []
        changed += ["--no-cudnn-benchmark"] if args.no_cudnn_benchmark else []
        if changed:
            raise ConfigError(
                f"{', '.join(changed)} cannot change a run being resumed; --resume "
                "continues with the run's own settings (see its run.json); only "
                "--data-dir (for data that has moved) and --device may be given."
            )
        resume(
            args.resume,
            device=args.device,
            progress=not args.no_progress,
            data_dir=args.data_dir,
        )
        return
    distilling = ("teacher", "distill_weight", "distill_temperature")
    overrides = {
        name: getattr(args, name)
        for name in ("model", "epochs", "batch_size", "lr", "ema", "target", "seed")
        + ("label_smoothing", *distilling)
        if getattr(args, name) is not None
    }
    shipped = get_recipe(args.recipe or "seed")
    teacher = shipped.teacher if args.teacher is None else args.teacher
    if not teacher and (
        args.distill_weight is not None or args.distill_temperature is not None
    ):
        why = (
            "--teacher '' trains without one: drop them"
            if args.teacher == ""
            else f"the {shipped.name} recipe has no teacher: give --teacher"
        )
        raise ConfigError(
            "--distill-weight and --distill-temperature shape the teacher's part of "
            f"the loss; {why}."
        )
    if args.amp:
        overrides["amp"] = True
    if args.no_cuda_graph:
        overrides["cuda_graph"] = False
    if args.no_cudnn_benchmark:
        overrides["cudnn_benchmark"] = False
    if args.augmentation:
        changes = augmentation_changes(args.augmentation)
        overrides["augmentation"] = dataclasses.replace(shipped.augmentation, **changes)
    recipe = dataclasses.replace(shipped, **overrides)
    if args.workers is not None and recipe.augmentation_backend == "tensor":
        print(
            f"note: --workers {args.workers} has no effect: the {recipe.name} recipe "
            "augments whole batches as tensors in this process (worker processes "
            "serve the albumentations backend, reference_implementation(recipe) in "
            "Python).",
            file=sys.stderr,
        )
    train(
        recipe,
        out=args.out or "runs/latest",
        data_dir=args.data_dir,
        subset=args.subset,
        device=args.device,
        num_workers=args.workers,
        overwrite=args.overwrite,
        progress=not args.no_progress,
    )


def _summary(args: argparse.Namespace) -> None:
    from torchinfo import summary

    from cifar_lib.constraints import check_constraints
    from cifar_lib.models import build_model
    from cifar_lib.receptive_field import (
        empirical_receptive_field,
        format_table,
        receptive_field_table,
    )
    from cifar_lib.train import get_recipe

    recipe = get_recipe(args.recipe)
    model = build_model(args.model or recipe.model, dropout=recipe.dropout)
    print(
        summary(
            model,
            input_size=(1, 3, 32, 32),
            verbose=0,
            depth=3,
            col_names=("output_size", "num_params", "mult_adds"),
        )
    )
    print("\nConstraints of the assignment:")
    print(check_constraints(model))
    table = receptive_field_table(model)
    print("\nReceptive field, layer by layer (k kernel, s stride, d dilation, j jump):")
    print(format_table(table))
    print(
        f"\nReceptive field of the last feature map: {table[-1].receptive_field} "
        "pixels (analytic); measured from input gradients: "
        f"{empirical_receptive_field(model)}."
    )


def main(argv: list[str] | None = None) -> int:
    # albumentations asks PyPI for a newer version at import; offline that only
    # prints warnings before the command's own output.
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    args = None
    try:
        args = build_parser().parse_args(argv)  # imports torch: Ctrl-C lands here too
        {"train": _train, "summary": _summary, "bench": _bench}[args.command](args)
    except CifarLibError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except BaseException as error:
        if not _interrupted(error):
            raise
        print(f"\nInterrupted. {_what_was_saved(args)}", file=sys.stderr)
        return 130
    return 0


def _interrupted(error: BaseException | None) -> bool:
    """Whether ``error`` is Ctrl-C, or was raised because of it: an interrupt
    that arrives inside a compiled Numba kernel comes out as a SystemError whose
    cause is the KeyboardInterrupt."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, KeyboardInterrupt):
            return True
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return False


def _what_was_saved(args: argparse.Namespace | None) -> str:
    """The sentence after 'Interrupted.': how to continue a training run."""
    if args is None or args.command != "train":
        return "Nothing was written."
    from pathlib import Path

    folder = Path(args.resume or args.out or "runs/latest")
    if not (folder / "checkpoint.pt").is_file():
        return f"No epoch had finished, so '{folder}' holds no checkpoint to resume."
    return (
        "Every finished epoch is saved; continue with "
        f"'python -m cifar_lib train --resume {folder}'."
    )
