"""Knowledge distillation: the loss, the teacher, and training with one."""

import dataclasses
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from cifar_lib import checkpoints
from cifar_lib import train as training
from cifar_lib.cli import main
from cifar_lib.distill import DistillationLoss
from cifar_lib.errors import CheckpointError, ConfigError
from cifar_lib.train import get_recipe, load_teacher, resume, train

ROOT = Path(__file__).resolve().parent.parent


def quiet(*_):
    pass


def quick(**overrides):
    values = dict(epochs=2, batch_size=32, target=1.0)
    values.update(overrides)
    return get_recipe("seed", **values)


def fit(recipe, out, arrays):
    """Train quietly, without progress bars."""
    return train(recipe, out=out, arrays=arrays, progress=False, log=quiet)


def one_epoch_teacher(tmp_path, arrays):
    """A teacher's weights file: one epoch of the seed recipe."""
    fit(quick(epochs=1), tmp_path / "teacher", arrays)
    return tmp_path / "teacher" / "final_model.pt"


def by_hand(logits, labels, teacher, weight, temperature, smoothing=0.0):
    """The loss written out: cross-entropy with (smoothed) labels, and the
    teacher's term as sum p_t * (log p_t - log p_s) over classes."""
    classes = logits.shape[1]
    target = torch.full_like(logits, smoothing / classes)
    target[torch.arange(len(labels)), labels] += 1 - smoothing
    hard = -(target * logits.log_softmax(1)).sum(1).mean()
    p_teacher = (teacher / temperature).softmax(1)
    log_student = (logits / temperature).log_softmax(1)
    soft = (p_teacher * (p_teacher.log() - log_student)).sum(1).mean()
    return (1 - weight) * hard + weight * temperature**2 * soft


@pytest.mark.parametrize(
    "weight, temperature, smoothing",
    [(0.9, 4.0, 0.1), (0.5, 1.0, 0.0), (1.0, 2.0, 0.0)],
)
def test_loss_is_the_weighted_sum_of_both_terms(weight, temperature, smoothing):
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(16, 10, generator=generator, dtype=torch.float64)
    teacher = 3 * torch.randn(16, 10, generator=generator, dtype=torch.float64)
    labels = torch.randint(0, 10, (16,), generator=generator)
    loss = DistillationLoss(weight, temperature, smoothing)(logits, labels, teacher)
    expected = by_hand(logits, labels, teacher, weight, temperature, smoothing)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)


def test_a_student_that_agrees_with_its_teacher_pays_only_for_the_labels():
    logits = torch.randn(8, 10)
    labels = torch.randint(0, 10, (8,))
    loss = DistillationLoss(0.9, 4.0)(logits, labels, logits.clone())
    assert loss.item() == pytest.approx(0.1 * F.cross_entropy(logits, labels).item())
    assert DistillationLoss(1.0, 4.0)(logits, labels, logits).abs().item() < 1e-6


def test_the_teacher_term_pulls_the_student_towards_the_teacher():
    logits = torch.zeros(4, 10, requires_grad=True)
    teacher = torch.zeros(4, 10)
    teacher[:, 3] = 5.0  # the teacher is sure it is class 3; the labels say 0
    DistillationLoss(1.0, 4.0)(
        logits, torch.zeros(4, dtype=torch.long), teacher
    ).backward()
    assert (logits.grad[:, 3] < 0).all()  # descending raises class 3's logit
    assert (logits.grad[:, 0] > 0).all()


def test_low_precision_logits_are_computed_in_float32():
    logits = torch.randn(8, 10)
    labels = torch.randint(0, 10, (8,))
    teacher = torch.randn(8, 10)
    loss = DistillationLoss(0.9, 4.0)
    low = loss(logits.bfloat16(), labels, teacher.bfloat16())
    assert low.dtype == torch.float32
    high = loss(logits.bfloat16().float(), labels, teacher.bfloat16().float())
    assert low.item() == pytest.approx(high.item(), rel=1e-6)


@pytest.mark.parametrize(
    "field, value, message",
    [
        (
            "distill_weight",
            0.0,
            r"distill_weight = 0.0 is out of range; it must be in \(0, 1\]",
        ),
        ("distill_weight", 1.5, "distill_weight = 1.5 is out of range"),
        ("distill_temperature", 0.0, "distill_temperature = 0.0 is out of range"),
        (
            "distill_temperature",
            float("inf"),
            "distill_temperature = inf is out of range",
        ),
    ],
)
def test_distillation_values_out_of_range(field, value, message):
    with pytest.raises(ConfigError, match=message):
        dataclasses.replace(get_recipe("seed"), **{field: value}).validate()


def test_shipped_weights_teach_frozen_and_in_evaluation_mode():
    teacher = load_teacher(get_recipe("fast", teacher="best"), torch.device("cpu"))
    assert type(teacher).__name__ == get_recipe("best").model
    assert not teacher.training
    assert not any(p.requires_grad for p in teacher.parameters())
    assert load_teacher(get_recipe("fast"), torch.device("cpu")) is None
    # the best recipe's weights from before it had a teacher teach as well
    cpu = torch.device("cpu")
    earlier = load_teacher(get_recipe("fast", teacher="best_alone"), cpu)
    assert type(earlier).__name__ == get_recipe("best").model
    # and the best recipe itself is taught by the shipped teacher
    assert get_recipe("best").teacher == training.SHIPPED_TEACHER


def test_a_teacher_file_is_kept_with_its_whole_path(tmp_path, synthetic, monkeypatch):
    """A relative path in run.json would not be found by --resume from another
    folder."""
    source = one_epoch_teacher(tmp_path, synthetic)
    monkeypatch.chdir(tmp_path)
    fit(quick(epochs=1, teacher="teacher/final_model.pt"), tmp_path / "run", synthetic)
    settings = json.loads((tmp_path / "run" / "run.json").read_text())
    assert settings["recipe"]["teacher"] == str(source.resolve())


def test_an_unknown_teacher_is_one_sentence_and_writes_nothing(tmp_path, synthetic):
    recipe = quick(teacher=str(tmp_path / "missing.pt"))
    with pytest.raises(ConfigError, match="is neither a recipe with shipped weights"):
        fit(recipe, tmp_path / "run", synthetic)
    assert not (tmp_path / "run").exists()


def test_the_shipped_teacher_is_the_recorded_run_and_teaches(tmp_path, synthetic):
    """pretrained/teacher_resnet.pt holds the final weights of the run recorded in
    results/ablations/h100_teacher_resnet_150_epochs.json, in half precision; a
    recipe names it by name, and run.json keeps the name (not a path)."""
    from cifar_lib.train import PRETRAINED_DIR, SHIPPED_TEACHER, Recipe

    path = PRETRAINED_DIR / f"{SHIPPED_TEACHER}.pt"
    payload = checkpoints.load(path, kind=checkpoints.WEIGHTS)
    record = json.loads(
        (ROOT / "results/ablations/h100_teacher_resnet_150_epochs.json").read_text()
    )
    shipped, recorded = (
        Recipe.from_dict(settings).what_is_trained()
        for settings in (payload["recipe"], record["recipe_settings"])
    )
    assert shipped == recorded and shipped["model"] == "CIFAR10TeacherResNet"
    assert payload["epoch"] == len(record["history"]) == 150
    assert payload["test_accuracy"] == record["history"][-1]["test_accuracy"]
    state = payload["model"]
    assert state["fc.weight"].dtype == torch.float16
    assert all(
        state[name].dtype == torch.float32 for name in state if "running_" in name
    )
    teacher = load_teacher(
        get_recipe("best", teacher=SHIPPED_TEACHER), torch.device("cpu")
    )
    assert type(teacher).__name__ == "CIFAR10TeacherResNet"
    assert next(teacher.parameters()).dtype == torch.float32  # cast back on loading
    assert not teacher.training and not any(
        p.requires_grad for p in teacher.parameters()
    )
    fit(quick(epochs=1, teacher=SHIPPED_TEACHER), tmp_path / "run", synthetic)
    settings = json.loads((tmp_path / "run" / "run.json").read_text())
    assert settings["recipe"]["teacher"] == SHIPPED_TEACHER


def test_the_shipped_teacher_is_not_a_recipe():
    with pytest.raises(ConfigError, match="the shipped teacher, not a recipe"):
        training.load_pretrained("teacher_resnet")


def test_a_missing_shipped_teacher_says_how_to_restore_it(monkeypatch, tmp_path):
    monkeypatch.setattr(training, "PRETRAINED_DIR", tmp_path)
    with pytest.raises(CheckpointError, match="git checkout -- pretrained/teacher_"):
        load_teacher(quick(teacher="teacher_resnet"), torch.device("cpu"))


def test_a_teacher_is_shipped_in_half_precision_within_tolerance(
    tmp_path, synthetic, load_script, capsys
):
    source = one_epoch_teacher(tmp_path, synthetic)
    ship = load_script("ship_teacher")
    out = tmp_path / "shipped.pt"
    assert ship.main([str(source), "--out", str(out)]) == 0
    before = checkpoints.load(source)
    after = checkpoints.load(out, kind=checkpoints.WEIGHTS)
    assert {k: v for k, v in after.items() if k != "model"} == {
        k: v for k, v in before.items() if k != "model"
    }
    for name, tensor in after["model"].items():
        original = before["model"][name]
        if "running_" in name or not original.is_floating_point():
            assert torch.equal(tensor, original)  # kept as they were
        else:
            assert tensor.dtype == torch.float16
            assert torch.equal(tensor, original.half())
    assert out.stat().st_size < 0.6 * source.stat().st_size
    assert "largest logit change" in capsys.readouterr().out
    # a change beyond the tolerance writes nothing
    refused = tmp_path / "refused.pt"
    assert ship.main([str(source), "--out", str(refused), "--tolerance", "0"]) == 1
    assert "not written" in capsys.readouterr().err
    assert not refused.exists() and not list(tmp_path.glob("*.candidate"))
    # a file that is not weights: one sentence, nothing left behind
    state = source.with_name("checkpoint.pt")
    assert ship.main([str(state), "--out", str(tmp_path / "x.pt")]) == 2
    assert "training state" in capsys.readouterr().err
    assert not list(tmp_path.glob("x.pt*"))


def test_a_training_state_is_refused_as_a_teacher(tmp_path, synthetic, capsys):
    """checkpoint.pt holds the raw weights, not the average that a run with one
    evaluated: teaching with them would silently teach another network (refused
    for every recipe, with or without an average)."""
    one_epoch_teacher(tmp_path, synthetic)
    state = tmp_path / "teacher" / "checkpoint.pt"
    with pytest.raises(CheckpointError, match="training state, kept for --resume"):
        load_teacher(quick(teacher=str(state)), torch.device("cpu"))
    with pytest.raises(CheckpointError, match="give the run's best_model.pt"):
        training.load_trained_model(state)
    with pytest.raises(CheckpointError, match="training state, kept for --resume"):
        checkpoints.load_weights(training.build_model("CIFAR10Netv2"), state)
    code = main(
        ["train", "--recipe", "seed", "--teacher", str(state), "--subset", "64"]
        + ["--data-dir", str(tmp_path / "nowhere"), "--out", str(tmp_path / "run")]
    )
    err = capsys.readouterr().err
    assert code != 0 and "training state" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "weight, temperature, message",
    [
        (0.0, 4.0, r"weight must be in \(0, 1\], not 0.0"),
        (1.5, 4.0, r"weight must be in \(0, 1\], not 1.5"),
        (0.9, 0.0, "temperature must be above 0, not 0.0"),
        (0.9, float("nan"), "temperature must be above 0, not nan"),
    ],
)
def test_the_loss_refuses_values_out_of_range(weight, temperature, message):
    with pytest.raises(ValueError, match=message):
        DistillationLoss(weight, temperature)


def test_training_with_a_teacher_changes_the_student_not_the_teacher(
    tmp_path, synthetic
):
    source = one_epoch_teacher(tmp_path, synthetic)
    before = checkpoints.load(source)["model"]
    recipe = quick(teacher=str(source), distill_weight=0.5, distill_temperature=2.0)
    taught = fit(recipe, tmp_path / "taught", synthetic)
    alone = fit(quick(), tmp_path / "alone", synthetic)
    after = checkpoints.load(source)["model"]
    assert all(torch.equal(before[k], after[k]) for k in before)
    a = checkpoints.load(tmp_path / "taught" / "final_model.pt")["model"]
    b = checkpoints.load(tmp_path / "alone" / "final_model.pt")["model"]
    assert any(not torch.equal(a[k], b[k]) for k in a if a[k].is_floating_point())
    assert len(taught.history) == len(alone.history) == 2
    settings = json.loads((tmp_path / "taught" / "run.json").read_text())
    assert settings["recipe"]["teacher"] == str(source)
    assert settings["recipe"]["distill_weight"] == 0.5


def test_one_step_with_a_teacher_adds_the_distillation_loss(synthetic):
    recipe = quick(teacher="unused", distill_weight=0.7, distill_temperature=3.0)
    device = torch.device("cpu")
    torch.manual_seed(0)
    student = training.prepare_model(recipe, device)
    teacher = training.prepare_model(recipe, device).eval()
    optimizer = training.make_optimizer(student, recipe)
    step = training.make_train_step(recipe, student, optimizer, device, teacher=teacher)
    images = torch.randn(8, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, 10, (8,))
    student.train()
    torch.manual_seed(1)  # the dropout masks of the step
    with torch.no_grad():
        expected_teacher = teacher(images)
    torch.manual_seed(1)
    expected_student = student(images).detach()
    torch.manual_seed(1)
    step(images, labels)
    expected = by_hand(
        expected_student.double(), labels, expected_teacher.double(), 0.7, 3.0
    )
    assert step.loss_sum.item() / 8 == pytest.approx(expected.item(), rel=1e-4)
    with pytest.raises(ConfigError, match="pass its teacher"):
        training.make_train_step(recipe, student, optimizer, device)


def test_a_distilled_run_resumes_with_its_teacher(
    tmp_path, synthetic, interrupt_at_epoch
):
    recipe = quick(epochs=2, teacher=str(one_epoch_teacher(tmp_path, synthetic)))
    whole = fit(recipe, tmp_path / "whole", synthetic)
    restore = interrupt_at_epoch(2)
    with pytest.raises(KeyboardInterrupt):
        fit(recipe, tmp_path / "cut", synthetic)
    restore()
    resumed = resume(tmp_path / "cut", arrays=synthetic, progress=False, log=quiet)
    strip = lambda h: [{k: v for k, v in r.items() if "seconds" not in k} for r in h]  # noqa: E731
    assert strip(resumed.history) == strip(whole.history)


def test_a_run_is_resumed_only_with_the_teacher_it_was_taught_by(
    tmp_path, synthetic, interrupt_at_epoch
):
    """run.json keeps a digest of the teacher's weights: a shipped name (or a file)
    that holds other weights since is refused on --resume, not silently taught by."""
    from cifar_lib.errors import RunFolderError

    source = one_epoch_teacher(tmp_path, synthetic)
    recipe = quick(epochs=2, teacher=str(source))
    restore = interrupt_at_epoch(2)
    with pytest.raises(KeyboardInterrupt):
        fit(recipe, tmp_path / "cut", synthetic)
    restore()
    settings = json.loads((tmp_path / "cut" / "run.json").read_text())
    assert len(settings["teacher_weights"]) == 16
    other = tmp_path / "other"  # another teacher's weights in the same file
    fit(quick(epochs=1, seed=1), other, synthetic)
    (other / "final_model.pt").replace(source)
    with pytest.raises(RunFolderError, match="is not the network .* was taught by"):
        resume(tmp_path / "cut", arrays=synthetic, progress=False, log=quiet)


def test_command_line_distillation_options(tmp_path, capsys, image_folder, monkeypatch):
    out = tmp_path / "run"
    base = ["train", "--data-dir", image_folder, "--out", str(out)]
    assert main([*base, "--distill-weight", "0.5"]) == 2
    err = capsys.readouterr().err
    assert "the seed recipe has no teacher: give --teacher" in err
    # the best recipe has one (teacher_resnet), unless --teacher '' takes it away
    best = [*base, "--recipe", "best", "--distill-weight", "0.5"]
    assert main([*best, "--teacher", ""]) == 2
    assert "--teacher '' trains without one: drop them" in capsys.readouterr().err
    assert not out.exists()
    assert main([*base, "--teacher", str(tmp_path / "nothing.pt")]) == 2
    err = capsys.readouterr().err
    assert "is neither a recipe with shipped weights" in err and "Traceback" not in err
    assert not out.exists()
    with pytest.raises(SystemExit):
        main([*base, "--teacher", "best", "--distill-weight", "0"])
    assert "0.0 is out of range" in capsys.readouterr().err
    assert main(["train", "--resume", str(tmp_path), "--teacher", "best"]) == 2
    assert "--teacher cannot change a run being resumed" in capsys.readouterr().err
    trained = []  # accepted: the recipe's own teacher, with the weight given
    monkeypatch.setattr(training, "train", lambda recipe, **_: trained.append(recipe))
    assert main(best) == 0
    assert (trained[0].teacher, trained[0].distill_weight) == ("teacher_resnet", 0.5)


def test_a_model_outside_the_rules_is_noted_when_it_trains(tmp_path, synthetic):
    messages = []
    recipe = quick(epochs=1, model="CIFAR10TeacherResNet", dropout=0.0)
    train(
        recipe,
        out=tmp_path / "t",
        arrays=synthetic,
        progress=False,
        log=messages.append,
    )
    assert any(
        "CIFAR10TeacherResNet is outside the assignment's rules" in m for m in messages
    )
    messages.clear()
    train(
        quick(epochs=1),
        out=tmp_path / "u",
        arrays=synthetic,
        progress=False,
        log=messages.append,
    )
    assert not any("outside the assignment's rules" in m for m in messages)
    messages.clear()  # a model within the rules taught by one outside them
    train(
        quick(epochs=1, teacher="teacher_resnet"),
        out=tmp_path / "v",
        arrays=synthetic,
        progress=False,
        log=messages.append,
    )
    noted = [m for m in messages if "outside the assignment's rules" in m]
    assert (
        len(noted) == 1 and "the teacher, CIFAR10TeacherResNet (3,390,458" in noted[0]
    )
