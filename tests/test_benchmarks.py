"""The benchmark scripts (benchmarks/*_cost.py). The activation benchmark's tanh
variant is the fast recipe's model with the approximation in every place of a ReLU;
a short run of each writes ratios of the rates it measured; bad input is refused."""

import json
import sys

import pytest
import torch
from torch import nn

from cifar_lib import models
from cifar_lib.models import CIFAR10ResNet, CIFAR10ResNetGELU
from cifar_lib.results import ROOT


def _activations(model):
    return [type(m).__name__ + getattr(m, "approximate", "") for m in model.modules()]


def test_tanh_variant_replaces_every_relu_with_the_approximation(load_script):
    torch.manual_seed(0)
    tanh = load_script("activation_cost").CIFAR10ResNetGELUTanh()
    torch.manual_seed(0)
    exact = CIFAR10ResNetGELU()
    relus = _activations(CIFAR10ResNet()).count("ReLU")
    assert relus > 0
    assert _activations(tanh).count("GELUtanh") == relus
    assert not any(isinstance(m, nn.ReLU) for m in tanh.modules())
    assert _activations(exact).count("GELUnone") == relus
    # the same weights and random start as the exact model
    assert all(
        torch.equal(a, b)
        for a, b in zip(
            tanh.state_dict().values(), exact.state_dict().values(), strict=True
        )
    )


def test_short_run_writes_ratios_of_its_own_rates(tmp_path, monkeypatch, load_script):
    out = tmp_path / "activations.json"
    argv = ["activation_cost.py", "--out", str(out), "--rounds", "1", "--steps", "2"]
    monkeypatch.setattr(sys, "argv", argv)
    # main() adds its variant to the registry: taken out again after the test
    monkeypatch.setitem(models.MODELS, "CIFAR10ResNetGELUTanh", None)
    load_script("activation_cost").main()
    report = json.loads(out.read_text())
    rows = {row["activation"]: row for row in report["variants"]}
    assert list(rows) == [
        "ReLU",
        "GELU (exact, erf)",
        "GELU (tanh approximation)",
        "SiLU",
    ]
    relu = rows["ReLU"]
    assert relu["train_time_vs_relu"] == relu["model_time_vs_relu"] == 1.0
    for row in rows.values():
        assert len(row["train_each_round"]) == len(row["model_each_round"]) == 1
        assert row["train_images_per_s"] > 0
        ratio = relu["train_images_per_s"] / row["train_images_per_s"]
        assert row["train_time_vs_relu"] == pytest.approx(ratio, abs=2e-3)
    assert report["rounds"] == 1 and report["steps"] == 2 and report["commit"]


def test_refuses_zero_rounds(tmp_path, monkeypatch, capsys, load_script):
    argv = ["activation_cost.py", "--out", str(tmp_path / "x.json"), "--rounds", "0"]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit) as stop:
        load_script("activation_cost").main()
    assert stop.value.code == 2
    assert "give 1 or more" in capsys.readouterr().err
    assert not (tmp_path / "x.json").exists()


def _model_cost(monkeypatch, load_script):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))  # it imports activation_cost
    return load_script("model_cost")


def test_model_cost_writes_times_against_the_first_model(
    tmp_path, monkeypatch, load_script
):
    out = tmp_path / "models.json"
    argv = ["--out", str(out), "--rounds", "1", "--steps", "2"]
    _model_cost(monkeypatch, load_script).main(
        [*argv, "CIFAR10ResNet", "CIFAR10ResNetGELU"]
    )
    report = json.loads(out.read_text())
    rows = {row["model"]: row for row in report["models"]}
    assert list(rows) == ["CIFAR10ResNet", "CIFAR10ResNetGELU"]
    first = rows["CIFAR10ResNet"]
    assert first["train_time_vs_first"] == first["model_time_vs_first"] == 1.0
    other = rows["CIFAR10ResNetGELU"]
    ratio = first["train_images_per_s"] / other["train_images_per_s"]
    assert other["train_time_vs_first"] == pytest.approx(ratio, abs=2e-3)
    assert report["rounds"] == 1 and len(other["model_each_round"]) == 1


def test_model_cost_compares_batch_sizes_per_image(tmp_path, monkeypatch, load_script):
    out = tmp_path / "batches.json"
    argv = ["--out", str(out), "--rounds", "1", "--steps", "2"]
    _model_cost(monkeypatch, load_script).main(
        [*argv, "--batch-sizes", "32,64", "CIFAR10ResNetGELU"]
    )
    rows = json.loads(out.read_text())["models"]
    assert [(r["model"], r["batch_size"]) for r in rows] == [
        ("CIFAR10ResNetGELU", 32),
        ("CIFAR10ResNetGELU", 64),
    ]
    ratio = rows[0]["train_images_per_s"] / rows[1]["train_images_per_s"]
    assert rows[1]["train_time_vs_first"] == pytest.approx(ratio, abs=2e-3)
    assert rows[0]["train_time_vs_first"] == 1.0


@pytest.mark.parametrize(
    "args, message",
    [
        (["--batch-sizes", "32,64", "A", "B"], "with --batch-sizes give one model"),
        (["--batch-sizes", "32,64", "NoSuchNet"], "with --batch-sizes give one model"),
        (["--batch-sizes", "32", "CIFAR10ResNet"], "two or more different sizes"),
        (["--batch-sizes", "32,32", "CIFAR10ResNet"], "two or more different"),
        (["--batch-sizes", "0,32", "CIFAR10ResNet"], "of 1 or more"),
        (["--batch-sizes", "32,x", "CIFAR10ResNet"], "not a list of whole numbers"),
    ],
)
def test_model_cost_refuses_bad_batch_sizes(
    args, message, tmp_path, monkeypatch, capsys, load_script
):
    with pytest.raises(SystemExit) as stop:
        _model_cost(monkeypatch, load_script).main(
            ["--out", str(tmp_path / "x.json"), *args]
        )
    assert stop.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "x.json").exists()


@pytest.mark.parametrize(
    "models", [["CIFAR10ResNet"], ["CIFAR10ResNet", "NoSuchNet"], ["A", "A"]]
)
def test_model_cost_refuses_fewer_than_two_known_models(
    models, tmp_path, monkeypatch, capsys, load_script
):
    with pytest.raises(SystemExit) as stop:
        _model_cost(monkeypatch, load_script).main(
            ["--out", str(tmp_path / "x.json"), *models]
        )
    assert stop.value.code == 2
    assert "give two or more different models" in capsys.readouterr().err
    assert not (tmp_path / "x.json").exists()


def test_malloc_cost_measures_both_settings_in_fresh_processes(tmp_path, load_script):
    """One short round of each setting, each in its own process: the summary's
    ratio is the two rates it measured, and each round counts its page faults and
    kernel time. (Whether the kept memory faults less is tests/test_speed.py's.)"""
    out = tmp_path / "malloc.json"
    load_script("malloc_cost").main(
        ["--out", str(out), "--rounds", "1", "--steps", "1", "fast"]
    )
    report = json.loads(out.read_text())
    (row,) = report["recipes"]
    assert row["recipe"] == "fast" and report["steps"] == {"fast": 1}
    kept, default = row["kept"], row["default"]
    ratio = kept["train_images_per_s"] / default["train_images_per_s"]
    assert row["default_time_vs_kept"] == pytest.approx(ratio, abs=1e-3)
    assert row["default_time_vs_kept_per_round"] == [pytest.approx(ratio, abs=1e-3)]
    for setting in ("kept", "default"):
        (measured,) = row["rounds"][setting]
        assert measured == row[setting]  # one round: the median is that round
        assert measured["page_faults"] > 0 and measured["user_seconds"] > 0


@pytest.mark.parametrize(
    "args, message",
    [
        (["nosuch"], "recipes: choose from"),
        (["fast", "fast"], "name each recipe once"),
        (["--rounds", "0", "fast"], "give 1 or more"),
    ],
)
def test_malloc_cost_refuses_bad_input(args, message, tmp_path, capsys, load_script):
    with pytest.raises(SystemExit) as stop:
        load_script("malloc_cost").main(["--out", str(tmp_path / "x.json"), *args])
    assert stop.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "x.json").exists()


def test_a_run_is_recovered_from_what_train_printed(tmp_path, synthetic, load_script):
    """ablation.py --from-log: the recipe and the history that `train` printed come
    back as they were, to the precision printed."""
    import dataclasses

    from cifar_lib.augment import AugmentationConfig
    from cifar_lib.train import get_recipe, train

    recipe = get_recipe("fast", epochs=2, batch_size=64, target=1.0)
    recipe = dataclasses.replace(
        recipe, augmentation=AugmentationConfig(scale=0.1, hole_p=0.5), amp=True
    )
    plain = dataclasses.replace(recipe)
    # a distilled run's recipe too (the teacher an empty string in the others)
    recipe = dataclasses.replace(recipe, teacher="best", distill_weight=0.5)
    printed = ["[0s] install the missing packages"]
    result = train(
        recipe, tmp_path, arrays=synthetic, progress=False, log=printed.append
    )
    printed += ["[30s] done"]
    settings, history = load_script("ablation").run_from_log("\n".join(printed))
    assert settings == recipe.to_dict()
    # without a teacher its line is 'teacher =' with nothing after it
    assert "  teacher " in plain.describe()
    assert load_script("ablation").run_from_log(plain.describe())[0] == plain.to_dict()
    assert len(history) == 2
    for parsed, row in zip(history, result.history, strict=True):
        assert parsed.keys() == row.keys() - {"train_seconds"}
        for key in ("train_loss", "test_loss"):
            assert parsed[key] == pytest.approx(row[key], abs=5e-5)
        for key in ("train_accuracy", "test_accuracy", "raw_test_accuracy"):
            assert parsed[key] == pytest.approx(row[key], abs=5e-5)
        assert parsed["lr"] == pytest.approx(row["lr"], rel=1e-2)
        # printed to 0.1 s from a value kept to 0.01 s: 0.75 prints as 0.8
        assert parsed["seconds"] == pytest.approx(row["seconds"], abs=0.05 + 1e-9)
        assert parsed["epoch"] == row["epoch"]


def test_a_run_folder_is_recorded_with_its_time_to_get_ready(
    tmp_path, synthetic, image_folder, load_script, monkeypatch
):
    """ablation.py --from-run keeps the history, the machine and the seconds the
    run took to get ready to train, with their parts (the GPU target counts them)."""
    import sys

    from cifar_lib.train import get_recipe, train

    recipe = get_recipe("fast", epochs=1, batch_size=64, target=1.0)
    train(recipe, tmp_path / "run", arrays=synthetic, progress=False, log=lambda _: 0)
    settings = json.loads((tmp_path / "run" / "run.json").read_text())
    assert settings["prepare_seconds"] >= 0
    ablation = load_script("ablation")
    monkeypatch.setattr(ablation, "ROOT", tmp_path)
    argv = ["ablation.py", "--data-dir", image_folder, "--data", "synthetic images"]
    argv += ["--from-run", str(tmp_path / "run"), "tiny"]
    monkeypatch.setattr(sys, "argv", argv)
    ablation.main()
    recorded = json.loads((tmp_path / "results/ablations/tiny.json").read_text())
    assert recorded["prepare_seconds"] == settings["prepare_seconds"]
    assert recorded["prepare_parts"] == settings["prepare_parts"]
    assert set(recorded["prepare_parts"]) >= {"data", "model", "optimizer"}
    assert recorded["history"] == json.loads(
        (tmp_path / "run" / "history.json").read_text()
    )
    assert recorded["data"] == "synthetic images" and recorded["runs"] == 1


def test_teacher_cost_times_both_variants_in_turn(tmp_path, image_folder, load_script):
    """benchmarks/teacher_cost.py: one round trains the fast recipe alone and taught
    by the shipped teacher, each in its own process, and records both."""
    cost = load_script("teacher_cost")
    out = tmp_path / "teacher.json"
    argv = ["--data-dir", image_folder, "--subset", "64", "--rounds", "1"]
    assert cost.main([*argv, "--out", str(out)]) == 0
    saved = json.loads(out.read_text())
    alone, taught = saved["train_seconds"].values()
    assert len(alone) == len(taught) == 1 and min(alone + taught) > 0
    assert saved["ratios"] == [round(taught[0] / alone[0], 2)]
    assert "teacher_resnet" in saved["what"] and saved["hardware"]


def test_teacher_cost_of_the_best_recipe(tmp_path, load_script, monkeypatch):
    """--recipe best: the best recipe alone (--teacher '', for it has a teacher) and
    taught, into results/bench_cpu_teacher_best.json unless --out says otherwise."""
    cost = load_script("teacher_cost")
    calls = []

    def fake(recipe, data_dir, subset, extra, out):
        calls.append((recipe, extra))
        return 2.0 if extra[1] else 1.0

    monkeypatch.setattr(cost, "train_seconds", fake)
    monkeypatch.setattr(cost, "load_cifar10", lambda _: None)
    monkeypatch.setattr(cost, "describe_data", lambda _: "toy")
    monkeypatch.setattr(cost, "ROOT", tmp_path)
    (tmp_path / "results").mkdir()
    assert cost.main(["--data-dir", "x", "--recipe", "best", "--rounds", "1"]) == 0
    assert calls == [
        ("best", ["--teacher", ""]),
        ("best", ["--teacher", "teacher_resnet"]),
    ]
    saved = json.loads((tmp_path / "results/bench_cpu_teacher_best.json").read_text())
    assert saved["ratios"] == [2.0] and "of the best recipe" in saved["what"]
