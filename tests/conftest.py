"""Shared fixtures: small synthetic data, on disk and in memory; the scripts of
benchmarks/ imported as modules."""

from __future__ import annotations

import importlib.util
import os

import numpy as np
import pytest

from cifar_lib.data import make_synthetic_cifar, save_image_folder
from cifar_lib.results import ROOT

# The data and cache folders given to the test run, before ``_private_cache``
# hides them from each test (a test that runs a notebook on the real data needs
# them: ``outer_data``).
_OUTER = {
    name: os.environ.get(name) for name in ("CIFAR_LIB_DATA_DIR", "CIFAR_LIB_CACHE_DIR")
}


@pytest.fixture
def outer_data() -> dict:
    """The environment variables naming the data and cache folders that the test
    run was given (values None where unset)."""
    return dict(_OUTER)


@pytest.fixture
def load_script():
    """``load_script("device/fit_epochs")``: ``benchmarks/device/fit_epochs.py``
    imported as a module (run from a fresh copy each time)."""

    def load(name: str):
        path = ROOT / "benchmarks" / f"{name}.py"
        spec = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    return load


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory, monkeypatch):
    """Keep decoded-image caches out of the user's home folder."""
    monkeypatch.setenv(
        "CIFAR_LIB_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cache")
    )
    monkeypatch.delenv("CIFAR_LIB_DATA_DIR", raising=False)


@pytest.fixture
def interrupt_at_epoch(monkeypatch):
    """``interrupt_at_epoch(2)``: every training until ``restore()`` is stopped by
    Ctrl-C when it begins epoch 2 (``after_training=True``: once epoch 2 has
    trained, its weights moved, before it is evaluated or saved); returns
    ``restore``."""
    from cifar_lib import train as training

    real_epoch = training.train_one_epoch

    def interrupt(stop: int, after_training: bool = False):
        def interrupted(*args, epoch, **kwargs):
            if epoch == stop:
                if after_training:
                    real_epoch(*args, epoch=epoch, **kwargs)
                raise KeyboardInterrupt
            return real_epoch(*args, epoch=epoch, **kwargs)

        monkeypatch.setattr(training, "train_one_epoch", interrupted)
        return lambda: monkeypatch.setattr(training, "train_one_epoch", real_epoch)

    return interrupt


@pytest.fixture(scope="session")
def synthetic():
    return make_synthetic_cifar(train_per_class=30, test_per_class=10, seed=0)


@pytest.fixture(scope="session")
def image_folder(tmp_path_factory, synthetic) -> str:
    """A small CIFAR-10 copy in the image-folder layout (PNG files)."""
    root = tmp_path_factory.mktemp("cifar_folder")
    save_image_folder(root, synthetic.train_images, synthetic.train_labels, "train")
    save_image_folder(root, synthetic.test_images, synthetic.test_labels, "test")
    return str(root)


def copy_folder(source, destination):
    import shutil

    shutil.copytree(source, destination)
    return destination


@pytest.fixture
def writable_folder(tmp_path, image_folder):
    """A copy of the image folder that a test may break."""
    return copy_folder(image_folder, tmp_path / "data")


def assert_same_arrays(a: np.ndarray, b: np.ndarray) -> None:
    assert a.shape == b.shape and a.dtype == b.dtype
    assert np.array_equal(a, b)
