import dataclasses
import json

import numpy as np
import pytest
import torch
from torch import nn

from cifar_lib import checkpoints
from cifar_lib import train as training
from cifar_lib.augment import AugmentationConfig
from cifar_lib.errors import (
    CheckpointError,
    ConfigError,
    RunFolderError,
    TrainingDivergedError,
)
from cifar_lib.train import Recipe, get_recipe, load_trained_model, resume, train


def quick(**overrides):
    values = dict(epochs=3, batch_size=32, target=1.0)
    values.update(overrides)
    return get_recipe("seed", **values)


def quiet(*_):
    pass


def fit(recipe, out, arrays=None, **options):
    """Train quietly, without progress bars."""
    return train(recipe, out=out, arrays=arrays, progress=False, log=quiet, **options)


def comparable(history):
    """History without the timings, which differ from run to run."""
    return [{k: v for k, v in row.items() if "seconds" not in k} for row in history]


def test_reference_recipe_defaults():
    recipe = get_recipe("seed")
    assert (recipe.optimizer, recipe.lr, recipe.weight_decay) == ("adam", 1e-3, 1e-4)
    assert (recipe.schedule, recipe.plateau_factor, recipe.plateau_patience) == (
        "plateau",
        0.5,
        2,
    )
    assert (recipe.min_lr, recipe.epochs, recipe.batch_size, recipe.target) == (
        1e-6,
        50,
        128,
        0.85,
    )
    assert Recipe.from_dict(recipe.to_dict()) == recipe


def test_training_learns_the_synthetic_set(tmp_path):
    from cifar_lib.data import make_synthetic_cifar

    arrays = make_synthetic_cifar(train_per_class=100, test_per_class=20, seed=1)
    result = fit(quick(epochs=4), tmp_path / "run", arrays)
    assert result.best_accuracy > 0.3  # chance is 0.1
    assert len(result.history) == 4
    for name in (
        "run.json",
        "history.json",
        "checkpoint.pt",
        "best_model.pt",
        "final_model.pt",
        "training_curves.png",
    ):
        assert (tmp_path / "run" / name).stat().st_size > 0
    saved = json.loads((tmp_path / "run" / "history.json").read_text())
    assert saved == result.history
    settings = json.loads((tmp_path / "run" / "run.json").read_text())
    assert 0 < settings["prepare_seconds"] < 60  # data, loaders, model: before epoch 1
    assert settings["recipe"] == quick(epochs=4).to_dict()  # the rest kept
    model = load_trained_model(tmp_path / "run" / "best_model.pt")
    best = max(row["test_accuracy"] for row in result.history)
    _, test_loader = training.get_data_loaders(
        batch_size=64, num_workers=0, arrays=arrays
    )
    _, accuracy = training.evaluate(model, test_loader, torch.device("cpu"))
    assert accuracy == pytest.approx(best, abs=1e-4)


@pytest.mark.parametrize("every, drawn", [(0.0, [1, 2, 3]), (1e9, [3])])
def test_curves_are_redrawn_at_most_every_so_often_and_at_the_end(
    tmp_path, synthetic, monkeypatch, every, drawn
):
    """A long GPU run of short epochs would wait for matplotlib after each one: the
    figure is redrawn only when FIGURE_EVERY_S has passed (since the last drawing,
    or since the run got ready to train: a run shorter than that draws its curves
    once, at the end), and after the last epoch always, from the whole history."""
    from cifar_lib import plots

    real, epochs_drawn = plots.training_curves, []

    def counted(history, target):
        epochs_drawn.append(len(history))
        return real(history, target)

    monkeypatch.setattr(plots, "training_curves", counted)
    monkeypatch.setattr(training, "FIGURE_EVERY_S", every)
    fit(quick(epochs=3), tmp_path, synthetic)
    assert epochs_drawn == drawn
    assert (tmp_path / "training_curves.png").stat().st_size > 0


def test_stops_once_the_target_is_reached(tmp_path, synthetic):
    result = fit(quick(epochs=5, target=0.05), tmp_path, synthetic)
    assert len(result.history) == 1
    assert "reached the target" in result.stop_reason
    assert (tmp_path / "final_model.pt").exists()


@pytest.mark.parametrize("extras", [{}, {"ema": 0.9, "whiten_stem": True}])
def test_interrupted_and_resumed_run_matches_an_uninterrupted_one(
    tmp_path, synthetic, interrupt_at_epoch, extras
):
    recipe = quick(epochs=3, **extras)
    whole = fit(recipe, tmp_path / "whole", synthetic)

    # half-way through epoch 2: the weights have moved already
    restore = interrupt_at_epoch(2, after_training=True)
    with pytest.raises(KeyboardInterrupt):
        fit(recipe, tmp_path / "cut", synthetic)
    assert len(json.loads((tmp_path / "cut" / "history.json").read_text())) == 1
    assert not (tmp_path / "cut" / "final_model.pt").exists()
    restore()

    resumed = resume(tmp_path / "cut", arrays=synthetic, progress=False, log=quiet)
    assert comparable(resumed.history) == comparable(whole.history)
    a = checkpoints.load(tmp_path / "whole" / "final_model.pt")["model"]
    b = checkpoints.load(tmp_path / "cut" / "final_model.pt")["model"]
    assert all(torch.equal(a[key], b[key]) for key in a)


def test_moving_average_is_what_is_evaluated_and_saved(tmp_path, synthetic):
    result = fit(quick(epochs=2, ema=0.9), tmp_path, synthetic)
    last = result.history[-1]
    loader = training.make_loaders(
        training.get_recipe("seed"), synthetic, None, torch.device("cpu"), 0
    )[1]
    saved = load_trained_model(tmp_path / "final_model.pt")
    # losses as well as accuracies: two epochs on this small set may leave both
    # models at chance, where accuracy could not tell them apart
    saved_loss, saved_accuracy = training.evaluate(saved, loader, torch.device("cpu"))
    assert saved_accuracy == pytest.approx(last["test_accuracy"])
    assert saved_loss == pytest.approx(last["test_loss"], rel=1e-4)
    raw = result.model.eval()
    raw_loss, raw_accuracy = training.evaluate(raw, loader, torch.device("cpu"))
    assert raw_accuracy == pytest.approx(last["raw_test_accuracy"])
    assert raw_loss != pytest.approx(last["test_loss"], rel=1e-3)
    # the average is not the last weights (nor is it far from them)
    weight = "block1.0.0.weight"
    averaged, latest = saved.state_dict()[weight], raw.state_dict()[weight]
    assert not torch.allclose(averaged, latest)
    assert (averaged - latest).norm() < 0.5 * latest.norm()


def test_flip_test_time_augmentation_averages_an_image_and_its_mirror():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 10))
    images, labels = torch.randn(12, 3, 32, 32), torch.arange(12) % 10
    loader = [(images[:8], labels[:8]), (images[8:], labels[8:])]
    with torch.no_grad():
        mirrored = (model(images) + model(images.flip(3))) / 2  # left-right mirror
        upside_down = (model(images) + model(images.flip(2))) / 2
    loss, accuracy = training.evaluate(model, loader, torch.device("cpu"), flip=True)
    assert loss == pytest.approx(nn.functional.cross_entropy(mirrored, labels).item())
    assert accuracy == (mirrored.argmax(1) == labels).sum().item() / 12
    wrong = nn.functional.cross_entropy(upside_down, labels).item()
    assert loss != pytest.approx(wrong)
    plain = training.evaluate(model, loader, torch.device("cpu"))[0]
    assert loss != pytest.approx(plain)


def test_a_test_loss_gone_bad_stops_before_the_epoch_is_saved(
    tmp_path, synthetic, monkeypatch
):
    """Weights can turn to NaN or infinity while the training loss of the epoch
    stays finite: the evaluation finds it, and the bad epoch is not saved."""
    real_evaluate, calls = training.evaluate, []

    def evaluate(*args, **kwargs):
        calls.append(1)
        loss, accuracy = real_evaluate(*args, **kwargs)
        return (float("nan"), 0.1) if len(calls) > 1 else (loss, accuracy)

    monkeypatch.setattr(training, "evaluate", evaluate)  # bad from epoch 2 on
    with pytest.raises(TrainingDivergedError, match="test loss became nan in epoch 2"):
        fit(quick(epochs=3, ema=0.0), tmp_path, synthetic)
    history = json.loads((tmp_path / "history.json").read_text())
    assert [row["epoch"] for row in history] == [1]  # the last good epoch's files
    assert checkpoints.load(tmp_path / "checkpoint.pt")["history"] == history


def test_resuming_a_finished_run_changes_nothing(tmp_path, synthetic):
    fit(quick(epochs=1), tmp_path, synthetic)
    before = (tmp_path / "final_model.pt").read_bytes()
    messages = []
    resume(tmp_path, arrays=synthetic, progress=False, log=messages.append)
    assert "already finished" in messages[0]
    assert (tmp_path / "final_model.pt").read_bytes() == before


def test_a_run_folder_is_never_overwritten_unless_asked(tmp_path, synthetic):
    fit(quick(epochs=1), tmp_path, synthetic)
    with pytest.raises(RunFolderError, match="already holds a run"):
        fit(quick(epochs=1), tmp_path, synthetic)
    (tmp_path / "notes.txt").write_text("mine")
    fit(quick(epochs=1), tmp_path, synthetic, overwrite=True)
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_resume_needs_a_run_folder(tmp_path):
    with pytest.raises(RunFolderError, match="no run to resume"):
        resume(tmp_path)


def test_nan_loss_stops_and_keeps_the_last_good_epoch(tmp_path, synthetic, monkeypatch):
    real_epoch = training.train_one_epoch

    def poisoned(model, *args, epoch, **kwargs):
        if epoch == 2:
            with torch.no_grad():
                model.fc.weight.fill_(float("nan"))
        return real_epoch(model, *args, epoch=epoch, **kwargs)

    monkeypatch.setattr(training, "train_one_epoch", poisoned)
    with pytest.raises(
        TrainingDivergedError, match="became nan in epoch 2.*epoch 1 kept"
    ):
        fit(quick(epochs=3), tmp_path, synthetic)
    state = checkpoints.load(tmp_path / "checkpoint.pt")
    assert state["epoch"] == 1
    assert all(
        torch.isfinite(v).all()
        for v in state["model"].values()
        if v.is_floating_point()
    )


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("epochs", 0, "epochs = 0 is out of range"),
        ("batch_size", -4, "batch_size = -4 is out of range"),
        ("target", 1.5, r"target = 1.5 is out of range; it must be in \(0, 1\]"),
        ("target", 0, "target = 0 is out of range"),
        ("lr", float("nan"), "lr = nan is out of range"),
        ("optimizer", "rmsprop", "unknown optimizer"),
        ("ema", 1.0, r"ema = 1.0 is out of range; it must be in \[0, 1\)"),
    ],
)
def test_recipe_values_out_of_range(field, value, message):
    with pytest.raises(ConfigError, match=message):
        dataclasses.replace(get_recipe("seed"), **{field: value}).validate()


def test_nothing_is_written_for_bad_options(tmp_path, synthetic):
    with pytest.raises(ConfigError):
        train(quick(epochs=0), out=tmp_path / "run", arrays=synthetic)
    with pytest.raises(ConfigError, match="no usable CUDA GPU|unknown device"):
        train(
            quick(),
            out=tmp_path / "run",
            arrays=synthetic,
            device="cuda" if not torch.cuda.is_available() else "tpu",
        )
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("name", ["gpu", "cuda:x", "tpu", "cpu:3"])
def test_unknown_devices_are_refused(name):
    with pytest.raises(ConfigError, match="device"):
        training.select_device(name)


def test_the_cpu_is_one_device():
    assert training.select_device("cpu:0").type == "cpu"  # its only index


def test_auto_device_prefers_cuda_then_mps_then_cpu(monkeypatch):
    for cuda, mps, expected in (
        (True, True, "cuda"),
        (False, True, "mps"),
        (False, False, "cpu"),
    ):
        monkeypatch.setattr(torch.cuda, "is_available", lambda cuda=cuda: cuda)
        monkeypatch.setattr(torch.backends.mps, "is_available", lambda mps=mps: mps)
        assert training.select_device("auto").type == expected
        assert training.select_device(None).type == expected


# --- safe loading -------------------------------------------------------------------


class RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_a_file_that_would_run_code_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "marker"
    path = tmp_path / "evil.pt"
    torch.save({"format": checkpoints.FORMAT, "model": RunsCode(marker)}, path)
    with pytest.raises(CheckpointError, match="run code"):
        checkpoints.load(path)
    assert not marker.exists()


def test_files_that_are_not_checkpoints_are_refused(tmp_path):
    plain = tmp_path / "plain.pt"
    torch.save({"weights": torch.zeros(2)}, plain)
    with pytest.raises(CheckpointError, match="not a checkpoint of this project"):
        checkpoints.load(plain)
    text = tmp_path / "text.pt"
    text.write_text("hello")
    with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint"):
        checkpoints.load(text)
    with pytest.raises(CheckpointError, match="does not exist"):
        checkpoints.load(tmp_path / "missing.pt")


def test_truncated_checkpoint_is_refused(tmp_path, synthetic):
    fit(quick(epochs=1), tmp_path, synthetic)
    data = (tmp_path / "checkpoint.pt").read_bytes()
    (tmp_path / "checkpoint.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="not a readable"):
        checkpoints.load(tmp_path / "checkpoint.pt")


def test_weights_of_another_model_are_refused(tmp_path, synthetic):
    from torch import nn

    fit(quick(epochs=1), tmp_path, synthetic)
    with pytest.raises(CheckpointError, match="do not fit this model"):
        checkpoints.load_weights(nn.Linear(2, 2), tmp_path / "best_model.pt")


def test_load_pretrained_without_shipped_weights_says_how_to_get_them(
    monkeypatch, tmp_path
):
    monkeypatch.setattr(training, "PRETRAINED_DIR", tmp_path)
    with pytest.raises(CheckpointError, match="no shipped weights for recipe 'best'"):
        training.load_pretrained("best")


def test_missing_earlier_weights_say_how_to_restore_them(monkeypatch, tmp_path):
    monkeypatch.setattr(training, "PRETRAINED_DIR", tmp_path)
    with pytest.raises(CheckpointError, match="git checkout -- pretrained/best_alone"):
        training.load_pretrained("best_alone")
    torch.save([1, 2], tmp_path / "best_alone.pt")
    refused = r"best recipe's model .*best_alone.pt\)\.$"  # nothing to train
    with pytest.raises(CheckpointError, match=refused):
        training.load_pretrained("best_alone")


def test_shipped_weights_of_another_model_are_refused_in_a_sentence(
    monkeypatch, tmp_path
):
    seed_state = torch.load(training.PRETRAINED_DIR / "seed.pt", weights_only=True)
    monkeypatch.setattr(training, "PRETRAINED_DIR", tmp_path)
    torch.save(seed_state, tmp_path / "fast.pt")  # CIFAR10Netv2's, not the fast model's
    with pytest.raises(CheckpointError, match="does not hold weights of the fast"):
        training.load_pretrained("fast")
    torch.save([1, 2], tmp_path / "best.pt")  # not a state dict at all
    with pytest.raises(CheckpointError, match="does not hold weights of the best"):
        training.load_pretrained("best")


def test_random_bytes_are_not_taken_for_code(tmp_path):
    path = tmp_path / "noise.pt"
    generator = np.random.default_rng(0)
    for _ in range(20):  # some fail as pickles, some as archives
        path.write_bytes(generator.bytes(1000))
        with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint"):
            checkpoints.load(path)


def test_a_checkpoint_of_another_model_is_refused_on_resume(tmp_path, synthetic):
    fit(quick(epochs=1, target=1.0), tmp_path, synthetic)
    settings = json.loads((tmp_path / "run.json").read_text())
    settings["recipe"]["model"] = "CIFAR10ResNet"  # run.json edited by hand
    settings["recipe"]["epochs"] = 2
    (tmp_path / "run.json").write_text(json.dumps(settings))
    with pytest.raises(CheckpointError, match="does not fit the recipe in"):
        resume(tmp_path, arrays=synthetic, progress=False, log=quiet)


def test_a_weights_file_is_not_resumed_as_a_checkpoint(tmp_path, synthetic):
    fit(quick(epochs=1), tmp_path, synthetic)
    (tmp_path / "best_model.pt").replace(tmp_path / "checkpoint.pt")
    with pytest.raises(CheckpointError, match=r"holds .*, not .*pick the right file"):
        resume(tmp_path, arrays=synthetic, progress=False, log=lambda *_: None)


def test_shipped_weights_load_into_their_model():
    shipped = sorted(training.PRETRAINED_DIR.glob("*.pt"))
    # a recipe's weights each, the best recipe's before it had a teacher
    # (train.EARLIER_WEIGHTS), and the shipped teacher (tests/test_distill.py)
    stems = ["best", "best_alone", "fast", "seed", "teacher_resnet"]
    assert [path.stem for path in shipped] == stems
    shipped = shipped[:4]
    for path in shipped:
        model = training.load_pretrained(path.stem)
        assert model(torch.zeros(1, 3, 32, 32)).shape == (1, 10)
        state = torch.load(path, map_location="cpu", weights_only=True)
        loaded = model.state_dict()
        assert list(loaded) == list(state)
        assert all(torch.equal(loaded[name], state[name]) for name in state)
    # the best recipe's weights before it had a teacher are not its weights now
    before = training.load_pretrained("best_alone").state_dict()
    now = training.load_pretrained("best").state_dict()
    assert not torch.equal(before["fc.weight"], now["fc.weight"])


def test_recipes_do_not_share_their_augmentation():
    changed = get_recipe("fast")
    changed.augmentation.hole_p = 0.9
    assert get_recipe("fast").augmentation.hole_p != 0.9


def test_alternating_flip_needs_even_odds():
    flips = AugmentationConfig(flip_p=0.3, alternate_flip=True)
    with pytest.raises(ConfigError, match="alternate_flip .* flip_p is 0.3"):
        get_recipe("fast", augmentation=flips)
    get_recipe("fast", augmentation=AugmentationConfig(alternate_flip=True))


def test_seed_out_of_range_is_refused():
    with pytest.raises(ConfigError, match="seed = -1 is out of range"):
        get_recipe("seed", seed=-1)


def test_overwrite_with_missing_data_keeps_the_old_run(tmp_path, synthetic):
    from cifar_lib.errors import DatasetError

    fit(quick(epochs=1), tmp_path, synthetic)
    before = sorted(p.name for p in tmp_path.iterdir())
    broken = tmp_path.parent / f"{tmp_path.name}-data"
    (broken / "train").mkdir(parents=True)  # no test/: refused at once
    with pytest.raises(DatasetError):
        fit(quick(epochs=1), tmp_path, data_dir=broken, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_a_corrupt_run_file_is_one_sentence(tmp_path):
    (tmp_path / "run.json").write_text("{not json")
    with pytest.raises(RunFolderError, match="is not a run file of this project"):
        resume(tmp_path)


def test_resume_reads_moved_data_from_data_dir(tmp_path, image_folder):
    import shutil

    moved = shutil.copytree(image_folder, tmp_path / "copy")
    run = tmp_path / "run"
    fit(quick(epochs=2), run, data_dir=moved, subset=40)
    state = json.loads((run / "history.json").read_text())
    (run / "checkpoint.pt").unlink()  # as if killed before the first save
    shutil.rmtree(moved)
    result = resume(run, data_dir=image_folder, progress=False, log=quiet)
    assert comparable(result.history) == comparable(state)


def test_moving_average_matches_torch_averaged_model():
    """ExponentialMovingAverage gives AveragedModel's EMA exactly, buffers and
    BatchNorm step counters included, and the same state dict keys."""
    from cifar_lib.models import CIFAR10ResNet

    torch.manual_seed(0)
    model = CIFAR10ResNet()
    swa = torch.optim.swa_utils
    theirs = swa.AveragedModel(
        model, multi_avg_fn=swa.get_ema_multi_avg_fn(0.9), use_buffers=True
    )
    ours = training.ExponentialMovingAverage(model, 0.9)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(4):
        loss = model(torch.randn(8, 3, 32, 32)).square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        theirs.update_parameters(model)
        ours.update_parameters(model)
    a, b = theirs.state_dict(), ours.state_dict()
    assert list(a) == list(b)
    assert all(torch.equal(a[key], b[key]) for key in a)
    assert int(b["n_averaged"]) == 4
    # and not merely equal to the model: the average lags behind it
    assert not torch.equal(b["module.fc.weight"], model.state_dict()["fc.weight"])


def test_moving_average_keeps_its_counter_on_the_cpu():
    """The step counter stays a CPU tensor even after .to(), so that reading it
    never waits for a GPU."""
    from cifar_lib.models import CIFAR10ResNet

    ema = training.ExponentialMovingAverage(CIFAR10ResNet(), 0.5).to(torch.float64)
    ema.update_parameters(CIFAR10ResNet().to(torch.float64))
    assert ema.n_averaged.device.type == "cpu" and int(ema.n_averaged) == 1


def test_mixed_precision_is_off_on_the_cpu():
    recipe = get_recipe("fast")
    dtype, scaler = training.mixed_precision(recipe, torch.device("cpu"))
    assert dtype is None and not scaler.is_enabled()
    off = dataclasses.replace(recipe, amp=False)
    assert training.mixed_precision(off, torch.device("cpu"))[0] is None


def test_autocast_dtype_is_applied_in_training(synthetic):
    """amp_dtype reaches the forward pass (bfloat16 autocast works on a CPU too,
    so the path the GPU takes is exercised here)."""
    recipe = get_recipe("fast", batch_size=16)
    device = torch.device("cpu")
    seen = []
    model = training.prepare_model(recipe, device, synthetic.train_images)
    model.fc.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    loader = training.make_loaders(recipe, synthetic, 64, device, 0)[0]
    optimizer = training.make_optimizer(model, recipe)
    loss, _ = training.train_one_epoch(
        model,
        loader,
        optimizer,
        torch.nn.CrossEntropyLoss(),
        device,
        progress=False,
        amp_dtype=torch.bfloat16,
    )
    assert seen and set(seen) == {torch.bfloat16}
    assert loss == loss  # finite, not NaN


def test_no_weight_decay_on_norms_and_biases():
    from cifar_lib.models import CIFAR10ResNet

    model = CIFAR10ResNet()
    recipe = get_recipe("fast", decay_norms_and_biases=False)
    decayed, free = training.make_optimizer(model, recipe).param_groups
    assert decayed["weight_decay"] == recipe.weight_decay > 0
    assert free["weight_decay"] == 0
    assert all(p.ndim == 4 or p.ndim == 2 for p in decayed["params"])
    bn = model.get_submodule("stem.1")
    assert any(p is bn.weight for p in free["params"])
    assert len(decayed["params"]) + len(free["params"]) == len(list(model.parameters()))
    (only,) = training.make_optimizer(model, get_recipe("fast")).param_groups
    assert len(only["params"]) == len(list(model.parameters()))


def test_describe_puts_every_value_in_one_column():
    lines = get_recipe("fast").describe().splitlines()[1:]
    assert any(line.split()[0] == "decay_norms_and_biases" for line in lines)
    assert len({line.index(" = ") for line in lines}) == 1
    assert lines[-1].split()[0] == "eval_batch_size"  # every field, in field order
    assert "augmentation" in {line.split()[0] for line in lines}


def test_prepare_model_fuses_norm_relu_on_the_cpu_only_when_asked():
    from cifar_lib.speed import FusedBatchNormReLU

    recipe = get_recipe("seed")
    cpu = torch.device("cpu")
    fused = training.prepare_model(recipe, cpu)
    plain = training.prepare_model(training.reference_implementation(recipe), cpu)
    assert any(isinstance(m, FusedBatchNormReLU) for m in fused.modules())
    assert not any(isinstance(m, FusedBatchNormReLU) for m in plain.modules())
    assert list(fused.state_dict()) == list(plain.state_dict())
    assert (
        recipe.what_is_trained()
        == dataclasses.replace(recipe, fuse_norm_relu=False).what_is_trained()
    )


def test_epoch_seconds_add_up_to_the_run(tmp_path, monkeypatch):
    """prepare_seconds plus the epochs' seconds is the time from the call of train
    to the last evaluation: the files saved between epochs are counted (in the
    next epoch's seconds), and the parts of the preparation add up to it."""
    import time

    from cifar_lib.data import make_synthetic_cifar

    # a pause far longer than anything else between two epochs' training (the
    # evaluation of 50 images), even on a loaded machine: 0.3 s failed under load
    pause = 2.0
    saved = training._save_epoch

    save_seconds = []

    def slow_save(*args, **kwargs):
        begun = time.perf_counter()
        time.sleep(pause)
        saved(*args, **kwargs)
        save_seconds.append(time.perf_counter() - begun)

    monkeypatch.setattr(training, "_save_epoch", slow_save)
    arrays = make_synthetic_cifar(20, 5)
    started = time.perf_counter()
    result = fit(quick(epochs=3), tmp_path / "run", arrays)
    whole = time.perf_counter() - started
    settings = json.loads((tmp_path / "run" / "run.json").read_text())
    rows = result.history
    for row in rows[1:]:  # each holds the sleep of the save before it
        assert row["seconds"] >= row["train_seconds"] + pause
    assert rows[0]["seconds"] < rows[0]["train_seconds"] + pause
    counted = settings["prepare_seconds"] + sum(row["seconds"] for row in rows)
    # the last epoch's files are saved after its evaluation
    assert whole == pytest.approx(counted + save_seconds[-1], abs=0.5)  # < pause
    parts = settings["prepare_parts"]
    assert list(parts) == [
        "checks",
        "teacher",
        "data",
        "run_folder",
        "loaders",
        "model",
        "optimizer",
        "step",
    ]
    assert sum(parts.values()) == pytest.approx(settings["prepare_seconds"], abs=0.01)
