import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from cifar_lib import checkpoints
from cifar_lib.cli import main
from cifar_lib.train import get_recipe


def run_cli(*args, **kwargs):
    return subprocess.run(
        [sys.executable, "-m", "cifar_lib", *args],
        capture_output=True,
        text=True,
        timeout=300,
        **kwargs,
    )


def test_train_end_to_end_on_a_tiny_subset(tmp_path, image_folder):
    out = tmp_path / "try"
    done = run_cli(
        "train",
        "--data-dir",
        image_folder,
        "--epochs",
        "1",
        "--subset",
        "64",
        "--batch-size",
        "32",
        "--model",
        "CIFAR10ResNet",
        "--amp",
        "--no-cudnn-benchmark",
        "--augmentation",
        "hole_p=0.5,scale=0.05",
        "--ema",
        "0.9",
        "--label-smoothing",
        "0.05",
        "--teacher",
        "best",
        "--distill-weight",
        "0.5",
        "--distill-temperature",
        "2",
        "--workers",
        "2",
        "--out",
        str(out),
        "--no-progress",
    )
    assert done.returncode == 0, done.stderr
    # the tensor backend has no worker processes: said, not silently ignored
    assert "note: --workers 2 has no effect: the seed recipe augments" in done.stderr
    assert "Recipe 'seed'" in done.stdout and "epoch   1/1" in done.stdout
    for name in (
        "history.json",
        "best_model.pt",
        "final_model.pt",
        "training_curves.png",
        "checkpoint.pt",
        "run.json",
    ):
        assert (out / name).exists()
    settings = json.loads((out / "run.json").read_text())
    assert settings["data"]["subset"] == 64 and settings["recipe"]["epochs"] == 1
    assert settings["recipe"]["model"] == "CIFAR10ResNet"
    assert settings["recipe"]["amp"] is True  # recorded; ignored on a CPU
    assert settings["recipe"]["cudnn_benchmark"] is False  # likewise
    changed = {**get_recipe("seed").to_dict()["augmentation"], "hole_p": 0.5}
    assert settings["recipe"]["augmentation"] == {**changed, "scale": 0.05}
    assert settings["recipe"]["ema"] == 0.9 and "(raw weights " in done.stdout
    assert settings["recipe"]["label_smoothing"] == 0.05
    assert settings["recipe"]["teacher"] == "best"
    assert settings["recipe"]["distill_weight"] == 0.5
    assert settings["recipe"]["distill_temperature"] == 2.0


def test_summary_reports_count_constraints_and_receptive_field(capsys):
    assert main(["summary"]) == 0
    text = capsys.readouterr().out
    assert "Trainable params: 181,942" in text
    assert "every constraint met" in text
    assert "81 pixels (analytic); measured from input gradients: 81." in text
    assert main(["summary", "--model", "CIFAR10TeacherResNet"]) == 0
    text = capsys.readouterr().out
    assert "Trainable params: 3,390,458" in text and "constraints NOT met" in text


def test_help_explains_every_option():
    done = run_cli("train", "--help")
    for option in (
        "--data-dir",
        "--epochs",
        "--batch-size",
        "--target",
        "--out",
        "--device",
        "--seed",
        "--ema",
        "--subset",
        "--resume",
        "--overwrite",
    ):
        assert option in done.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (["--epochs", "0"], "0 is out of range: it must be at least 1"),
        (["--batch-size", "-3"], "-3 is out of range"),
        (["--target", "1.5"], "1.5 is out of range: give a fraction in (0, 1]"),
        (["--target", "abc"], "'abc' is not a number"),
        (["--subset", "0"], "0 is out of range"),
        (["--device", "xla"], "unsupported device 'xla'"),
        (["--device", "gpu"], "unknown device 'gpu'"),
        (["--device", "cpu:3"], "PyTorch sees all the CPU's cores as one device"),
        (["--workers", "-1"], "--workers -1 is out of range"),
        (["--ema", "1"], "1.0 is out of range: give a decay in [0, 1)"),
        (["--ema", "x"], "'x' is not a number"),
        (["--label-smoothing", "1"], "1.0 is out of range: give a fraction in [0, 1)"),
        (["--subset", "5000"], "subset = 5,000 is more than the 300 training images"),
    ],
)
def test_bad_options_exit_non_zero_with_one_sentence(
    args, message, tmp_path, capsys, image_folder
):
    out = tmp_path / "run"
    argv = ["train", "--data-dir", image_folder, "--out", str(out), *args]
    try:
        code = main(argv)
    except SystemExit as exit_:  # argparse's own checks
        code = exit_.code
    assert code == 2
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err
    assert not out.exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_on_a_cpu_machine_is_refused(tmp_path, capsys, image_folder):
    out = tmp_path / "run"
    assert (
        main(
            ["train", "--data-dir", image_folder, "--out", str(out), "--device", "cuda"]
        )
        == 2
    )
    assert "has no usable CUDA GPU; use --device cpu" in capsys.readouterr().err
    assert not out.exists()


def test_missing_folder_layout_is_one_sentence(tmp_path):
    (tmp_path / "train").mkdir()
    done = run_cli("train", "--data-dir", str(tmp_path), "--out", str(tmp_path / "run"))
    assert done.returncode == 2
    assert done.stderr.startswith("error: ") and "no test/ folder" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("option", [["--epochs", "3"], ["--ema", "0.99"]])
def test_resume_refuses_changed_settings(tmp_path, capsys, option):
    assert main(["train", "--resume", str(tmp_path), *option]) == 2
    err = capsys.readouterr().err
    assert "cannot change a run being resumed" in err and option[0] in err
    assert main(["train", "--resume", str(tmp_path), "--model", "CIFAR10Netv2"]) == 2
    assert "--model cannot change a run being resumed" in capsys.readouterr().err
    assert main(["train", "--resume", str(tmp_path), "--amp"]) == 2
    assert "--amp cannot change a run being resumed" in capsys.readouterr().err
    assert main(["train", "--resume", str(tmp_path), "--no-cudnn-benchmark"]) == 2
    assert "--no-cudnn-benchmark cannot change" in capsys.readouterr().err
    assert main(["train", "--resume", str(tmp_path), "--augmentation", "hole_p=1"]) == 2
    assert "--augmentation cannot change" in capsys.readouterr().err
    assert main(["train", "--resume", str(tmp_path), "--label-smoothing", "0"]) == 2
    assert "--label-smoothing cannot change" in capsys.readouterr().err
    assert main(["train", "--resume", str(tmp_path), "--out", "x", "--overwrite"]) == 2
    assert "--out, --overwrite cannot change" in capsys.readouterr().err


def test_bench_refuses_an_output_in_a_missing_folder(tmp_path, capsys):
    assert main(["bench", "--out", str(tmp_path / "no" / "x.json")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["bench", "--out", str(tmp_path)]) == 2  # before, not after, the work
    assert f"--out {tmp_path} is a folder" in capsys.readouterr().err


def test_ctrl_c_inside_a_compiled_kernel_is_an_interruption(monkeypatch, capsys):
    """Ctrl-C inside a Numba kernel comes out as a SystemError caused by the
    KeyboardInterrupt: one sentence and exit 130, not a traceback."""
    from cifar_lib import cli

    def interrupted_kernel(args):
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt as interrupt:
            raise SystemError("returned a result with an exception set") from interrupt

    monkeypatch.setattr(cli, "_summary", interrupted_kernel)
    assert main(["summary"]) == 130
    assert capsys.readouterr().err == "\nInterrupted. Nothing was written.\n"

    def broken(args):
        raise SystemError("a real bug")

    monkeypatch.setattr(cli, "_summary", broken)
    with pytest.raises(SystemError, match="a real bug"):  # not taken for Ctrl-C
        main(["summary"])


def test_ctrl_c_names_the_run_folder_to_resume(tmp_path, monkeypatch, capsys):
    from cifar_lib import cli

    def interrupt(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "_train", interrupt)
    out = tmp_path / "run"
    assert main(["train", "--out", str(out)]) == 130
    assert f"'{out}' holds no checkpoint to resume" in capsys.readouterr().err
    out.mkdir()
    (out / "checkpoint.pt").write_bytes(b"")
    assert main(["train", "--out", str(out)]) == 130
    assert f"train --resume {out}'" in capsys.readouterr().err


def test_resume_refuses_other_data(tmp_path, capsys, image_folder, synthetic):
    from cifar_lib.data import save_image_folder

    run = tmp_path / "run"
    argv = ["train", "--data-dir", image_folder, "--out", str(run), "--epochs", "1"]
    assert main([*argv, "--subset", "60", "--no-progress"]) == 0
    fewer = tmp_path / "fewer"  # the same classes, a third of the training images
    save_image_folder(
        fewer, synthetic.train_images[::3], synthetic.train_labels[::3], "train"
    )
    save_image_folder(fewer, synthetic.test_images, synthetic.test_labels, "test")
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--data-dir", str(fewer)]) == 2
    err = capsys.readouterr().err
    assert "is not what" in err and "100 training" in err and "300" in err


def _wait_for(predicate, process, timeout=240):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        assert process.poll() is None, process.stderr.read()
        time.sleep(0.05)
    raise AssertionError("timed out")


def test_kill_during_an_epoch_then_resume_ends_like_an_uninterrupted_run(
    tmp_path, image_folder
):
    common = [
        "--data-dir",
        image_folder,
        "--epochs",
        "2",
        "--batch-size",
        "32",
        "--no-progress",
        "--target",
        "1.0",
    ]
    whole = run_cli("train", *common, "--out", str(tmp_path / "whole"))
    assert whole.returncode == 0, whole.stderr

    # Kill a quarter of the way into epoch 2's training, timed from the
    # uninterrupted run (about 0.3 s on a fast machine); the checkpoint is the
    # last file an epoch writes. A burst of load can still let epoch 2 finish
    # first: then the kill missed the epoch, and the run is tried again.
    whole_rows = json.loads((tmp_path / "whole" / "history.json").read_text())
    pause = 0.25 * whole_rows[1]["train_seconds"]
    for attempt in range(3):
        cut = tmp_path / f"cut{attempt}"
        process = subprocess.Popen(
            [sys.executable, "-m", "cifar_lib", "train", *common, "--out", str(cut)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        history = cut / "history.json"
        _wait_for((cut / "checkpoint.pt").exists, process)  # epoch 1 saved
        time.sleep(pause)
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
        if process.returncode == -signal.SIGKILL and (
            len(json.loads(history.read_text())) == 1
        ):
            break
    else:
        raise AssertionError("epoch 2 ended before the kill in each of 3 tries")
    assert not (cut / "final_model.pt").exists()

    resumed = run_cli("train", "--resume", str(cut), "--no-progress")
    assert resumed.returncode == 0, resumed.stderr
    assert "Resuming" in resumed.stdout

    def comparable(folder):
        rows = json.loads((folder / "history.json").read_text())
        return [{k: v for k, v in r.items() if "seconds" not in k} for r in rows]

    assert comparable(cut) == comparable(tmp_path / "whole")
    a = checkpoints.load(tmp_path / "whole" / "final_model.pt")["model"]
    b = checkpoints.load(cut / "final_model.pt")["model"]
    assert all(torch.equal(a[key], b[key]) for key in a)
    assert not [p for p in Path(cut).iterdir() if p.name.endswith(".tmp")]


def test_bench_ends_with_one_json_line(tmp_path, capsys):
    out = tmp_path / "bench.json"
    argv = [
        "bench",
        "--steps",
        "1",
        "--rounds",
        "1",
        "--warmup",
        "1",
        "--model",
        "CIFAR10ResNet",
        "--out",
        str(out),
    ]
    assert main(argv) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    result = json.loads(last)
    assert result["train_images_per_s"] > 0 and result["speedup"] > 0
    saved = json.loads(out.read_text())
    assert saved["train_images_per_s"] == result["train_images_per_s"]
    assert {"date", "hardware", "commit"} <= set(saved)
    assert saved["recipe"] == "seed" and saved["model"] == "CIFAR10ResNet"


def test_bench_times_a_recipe_that_distils_with_its_teacher(capsys):
    """The best recipe is taught by teacher_resnet: its step includes the
    teacher's forward pass, so bench loads the teacher too."""
    argv = ["bench", "--recipe", "best", "--steps", "1", "--rounds", "1"]
    argv += ["--warmup", "1", "--batch-size", "8"]
    assert main(argv) == 0  # the reference implementation taught as well
    out = capsys.readouterr().out
    result = json.loads(out.strip().splitlines()[-1])
    assert result["recipe"] == "best" and result["train_images_per_s"] > 0
    assert result["teacher"] == "teacher_resnet" and result["speedup"] > 0
    assert "taught by teacher_resnet (in every step)" in out
    assert main([*argv, "--no-compare", "--teacher", ""]) == 0  # the recipe alone
    out = capsys.readouterr().out
    assert json.loads(out.strip().splitlines()[-1])["teacher"] == ""
    assert "taught by" not in out


def test_augmentation_changes_parse_each_field_by_its_type():
    from cifar_lib.cli import augmentation_changes

    assert augmentation_changes("hole_p=0.5,scale=0.1") == {"hole_p": 0.5, "scale": 0.1}
    assert augmentation_changes("hole_size=8, alternate_flip=True") == {
        "hole_size": 8,
        "alternate_flip": True,
    }


@pytest.mark.parametrize(
    "given, message",
    [
        ("hole=0.5", "NAME one of flip_p, shift"),
        ("hole_p", "give NAME=VALUE"),
        ("hole_p=half", "'half' is not a number"),
        ("hole_size=8.5", "'8.5' is not a whole number"),
        ("alternate_flip=yes", "'yes' is not true or false"),
        (",", "needs NAME=VALUE"),
        (
            "hole_p=1.5",
            "augmentation hole_p = 1.5 is out of range; it must be a probability",
        ),
        ("shift=1", "augmentation shift = 1.0 is out of range"),
        ("rotate=-5", "augmentation rotate = -5.0 is out of range"),
        ("hole_size=40", "augmentation hole_size = 40 is out of range"),
    ],
)
def test_train_refuses_bad_augmentation_in_one_sentence(
    given, message, tmp_path, capsys
):
    out = tmp_path / "run"
    args = ["train", "--augmentation", given, "--data-dir", str(tmp_path), "--out"]
    assert main([*args, str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1
    assert not out.exists()
