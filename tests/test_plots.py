import pytest

from cifar_lib.plots import runs_by_change


def test_runs_by_change_draws_each_run_and_the_shipped_band():
    runs = {"as shipped": [0.84, 0.85], "lr 0.1": [0.83, 0.845, 0.86]}
    axis = runs_by_change(runs, target=0.85).axes[0]
    band = axis.patches[0]  # a Rectangle or a Polygon, by matplotlib version
    xs = band.get_patch_transform().transform(band.get_path().vertices)[:, 0]
    assert (min(xs), max(xs)) == pytest.approx((84.0, 85.0))
    dots = [line for line in axis.lines if line.get_marker() == "o"]
    assert [list(d.get_xdata()) for d in dots] == [
        pytest.approx([84.0, 85.0]),
        pytest.approx([83.0, 84.5, 86.0]),
    ]
    assert [list(d.get_ydata()) for d in dots] == [[0, 0], [1, 1, 1]]
    means = [line for line in axis.lines if line.get_linewidth() == 2]
    assert [m.get_xdata()[0] for m in means] == pytest.approx([84.5, 84.5])
    assert [t.get_text() for t in axis.get_yticklabels()] == list(runs)
    assert axis.yaxis_inverted()


@pytest.mark.parametrize("log_time", [False, True])
def test_accuracy_comparison_puts_minutes_on_a_log_axis_when_asked(log_time):
    """Runs of minutes on a GPU beside runs of hours on a CPU: a linear time axis
    would squeeze the short runs into its first pixels."""
    from cifar_lib.plots import accuracy_comparison

    history = [
        {"epoch": e, "test_accuracy": 0.5 + e / 100, "seconds": 60.0} for e in (1, 2)
    ]
    figure = accuracy_comparison({"a": history, "b": history[:1]}, log_time=log_time)
    by_epoch, by_time = figure.axes
    assert by_epoch.get_xscale() == "linear"
    assert by_time.get_xscale() == ("log" if log_time else "linear")
    assert list(by_time.lines[0].get_xdata()) == [1.0, 2.0]  # minutes, cumulative
    assert ("logarithmic" in by_time.get_xlabel()) is log_time


def test_soft_targets_draws_one_bar_per_class_and_label():
    import numpy as np

    from cifar_lib.plots import soft_targets

    image = np.zeros((32, 32, 3), dtype=np.uint8)
    sharp = np.full(10, 0.001)
    sharp[3] = 1 - 0.009
    flat = np.full(10, 0.1)
    figure = soft_targets(image, {"T = 1": sharp, "T = 4": flat})
    picture, bars = figure.axes
    heights = [patch.get_height() for patch in bars.patches]
    assert heights == pytest.approx([*sharp, *flat])
    assert bars.get_yscale() == "log"
    assert [t.get_text() for t in bars.get_legend().get_texts()] == ["T = 1", "T = 4"]
    assert len(bars.get_xticklabels()) == 10


def test_accuracy_comparison_can_leave_the_time_out():
    from cifar_lib.plots import accuracy_comparison

    history = [{"epoch": 1, "test_accuracy": 0.5, "seconds": 60.0}]
    figure = accuracy_comparison({"a": history}, by_time=False)
    assert len(figure.axes) == 1 and figure.axes[0].get_xlabel() == "epoch"
