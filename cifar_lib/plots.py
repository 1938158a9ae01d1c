"""Figures from arrays and histories. Each function returns a matplotlib Figure,
built without pyplot so that nothing is kept open; notebooks display it, the
command line saves it.
"""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from cifar_lib.data import CIFAR10_CLASSES


def training_curves(history: list[dict], target: float | None = None) -> Figure:
    """Loss, accuracy (with the target line) and learning rate against epochs."""
    epochs = [row["epoch"] for row in history]
    figure = Figure(figsize=(13, 3.6), layout="constrained")
    loss, accuracy, lr = figure.subplots(1, 3)
    loss.plot(epochs, [r["train_loss"] for r in history], "o-", label="train")
    loss.plot(epochs, [r["test_loss"] for r in history], "o-", label="test")
    # With label smoothing (fast, best) the training loss includes it; the test
    # loss is plain cross-entropy, so the two curves differ by more than overfitting.
    loss.set(title="Loss", xlabel="epoch", ylabel="cross-entropy")
    loss.legend()
    accuracy.plot(
        epochs, [100 * r["train_accuracy"] for r in history], "o-", label="train"
    )
    accuracy.plot(
        epochs, [100 * r["test_accuracy"] for r in history], "o-", label="test"
    )
    if target is not None:
        accuracy.axhline(
            100 * target, color="grey", ls="--", label=f"target {target:.0%}"
        )
    accuracy.set(title="Accuracy", xlabel="epoch", ylabel="%")
    accuracy.legend()
    lr.plot(epochs, [r["lr"] for r in history], "o-", color="tab:green")
    lr.set(title="Learning rate (end of epoch)", xlabel="epoch", yscale="log")
    for axis in (loss, accuracy, lr):
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))  # whole epochs
    return figure


def image_grid(
    images: np.ndarray,
    titles: list[str] | None = None,
    columns: int = 10,
    size: float = 1.2,
) -> Figure:
    """uint8 HWC images in a grid, each with an optional title."""
    rows = int(np.ceil(len(images) / columns))
    figure = Figure(figsize=(columns * size, rows * size * 1.15), layout="constrained")
    axes = np.atleast_1d(figure.subplots(rows, columns)).ravel()
    for index, axis in enumerate(axes):
        axis.axis("off")
        if index < len(images):
            axis.imshow(images[index], interpolation="nearest")
            if titles:
                axis.set_title(titles[index], fontsize=7)
    return figure


def examples_per_class(
    images: np.ndarray, labels: np.ndarray, per_class: int = 8, seed: int = 0
) -> Figure:
    """One row per class, ``per_class`` random examples in each."""
    rng = np.random.default_rng(seed)
    figure = Figure(figsize=(per_class * 1.0 + 1.2, 10 * 1.0), layout="constrained")
    axes = figure.subplots(10, per_class)
    for label, name in enumerate(CIFAR10_CLASSES):
        chosen = rng.choice(np.flatnonzero(labels == label), per_class, replace=False)
        for column, index in enumerate(chosen):
            axis = axes[label, column]
            axis.imshow(images[index], interpolation="nearest")
            axis.set_xticks([])
            axis.set_yticks([])
        axes[label, 0].set_ylabel(name, rotation=0, ha="right", va="center")
    return figure


def before_after(
    originals: np.ndarray, augmented: list[np.ndarray], names: list[str]
) -> Figure:
    """Row 0 the originals, then one row per augmentation (``augmented[i]`` holds
    the images after augmentation ``names[i]``)."""
    rows = 1 + len(augmented)
    columns = len(originals)
    figure = Figure(figsize=(columns * 1.1 + 1.6, rows * 1.15), layout="constrained")
    axes = np.array(figure.subplots(rows, columns)).reshape(rows, columns)
    for row, (name, images) in enumerate(
        zip(["original"] + names, [originals] + augmented, strict=True)
    ):
        for column in range(columns):
            axis = axes[row, column]
            axis.imshow(images[column], interpolation="nearest")
            axis.set_xticks([])
            axis.set_yticks([])
        axes[row, 0].set_ylabel(name, rotation=0, ha="right", va="center", fontsize=8)
    return figure


def confusion_matrix_figure(matrix: np.ndarray, classes=CIFAR10_CLASSES) -> Figure:
    """Rows are true classes, columns predictions; each row shown as percentages."""
    shares = matrix / np.maximum(matrix.sum(1, keepdims=True), 1)
    figure = Figure(figsize=(7.5, 6.5), layout="constrained")
    axis = figure.subplots()
    image = axis.imshow(shares * 100, cmap="Blues", vmin=0, vmax=100)
    axis.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    axis.set_yticks(range(len(classes)), classes)
    axis.set(
        xlabel="predicted", ylabel="true", title="Confusion matrix (% of true class)"
    )
    for row in range(len(classes)):
        for column in range(len(classes)):
            value = shares[row, column] * 100
            axis.text(
                column,
                row,
                f"{value:.0f}",
                ha="center",
                va="center",
                fontsize=7,
                color="white" if value > 50 else "black",
            )
    figure.colorbar(image, ax=axis, shrink=0.8)
    return figure


def bar_chart(names: list[str], values: list[float], title: str, ylabel: str) -> Figure:
    """A labelled bar chart (parameters per block, for instance)."""
    figure = Figure(figsize=(8, 3.5), layout="constrained")
    axis = figure.subplots()
    bars = axis.bar(names, values, color="tab:blue")
    axis.bar_label(bars, labels=[f"{v:,.0f}" for v in values], fontsize=8)
    axis.set(title=title, ylabel=ylabel)
    axis.tick_params(axis="x", rotation=30)
    return figure


def heatmap(values: np.ndarray, title: str, image: np.ndarray | None = None) -> Figure:
    """A 2-D array as a heat map, optionally laid over an image."""
    figure = Figure(figsize=(4.5, 4.5), layout="constrained")
    axis = figure.subplots()
    if image is not None:
        axis.imshow(image, interpolation="nearest")
        axis.imshow(values, cmap="magma", alpha=0.6, interpolation="nearest")
    else:
        axis.imshow(values, cmap="magma", interpolation="nearest")
    axis.set_title(title)
    axis.set_xticks([])
    axis.set_yticks([])
    return figure


def heatmaps(values: list[np.ndarray], titles: list[str], size: float = 2.6) -> Figure:
    """Several 2-D arrays side by side, each with its title (footprints, taught in
    notebooks 02 and 03)."""
    figure = Figure(figsize=(len(values) * size, size + 0.4), layout="constrained")
    axes = np.atleast_1d(figure.subplots(1, len(values)))
    for axis, array, title in zip(axes, values, titles, strict=True):
        axis.imshow(array, cmap="magma", interpolation="nearest")
        axis.set_title(title, fontsize=9)
        axis.set_xticks([])
        axis.set_yticks([])
    return figure


def footprint_outline(image: np.ndarray, footprint: np.ndarray, title: str) -> Figure:
    """An image with the outline of a footprint (a boolean mask of the same size)
    drawn over it: the receptive field to scale (taught in notebook 03)."""
    figure = Figure(figsize=(4.5, 4.5), layout="constrained")
    axis = figure.subplots()
    axis.imshow(image, interpolation="nearest")
    axis.contour(footprint.astype(float), levels=[0.5], colors="red", linewidths=2)
    axis.set_title(title)
    axis.set_xticks([])
    axis.set_yticks([])
    return figure


def accuracy_comparison(
    histories: dict[str, list[dict]],
    target: float = 0.85,
    log_time: bool = False,
    by_time: bool = True,
) -> Figure:
    """Test accuracy of several runs against epochs (left) and against training
    time (right), with the target line; ``log_time`` puts the time on a
    logarithmic axis (runs of minutes beside runs of hours). ``by_time=False``
    leaves the time out, for runs whose times cannot be compared (run under
    different loads, say)."""
    figure = Figure(figsize=(12 if by_time else 6, 4), layout="constrained")
    axes = figure.subplots(1, 2) if by_time else [figure.subplots()]
    by_epoch = axes[0]
    for name, history in histories.items():
        accuracy = [100 * row["test_accuracy"] for row in history]
        by_epoch.plot([row["epoch"] for row in history], accuracy, "o-", label=name)
        if by_time:
            elapsed = np.cumsum([row["seconds"] for row in history]) / 60
            axes[1].plot(elapsed, accuracy, "o-", label=name)
    for axis, label in zip(axes, ("epoch", "minutes of training"), strict=False):
        axis.axhline(100 * target, color="grey", ls="--", label=f"{target:.0%}")
        axis.set(xlabel=label, ylabel="test accuracy (%)")
        axis.legend()
    by_epoch.xaxis.set_major_locator(MaxNLocator(integer=True))
    by_epoch.set_title("Test accuracy against epochs")
    if by_time:
        axes[1].set_title("Test accuracy against training time")
        if log_time:
            axes[1].set_xscale("log")
            axes[1].set_xlabel("minutes of training (logarithmic)")
    return figure


def soft_targets(
    image: np.ndarray,
    probabilities: dict[str, np.ndarray],
    classes=CIFAR10_CLASSES,
) -> Figure:
    """One image (uint8 HWC) beside a network's probabilities for each class,
    one group of bars per entry of ``probabilities`` (a temperature, say), on a
    logarithmic axis so that the small probabilities show."""
    figure = Figure(figsize=(11, 3), layout="constrained")
    picture, bars = figure.subplots(1, 2, width_ratios=[1, 4])
    picture.imshow(image, interpolation="nearest")
    picture.axis("off")
    width = 0.8 / len(probabilities)
    positions = np.arange(len(classes))
    for index, (label, values) in enumerate(probabilities.items()):
        bars.bar(
            positions + (index - (len(probabilities) - 1) / 2) * width,
            values,
            width,
            label=label,
        )
    bars.set_xticks(positions, classes, rotation=30)
    bars.set_yscale("log")
    bars.set(ylabel="probability (logarithmic)")
    bars.legend()
    return figure


def runs_by_change(
    runs: dict[str, list[float]], target: float | None = None, width: int = 45
) -> Figure:
    """One row per change to a recipe, one dot per run (its test accuracy, given
    as a fraction), with the row's mean as a bar. The first row is the recipe as
    it is: its range is shaded across every row, so a change whose dots sit
    inside the band did no more than another seed would."""
    import textwrap

    names = list(runs)
    figure = Figure(figsize=(9, 0.9 + 0.5 * len(names)), layout="constrained")
    axis = figure.subplots()
    base = [100 * a for a in runs[names[0]]]
    axis.axvspan(min(base), max(base), color="tab:blue", alpha=0.12, lw=0)
    for row, name in enumerate(names):
        values = [100 * a for a in runs[name]]
        axis.plot(values, [row] * len(values), "o", color="tab:blue", alpha=0.7)
        mean = sum(values) / len(values)
        axis.plot([mean, mean], [row - 0.3, row + 0.3], color="black", lw=2)
    if target is not None:
        axis.axvline(100 * target, color="grey", ls="--", label=f"{target:.0%}")
        axis.legend(loc="lower right")
    labels = [textwrap.fill(name, width) for name in names]
    axis.set_yticks(range(len(names)), labels, fontsize=8)
    axis.tick_params(axis="y", length=0)  # a tick would sit between wrapped lines
    axis.invert_yaxis()  # the recipe as it is on top
    axis.set(xlabel="test accuracy (%)", title="Each run, by what it changed")
    axis.grid(axis="x", alpha=0.3)
    return figure
