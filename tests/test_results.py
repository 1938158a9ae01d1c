from pathlib import Path

from cifar_lib.results import (
    ROOT,
    recipe_changes,
    recorded_runs,
    results_markdown,
    runs_of_recipe,
    updated_readme,
)


def test_readme_results_block_is_made_from_results_folder():
    readme = (ROOT / "README.md").read_text()
    assert updated_readme(readme) == readme, (
        "README.md's results block is stale: run python -m cifar_lib.results"
    )


def test_shipped_results_are_those_of_the_shipped_recipes():
    """A recipe changed after its run was recorded would make results/ describe
    a recipe that no longer exists. Only what is trained counts (not the layout
    or precision of the arithmetic); a field added since the run was recorded
    must hold the value that the run trained with, the default."""
    import json

    from cifar_lib.train import RECIPES, Recipe

    recorded = sorted((ROOT / "results").glob("*.json"))
    recorded = [p for p in recorded if p.stem in RECIPES]
    assert recorded, "no recipe results in results/"
    for path in recorded:
        settings = Recipe.from_dict(json.loads(path.read_text())["recipe_settings"])
        shipped = RECIPES[path.stem].what_is_trained()
        assert settings.what_is_trained() == shipped, f"{path.name} is stale"


def test_runs_of_the_fast_recipe_are_found_and_counted(tmp_path: Path):
    import json

    from cifar_lib.train import get_recipe

    def write(name, recipe, accuracies):
        history = [
            {"epoch": e, "test_accuracy": a, "seconds": 1.0}
            for e, a in enumerate(accuracies, 1)
        ]
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        run = {"recipe_settings": recipe.to_dict(), "history": history}
        run.update(best_accuracy=max(accuracies), data="toy", hardware="here")
        reached = [e for e, a in enumerate(accuracies, 1) if a >= 0.85]
        run.update(recipe="fast", epochs_to_85=reached[0] if reached else None)
        run.update(best_accuracy_flip_tta=max(accuracies), date="today", variant=name)
        path.write_text(json.dumps(run))

    write("fast.json", get_recipe("fast"), [0.5, 0.851])
    write("ablations/a.json", get_recipe("fast", seed=3), [0.86, 0.84])
    write("ablations/b.json", get_recipe("fast", seed=1, amp=True), [0.5, 0.84])
    write("ablations/c.json", get_recipe("fast", lr=0.1), [0.9, 0.9])  # not it
    runs = runs_of_recipe("fast", tmp_path)
    assert [(r["file"], r["seed"]) for r in runs] == [
        ("fast.json", 0),
        ("ablations/b.json", 1),
        ("ablations/a.json", 3),
    ]
    assert [r["epochs_to_target"] for r in runs] == [2, None, 1]
    table = results_markdown(tmp_path)
    assert "within 8 epochs in **2 of 3** runs (1 of them after the last" in table
    assert (
        "mean 85.03%" in table
        and "| ablations/b.json | 1 | 84.00% | 84.00% | not in 2 |" in table
    )
    # the best recipe trains all its epochs (target 1.0): counted against its 92%
    write("best.json", get_recipe("best"), [0.9, 0.921, 0.919])
    write("ablations/d.json", get_recipe("best", seed=1), [0.9, 0.919])
    best = runs_of_recipe("best", tmp_path)
    assert [r["epochs_to_target"] for r in best] == [2, None]
    assert "92% reached within 183 epochs in **1 of 2** runs (0 of them" in (
        results_markdown(tmp_path)
    )


def test_recipe_changes_name_what_was_trained_differently():
    from dataclasses import replace

    from cifar_lib.train import get_recipe

    assert recipe_changes(get_recipe("fast", seed=4, amp=True).to_dict()) == []
    changed = get_recipe("fast", lr=0.1, model="CIFAR10ResNet")
    assert recipe_changes(changed.to_dict()) == ["model CIFAR10ResNet", "lr 0.1"]
    fast = get_recipe("fast")
    flips = replace(fast, augmentation=replace(fast.augmentation, shift=0.0))
    assert recipe_changes(flips.to_dict()) == ["shift 0.0"]
    assert recipe_changes(get_recipe("seed", epochs=3).to_dict()) == ["epochs 3"]
    before = replace(fast, batch_size=32, lr=0.05)  # against another recipe
    assert recipe_changes(fast.to_dict(), before) == ["lr 0.2", "batch_size 128"]
    assert recipe_changes(before.to_dict(), before) == []
    alone = get_recipe("best", teacher="")  # the best recipe has a teacher
    assert recipe_changes(alone.to_dict()) == ["no teacher"]


def test_changed_runs_are_recorded_runs_with_their_changes(tmp_path: Path):
    import json

    from cifar_lib.train import get_recipe

    for name, recipe in [
        ("fast.json", get_recipe("fast")),
        ("ablations/x.json", get_recipe("fast", seed=2, batch_size=64)),
        ("ablations/y.json", get_recipe("seed", seed=2)),
    ]:
        path = tmp_path / name
        path.parent.mkdir(exist_ok=True)
        history = [{"epoch": 1, "test_accuracy": 0.8, "seconds": 1.0}]
        run = {"recipe_settings": recipe.to_dict(), "history": history}
        run.update(best_accuracy=0.8, data="toy", hardware="here", variant=path.stem)
        run.update(recipe="fast", epochs_to_85=None, best_accuracy_flip_tta=0.8)
        path.write_text(json.dumps(run | {"date": "today"}))
    runs = recorded_runs("fast", tmp_path)
    assert [(r["file"], r["changes"]) for r in runs] == [
        ("fast.json", []),
        ("ablations/x.json", ["batch_size 64"]),
    ]
    assert [r["file"] for r in runs_of_recipe("fast", tmp_path)] == ["fast.json"]
    at_64 = get_recipe("fast", batch_size=64)
    runs = recorded_runs("fast", tmp_path, against=at_64)
    assert [(r["file"], r["changes"]) for r in runs] == [
        ("fast.json", ["batch_size 128"]),
        ("ablations/x.json", []),
    ]
    table = results_markdown(tmp_path)
    assert "| x | fast | batch_size 64 | 2 | 1 | 80.00% |" in table
    assert "| y | seed | nothing | 2 | 1 | 80.00% |" in table


def test_results_markdown_without_files(tmp_path: Path):
    assert results_markdown(tmp_path) == "No measured results yet."


def test_record_run_writes_results_and_loadable_weights(tmp_path, image_folder):
    import json

    import torch

    from cifar_lib.models import build_model
    from cifar_lib.results import record_run
    from cifar_lib.train import get_recipe, train

    run = tmp_path / "run"
    recipe = get_recipe("seed", epochs=2, batch_size=32, target=1.0)
    train(recipe, out=run, data_dir=image_folder, progress=False, log=lambda *_: None)
    result = record_run(run, tmp_path / "results", tmp_path / "pretrained", data="toy")
    saved = json.loads((tmp_path / "results" / "seed.json").read_text())
    assert saved["best_accuracy"] == result["best_accuracy"]
    best = max(row["test_accuracy"] for row in saved["history"])
    assert abs(saved["best_accuracy"] - best) < 1e-4
    assert 0 <= saved["best_accuracy_flip_tta"] <= 1
    assert saved["parameters"] == 181_942 and len(saved["history"]) == 2
    settings = json.loads((run / "run.json").read_text())
    assert saved["prepare_seconds"] == settings["prepare_seconds"] > 0
    assert saved["prepare_parts"] == settings["prepare_parts"]
    state = torch.load(tmp_path / "pretrained" / "seed.pt", weights_only=True)
    build_model("CIFAR10Netv2").load_state_dict(state)
    table = results_markdown(tmp_path / "results")
    assert "| seed |" in table and "toy" in table


def test_hardware_names_the_cpu_threads(monkeypatch):
    import torch

    from cifar_lib.results import hardware

    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    assert hardware("cpu").endswith(", 1 thread, no GPU")
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    assert hardware("cpu").endswith(", 2 threads, no GPU")


def test_shipped_prefers_the_folder_beside_the_package(tmp_path, monkeypatch):
    from cifar_lib import results as results_module

    package_root, notebooks = tmp_path / "root", tmp_path / "clone" / "notebooks"
    (tmp_path / "clone" / "results").mkdir(parents=True)
    notebooks.mkdir()
    monkeypatch.setattr(results_module, "ROOT", package_root)
    monkeypatch.chdir(notebooks)
    # installed elsewhere: the clone's folder, seen from its notebooks/ folder
    assert results_module.shipped("results") == Path("../results")
    (package_root / "results").mkdir(parents=True)
    assert results_module.shipped("results") == package_root / "results"
    # neither: the one beside the package, so that an error names it
    assert results_module.shipped("pretrained") == package_root / "pretrained"


def test_check_reports_a_stale_readme_without_writing(tmp_path, monkeypatch, capsys):
    from cifar_lib import results as results_module

    fresh = updated_readme((ROOT / "README.md").read_text())
    (tmp_path / "README.md").write_text(fresh)
    monkeypatch.setattr(results_module, "ROOT", tmp_path)
    assert results_module.main(["--check"]) == 0
    assert capsys.readouterr().out == "up to date\n"
    stale = fresh.replace("**Training runs.**", "**Training runs (old).**")
    assert stale != fresh
    (tmp_path / "README.md").write_text(stale)
    assert results_module.main(["--check"]) == 1
    assert "stale" in capsys.readouterr().out
    assert (tmp_path / "README.md").read_text() == stale  # --check writes nothing
    assert results_module.main([]) == 0
    assert (tmp_path / "README.md").read_text() == fresh


def test_an_unfinished_run_is_not_recorded(tmp_path, synthetic, interrupt_at_epoch):
    import pytest

    from cifar_lib import train as training
    from cifar_lib.results import record_run

    interrupt_at_epoch(2)
    recipe = training.get_recipe("seed", epochs=2, batch_size=32, target=1.0)
    with pytest.raises(KeyboardInterrupt):
        training.train(
            recipe, out=tmp_path / "run", arrays=synthetic, progress=False, log=print
        )
    with pytest.raises(ValueError, match="has not finished; resume it first"):
        record_run(tmp_path / "run", tmp_path / "results", tmp_path / "pretrained")
    assert not (tmp_path / "results").exists()
