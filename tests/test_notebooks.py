"""The notebooks as files: committed clean, and runnable from Colab's one-file copy.

(The notebooks themselves are run, cell by cell, by ``pytest --nbval-lax``.)
"""

from __future__ import annotations

import base64
import io
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


@pytest.mark.parametrize(
    "name", ["02_custom_layers.ipynb", "06_beyond_85.ipynb"]
)  # 06 reads results/ and loads shipped weights, which the copy must carry
def test_bundled_notebook_runs_alone_where_cifar_lib_is_not_installed(
    tmp_path, name, outer_data
):
    alone = tmp_path / "upload"
    alone.mkdir()
    copy = colab.bundle_notebook(ROOT / "notebooks" / name, alone / name)
    assert list(alone.iterdir()) == [copy]
    python = _fresh_venv_without_cifar_lib(tmp_path / "fresh")
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env["CIFAR_LIB_QUICK"] = "1"
    if name.startswith("06"):  # it evaluates the shipped weights on CIFAR-10
        if outer_data["CIFAR_LIB_DATA_DIR"] is None:
            pytest.skip("needs CIFAR-10: set CIFAR_LIB_DATA_DIR, as .ci/run does")
        env.pop("CIFAR_LIB_CACHE_DIR")  # the decoded copy the notebooks use
        env.update({key: value for key, value in outer_data.items() if value})
    env["TMPDIR"] = str(tmp_path / "tmp")  # where the copy unpacks itself
    (tmp_path / "tmp").mkdir()

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
    # The kernel ran in the fresh environment and imported the unpacked bundle.
    assert "cifar_lib unpacked from this notebook" in printed
    unpacked = next((tmp_path / "tmp").glob("cifar_lib-*"))
    assert f"cifar_lib from {unpacked / 'cifar_lib'}" in printed
    assert "installing" not in printed  # torchinfo and albumentations 2.x are here


def test_bundle_carries_the_results_and_weights_a_notebook_reads(tmp_path):
    import zipfile

    def carried(name):
        text = json.loads(
            colab.bundle_notebook(
                ROOT / "notebooks" / name, tmp_path / name
            ).read_text()
        )
        cell = next(c for c in text["cells"] if c.get("id") == colab.BUNDLE_CELL_ID)
        payload = "".join(cell["source"]).split('BUNDLE = """')[1].split('"""')[0]
        archive = zipfile.ZipFile(io.BytesIO(base64.b64decode(payload)))
        return set(archive.namelist())

    files_06 = carried("06_beyond_85.ipynb")
    shipped = {f"pretrained/{r}.pt" for r in ("seed", "fast", "best", "best_alone")}
    assert shipped <= files_06 and "results/fast.json" in files_06
    assert "cifar_lib/colab.py" in files_06
    assert "results/ablations/fast_seed4.json" in files_06
    files_05 = carried("05_training.ipynb")
    assert {"pretrained/seed.pt", "results/seed.json"} <= files_05
    assert "pretrained/fast.pt" not in files_05
    files_02 = carried("02_custom_layers.ipynb")  # reads neither
    assert all(name.startswith("cifar_lib/") for name in files_02)


def test_data_files_names_the_weights_a_notebook_loads(tmp_path):
    (tmp_path / "results" / "sub").mkdir(parents=True)
    (tmp_path / "results" / "a.json").write_text("{}")
    (tmp_path / "results" / "sub" / "b.json").write_text("{}")
    (tmp_path / "results" / "sub" / "run.log").write_text("")
    text = 'x = load_pretrained("seed", device=d)\nread("../results/a.json")'
    assert colab.data_files(text, tmp_path) == [
        Path("results/a.json"),
        Path("results/sub/b.json"),
        Path("results/sub/run.log"),
        Path("pretrained/seed.pt"),
    ]
    assert colab.data_files("nothing read here", tmp_path) == []
