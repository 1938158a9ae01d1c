"""The packer that carries the image folder to a lent GPU machine
(benchmarks/device/pack_images.py): what it unpacks is the folder, byte for byte."""

import importlib.util
from pathlib import Path

import pytest

from cifar_lib.results import ROOT


def _packer():
    path = ROOT / "benchmarks" / "device" / "pack_images.py"
    spec = importlib.util.spec_from_file_location("pack_images", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_pack_then_unpack_gives_the_same_files(tmp_path, image_folder):
    packer = _packer()
    source = Path(image_folder)
    count = packer.pack(source, tmp_path / "packed")
    assert count == packer.unpack(tmp_path / "packed", tmp_path / "copy")
    files = sorted(p.relative_to(source) for p in source.glob("*/*/*"))
    assert count == len(files) > 0
    for name in files:
        assert (tmp_path / "copy" / name).read_bytes() == (source / name).read_bytes()


def test_pack_refuses_a_folder_without_images(tmp_path):
    with pytest.raises(SystemExit, match="holds no train"):
        _packer().pack(tmp_path, tmp_path / "packed")


@pytest.mark.parametrize("script", ["gpu_session.sh", "gpu_graph_check.sh"])
def test_device_scripts_name_recipes_and_models_that_exist(script):
    """A lent GPU session is rare and short: a misspelt model or recipe in its
    script would waste it, so every --recipe and --model named there must exist."""
    import re

    from cifar_lib.models import MODELS
    from cifar_lib.train import RECIPES

    text = (ROOT / "benchmarks" / "device" / script).read_text()
    recipes = re.findall(r"--recipe (\S+)", text)
    models = re.findall(r"--model (\S+)", text)
    assert recipes and set(recipes) <= set(RECIPES)
    assert set(models) <= set(MODELS)
    if script == "gpu_session.sh":
        assert "CIFAR10DepthwiseResNet" in models
