"""The tools of a lent GPU session (benchmarks/device/): the packer that carries the
image folder there unpacks it byte for byte; the session scripts name recipes and
models that exist and parse; fit_epochs.py sizes the long runs to the time left;
run folders are never reused."""

import json
import subprocess
from pathlib import Path

import pytest

from cifar_lib.results import ROOT

DEVICE = ROOT / "benchmarks" / "device"


def test_pack_then_unpack_gives_the_same_files(tmp_path, image_folder, load_script):
    packer = load_script("device/pack_images")
    source = Path(image_folder)
    count = packer.pack(source, tmp_path / "packed")
    assert count == packer.unpack(tmp_path / "packed", tmp_path / "copy")
    files = sorted(p.relative_to(source) for p in source.glob("*/*/*"))
    assert count == len(files) > 0
    for name in files:
        assert (tmp_path / "copy" / name).read_bytes() == (source / name).read_bytes()


def test_pack_is_compressed_and_an_uncompressed_pack_still_unpacks(
    tmp_path, image_folder, load_script
):
    """Packs are xz now (the JPEG headers repeat in every file); a pack written
    before, the plain bytes after the same header, must still unpack."""
    import lzma

    packer = load_script("device/pack_images")
    source = Path(image_folder)
    packer.pack(source, tmp_path / "packed")
    plain = lzma.decompress((tmp_path / "packed").read_bytes())
    total = sum(p.stat().st_size for p in source.glob("*/*/*"))
    assert len(plain) > total > (tmp_path / "packed").stat().st_size
    (tmp_path / "plain").write_bytes(plain)
    packer.unpack(tmp_path / "plain", tmp_path / "copy")
    for name in (p.relative_to(source) for p in source.glob("*/*/*")):
        assert (tmp_path / "copy" / name).read_bytes() == (source / name).read_bytes()


def test_pack_refuses_a_folder_without_images(tmp_path, load_script):
    with pytest.raises(SystemExit, match="holds no train"):
        load_script("device/pack_images").pack(tmp_path, tmp_path / "packed")


SCRIPTS = ["gpu_session.sh", "gpu_graph_check.sh", "gpu_best.sh", "common.sh"]
SCRIPTS += ["gpu_distill.sh"]


@pytest.mark.parametrize("script", SCRIPTS)
def test_device_scripts_name_recipes_and_models_that_exist(script):
    """A lent GPU session is rare and short: a misspelt model or recipe in its
    script would waste it, so every --recipe and --model named there must exist."""
    import re

    from cifar_lib.models import MODELS
    from cifar_lib.train import RECIPES

    text = (ROOT / "benchmarks" / "device" / script).read_text()
    recipes = re.findall(r"--recipe (\S+)", text)
    models = re.findall(r"--model (\w+)", text)  # not $model: the loop's list is
    for names in re.findall(r"for model in ([\w ]+); do", text):
        models += names.split()
    assert recipes and set(recipes) <= set(RECIPES)
    assert set(models) <= set(MODELS)
    if script == "gpu_session.sh":
        assert "CIFAR10DepthwiseResNet" in models


@pytest.mark.parametrize("script", [*SCRIPTS, "gpu_fast.sh"])
def test_device_scripts_give_options_that_the_command_line_has(script):
    """Likewise every --option the scripts pass to `train` or `bench`: an unknown
    one would end each run at once with exit code 2."""
    import argparse
    import re

    from cifar_lib.cli import build_parser

    known = set()
    for action in build_parser()._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name in ("train", "bench"):
                for option in action.choices[name]._actions:
                    known.update(option.option_strings)
    assert {"--no-cudnn-benchmark", "--amp", "--epochs"} <= known
    text = (ROOT / "benchmarks" / "device" / script).read_text()
    commands = " ".join(
        re.findall(r"(?:cifar_lib|TRAIN|BENCH|LONG|fast_run )[^\n]*", text)
    )
    given = set(re.findall(r"(?<![\w-])--[a-z][a-z-]+", commands))
    assert given <= known, given - known


def test_fit_epochs_leaves_the_margin_and_shares_the_gpu(load_script):
    fit = load_script("device/fit_epochs")
    # 62,500 images/s: 0.8 s of training, 0.2 s of evaluation, 0.5 s: 1.5 s an epoch
    assert fit.epoch_seconds(62_500) == pytest.approx(1.5)
    assert fit.epochs_that_fit(300, [62_500]) == 150  # 160 fit; capped at --most
    assert fit.epochs_that_fit(150, [62_500]) == 80  # 0.8 * 150 / 1.5
    assert fit.epochs_that_fit(150, [62_500, 62_500]) == 40  # two runs share the GPU
    assert fit.epochs_that_fit(150, [62_500], margin=1.0) == 100
    assert fit.epochs_that_fit(1, [62_500]) == 0
    with pytest.raises(ValueError):
        fit.epochs_that_fit(100, [])


def test_fit_epochs_reads_bench_files_and_refuses_bad_ones(
    tmp_path, capsys, load_script
):
    fit = load_script("device/fit_epochs")
    files = []
    for name in ("a", "b"):
        files.append(tmp_path / f"{name}.json")
        files[-1].write_text(json.dumps({"train_images_per_s": 62_500}))
    assert fit.main(["150", *map(str, files)]) == 0
    assert capsys.readouterr().out.strip() == "40"
    (tmp_path / "bad.json").write_text("{}")
    assert fit.main(["150", str(tmp_path / "bad.json")]) == 2
    assert capsys.readouterr().err.startswith("error: no epoch count")


def test_fit_epochs_sizes_a_distilled_run(tmp_path, capsys, load_script):
    fit = load_script("device/fit_epochs")
    # the teacher's epochs after its first took 3 s (median): its forward passes
    # add 1 s to the student's 1.5 s
    history = [{"train_seconds": s} for s in (20.0, 3.0, 2.9, 3.1, 3.0)]
    assert fit.distilled_epoch_seconds(1.5, history) == pytest.approx(2.5)
    assert fit.distilled_epoch_seconds(1.5, history[:1]) == pytest.approx(1.5 + 20 / 3)
    with pytest.raises(ValueError):
        fit.distilled_epoch_seconds(1.5, [])
    (tmp_path / "history.json").write_text(json.dumps(history))
    args = ["300", "--teacher-history", str(tmp_path / "history.json")]
    assert fit.main([*args, "--student-epoch-s", "1.5", "--margin", "0.8"]) == 0
    assert capsys.readouterr().out.strip() == "96"  # 0.8 * 300 / 2.5
    # a run's record in results/ablations/ holds its history
    (tmp_path / "record.json").write_text(json.dumps({"history": history}))
    record = ["300", "--teacher-history", str(tmp_path / "record.json")]
    assert fit.main([*record, "--student-epoch-s", "1.5", "--margin", "0.8"]) == 0
    assert capsys.readouterr().out.strip() == "96"
    assert fit.main([*args, "--student-epoch-s", "1.5", "--most", "50"]) == 0
    assert capsys.readouterr().out.strip() == "50"
    (tmp_path / "history.json").write_text("[]")
    assert fit.main(args) == 2
    assert capsys.readouterr().err.startswith("error: no epoch count")


@pytest.mark.parametrize("script", sorted(p.name for p in DEVICE.glob("*.sh")))
def test_device_scripts_parse(script):
    result = subprocess.run(["bash", "-n", str(DEVICE / script)], capture_output=True)
    assert result.returncode == 0, result.stderr


def test_free_folder_never_reuses_a_run_folder(tmp_path):
    """A second call on a warm machine with the same settings once found the first
    call's run folders, and train refused them: the next free name is taken."""
    text = (DEVICE / "common.sh").read_text()
    function = text[text.index("free_folder() {") :]
    function = function[: function.index("\n}\n") + 3]
    base = tmp_path / "fast_seed0"

    def free() -> str:
        script = f"{function}\nfree_folder {base}"
        return subprocess.run(
            ["bash", "-c", script], capture_output=True, text=True, check=True
        ).stdout.strip()

    assert free() == str(base)
    base.mkdir()
    assert free() == f"{base}_2"
    Path(f"{base}_2").mkdir()
    assert free() == f"{base}_3"


def test_gpu_fast_names_its_folders_after_the_flags(tmp_path):
    text = (DEVICE / "gpu_fast.sh").read_text()
    lines = [line for line in text.splitlines() if "NAME=" in line]
    script = "\n".join(lines) + '\necho "$NAME"'

    def name(*flags: str) -> str:
        return subprocess.run(
            ["bash", "-c", script, "gpu_fast.sh", *flags],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()

    assert name() == "fast"
    assert name("--batch-size", "64", "--lr", "0.1") == "fast_batchsize_64_lr_0.1"
