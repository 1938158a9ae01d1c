"""The notebooks as files: committed clean, and runnable from Colab's one-file copy.

(The notebooks themselves are run, cell by cell, by ``pytest --nbval-lax``.)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from cifar_lib import colab

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def test_the_six_notebooks_are_there():
    assert [path.name for path in NOTEBOOKS] == [
        "01_data_and_augmentation.ipynb",
        "02_custom_layers.ipynb",
        "03_receptive_field.ipynb",
        "04_model.ipynb",
        "05_training.ipynb",
        "06_beyond_85.ipynb",
    ]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.name)
def test_notebook_is_committed_without_outputs(path):
    notebook = json.loads(path.read_text(encoding="utf-8"))
    dirty = [
        index
        for index, cell in enumerate(notebook["cells"])
        if cell["cell_type"] == "code"
        and (cell.get("outputs") or cell.get("execution_count") is not None)
    ]
    assert not dirty, (
        f"{path.name}: cells {dirty} hold outputs or execution counts; clear them "
        f"with `jupyter nbconvert --clear-output --inplace {path}`."
    )
    assert "widgets" not in notebook["metadata"], f"{path.name} holds widget state"


def test_bundle_puts_the_package_cell_just_before_the_setup_cell(tmp_path):
    source = ROOT / "notebooks" / "02_custom_layers.ipynb"
    original = json.loads(source.read_text(encoding="utf-8"))["cells"]
    bundled = json.loads(
        colab.bundle_notebook(source, tmp_path / "copy.ipynb").read_text()
    )["cells"]
    setup_index = next(
        i for i, cell in enumerate(original) if cell["cell_type"] == "code"
    )
    assert bundled[setup_index]["id"] == colab.BUNDLE_CELL_ID
    assert bundled[:setup_index] + bundled[setup_index + 1 :] == original
    assert all(len(line.rstrip("\n")) <= 88 for line in bundled[setup_index]["source"])


def test_command_line_bundles_every_notebook(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    assert colab.main(["--out", str(tmp_path)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == [p.name for p in NOTEBOOKS]
    monkeypatch.chdir(tmp_path)  # no notebooks/ here
    assert colab.main([]) == 2
    assert "no notebooks given" in capsys.readouterr().err


def _fresh_venv_without_cifar_lib(folder: Path) -> Path:
    """A new virtual environment that sees this one's packages (torch, jupyter...)
    through a .pth file, but not cifar_lib: its editable install is itself a .pth
    file, and .pth files inside a directory listed by a .pth are not processed."""
    subprocess.run(
        [sys.executable, "-m", "venv", "--without-pip", str(folder)], check=True
    )
    python = folder / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    site_packages = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    this_site_packages = sysconfig.get_paths()["purelib"]
    (Path(site_packages) / "dev_packages.pth").write_text(this_site_packages + "\n")
    return python


def test_bundled_notebook_runs_alone_where_cifar_lib_is_not_installed(tmp_path):
    alone = tmp_path / "upload"
    alone.mkdir()
    copy = colab.bundle_notebook(
        ROOT / "notebooks" / "02_custom_layers.ipynb", alone / "02_custom_layers.ipynb"
    )
    assert list(alone.iterdir()) == [copy]
    python = _fresh_venv_without_cifar_lib(tmp_path / "fresh")
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env["CIFAR_LIB_QUICK"] = "1"

    def run(*args, **kwargs):
        return subprocess.run(
            [python, *args],
            cwd=alone,
            env=env,
            capture_output=True,
            text=True,
            **kwargs,
        )

    missing = run("-c", "import cifar_lib")
    assert missing.returncode != 0
    assert "No module named 'cifar_lib'" in missing.stderr
    assert run("-c", "import torch, albumentations, nbconvert").returncode == 0

    nbconvert = ["-m", "nbconvert", "--to", "notebook", "--execute"]
    executed = run(*nbconvert, "--output", "executed.ipynb", copy.name, timeout=600)
    assert executed.returncode == 0, executed.stderr[-4000:]
    cells = json.loads((alone / "executed.ipynb").read_text())["cells"]
    printed = "".join(
        "".join(output.get("text", ""))
        for cell in cells
        if cell["cell_type"] == "code"
        for output in cell["outputs"]
    )
    # The kernel ran in the fresh environment and imported the bundled zip.
    assert "cifar_lib unpacked from this notebook" in printed
    assert ".zip/cifar_lib" in printed
