"""The pipeline: each phase alone, the baselines end to end at 1/20, resume."""

import dataclasses
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_layers
import tfgancompress as tgc
from tfgancompress import schedules
from training import callbacks, methods, pipeline
from training.budget import Budget, BudgetError

SHAPE = (256, 256, 3)
# What a plain student must not contain: gates, super or quantizing layers.
NOT_PLAIN = (
    keras_layers.ChannelGate,
    keras_layers.SelectiveActivationConv2D,
    keras_layers.SuperConv2D,
    keras_layers.SuperConv2DTranspose,
    keras_layers.SuperSeparableConv2D,
    keras_layers.FakeQuant,
)


@pytest.fixture(scope="module")
def task():
    keras.utils.set_random_seed(0)
    teacher = tgc.models.resnet_generator(ngf=16, n_blocks=1, affine=True, name="t")
    x = np.random.default_rng(0).uniform(-1, 1, (8, 32, 32, 3)).astype("float32")
    y = teacher.predict(x, verbose=0)
    pairs = tf.data.Dataset.from_tensor_slices((x, y))
    pairs = pairs.batch(2, drop_remainder=True).repeat()
    return teacher, x, y, pairs


def _setup(teacher, **kwargs):
    kwargs.setdefault("macs_ratio", 20)
    return methods.Setup(Budget.resolve(teacher, **kwargs), ndf=8, jit_compile=False)


def _psnr(model, x, y) -> float:
    return float(np.mean(tgc.metrics.psnr(y, model.predict(x, verbose=0))))


def _not_plain(model):
    """The gate, super and quantizing layers of `model`, at any depth."""
    layers = model._flatten_layers(include_self=False, recursive=True)
    return [layer.name for layer in layers if isinstance(layer, NOT_PLAIN)]


def test_each_phase_is_a_public_call(task):
    teacher, x, y, pairs = task
    method = methods.get("distill")
    setup = _setup(teacher)
    student = method.build(teacher, setup)
    assert callbacks.gates_of(student.generator)
    assert method.search_trainer(student, teacher, setup, 10) is None

    student = method.slim(student)
    generator = student.generator
    assert not _not_plain(generator)
    assert tgc.profile(generator, SHAPE).macs <= setup.budget.macs
    for layer in generator.layers:
        if layer.name in student.kept:
            assert len(student.kept[layer.name]) == layer.output.shape[-1]
            assert set(student.kept[layer.name]) <= set(range(64))

    before = _psnr(generator, x, y)
    fits = pipeline.refit(student, teacher, x, verbose=False)
    assert [fit.name for fit in fits][-1] == "out_conv"
    refitted = _psnr(generator, x, y)
    assert refitted > before + 1.5

    trainer = method.finetune_trainer(student, teacher, setup, steps=2)
    assert trainer.generator is generator and trainer.teacher is teacher
    assert trainer.lambda_recon == 100.0 and trainer.mappers
    history = trainer.fit(pairs, epochs=1, steps_per_epoch=2, verbose=0).history
    assert int(trainer.optimizer.iterations) == 2
    assert sorted(history) == ["d_gan", "d_loss", "distill", "g_loss", "gan", "recon"]


def test_baselines_at_one_twentieth_give_plain_students(task):
    teacher, x, y, pairs = task
    colour_map = tgc.models.fit_colour_map(x, y)
    teacher_macs = tgc.profile(teacher, SHAPE).macs
    students = {}
    for name in ("distill", "uniform"):
        setup = _setup(teacher)
        result = pipeline.compress(
            methods.get(name),
            teacher,
            pairs,
            setup,
            steps=3,
            steps_per_epoch=2,
            calibration=x,
            colour_map=colour_map,
            verbose=0,
        )
        generator = result.student.generator
        assert not _not_plain(generator)
        assert result.macs == tgc.profile(generator, SHAPE).macs <= setup.budget.macs
        assert teacher_macs / result.macs >= 20
        assert result.steps == {"search": 0, "finetune": 3}
        assert len(result.histories["finetune"]["g_loss"]) == 2  # epochs 2 + 1
        assert {"build", "slim", "finetune"} <= set(result.seconds)
        students[name] = result
    distill, uniform = students["distill"], students["uniform"]
    assert distill.refit_images == 8 and uniform.refit_images is None
    # The refit's images reach the build: distill selects channels on them.
    assert distill.student.state["selection"] == "greedy"
    assert uniform.student.kept is None
    # Same widths, different weights: uniform is initialised afresh.
    widths = [layer.output.shape[-1] for layer in distill.student.generator.layers]
    assert widths == [
        layer.output.shape[-1] for layer in uniform.student.generator.layers
    ]
    kept = distill.student.kept["stem_conv"]
    stem = teacher.get_layer("stem_conv").kernel.numpy()[..., kept]
    uniform_stem = uniform.student.generator.get_layer("stem_conv").kernel
    assert not np.allclose(uniform_stem, stem)
    assert _psnr(distill.student.generator, x, y) > _psnr(
        uniform.student.generator, x, y
    )


class _Gradual(methods.Method):
    """Prunes the gated teacher by L1 during a search phase (a test method)."""

    name = "gradual_test"
    search_share = 0.5

    def build(self, teacher, setup):
        from training import budget

        keep_ratio, _ = budget.keep_ratio_for_budget(teacher, setup.budget)
        gated = tgc.pruning.add_gates(teacher, "binary")
        student = methods.Student(gated, methods.discriminator(setup))
        student.state["keep_ratio"] = keep_ratio
        return student

    def search_trainer(self, student, teacher, setup, steps):
        return methods.distillation_trainer(student, teacher, setup, steps)

    def search_callbacks(self, student, setup, steps):
        sparsity = 1.0 - student.state["keep_ratio"]
        schedule = schedules.ChannelSparsity(
            0.0, sparsity, begin_step=0, end_step=steps // 2, frequency=1
        )
        return [callbacks.UpdateCompressionStep(schedule, tgc.pruning.l1_importance)]

    def finetune_trainer(self, student, teacher, setup, steps):
        return methods.distillation_trainer(student, teacher, setup, steps)

    def finetune_callbacks(self, student, setup, steps):
        def record(logs):
            student.state.setdefault("finetuned", []).append(steps)

        return [keras.callbacks.LambdaCallback(on_train_end=record)]


def test_search_phase_checkpoints_and_resume(task, tmp_path):
    teacher, x, _, pairs = task
    setup = _setup(teacher)
    checkpoints = str(tmp_path / "run")
    arguments = {
        "steps": 4,
        "steps_per_epoch": 2,
        "calibration": lambda: x[:4],
        "checkpoint_dir": checkpoints,
        "verbose": 0,
    }
    phases = []
    result = pipeline.compress(
        _Gradual(),
        teacher,
        pairs,
        setup,
        after_phase=lambda phase, student: phases.append(phase),
        **arguments,
    )
    assert phases == ["build", "search", "slim", "refit", "finetune"]
    assert result.steps == {"search": 2, "finetune": 2}
    assert len(result.histories["search"]["g_loss"]) == 1
    assert result.macs <= setup.budget.macs and result.refit_images == 4
    assert result.student.state["finetuned"] == [2]  # the method's callbacks ran
    for name in ("searched", "refitted"):
        assert os.path.exists(os.path.join(checkpoints, name, "generator.keras"))

    again = pipeline.compress(_Gradual(), teacher, pairs, setup, **arguments)
    assert sorted(again.seconds) == ["finetune"]  # resumed from the refit
    assert again.student.state["finetuned"] == [2]
    assert again.macs == result.macs
    np.testing.assert_array_equal(
        again.student.kept["stem_conv"], result.student.kept["stem_conv"]
    )

    with pytest.raises(ValueError, match="holds checkpoints of another run"):
        pipeline.compress(
            _Gradual(), teacher, pairs, setup, **{**arguments, "steps": 6}
        )


@pytest.mark.parametrize("mode", ["paired", "unpaired"])
def test_match_phase_learns_the_teachers_outputs(task, mode):
    # Its own teacher: the fixture's is frozen by other tests' trainers, and
    # a student built from a frozen teacher has frozen layers.
    keras.utils.set_random_seed(1)
    teacher = tgc.models.resnet_generator(ngf=16, n_blocks=1, name=f"live_{mode}")
    x = task[1]
    y = teacher.predict(x, verbose=0)
    pairs = tf.data.Dataset.from_tensor_slices((x, y)).batch(2, drop_remainder=True)
    pairs = pairs.repeat()
    setup = dataclasses.replace(_setup(teacher), mode=mode)
    method = methods.get("uniform")  # fresh weights: far from the teacher
    student = method.slim(method.build(teacher, setup))
    data = pairs if mode == "paired" else pairs.map(lambda inputs, _: inputs)
    before = _psnr(student.generator, x, y)
    history = pipeline.match(
        student, teacher, setup, data, 40, learning_rate=3e-3, steps_per_epoch=20
    )
    assert len(history["loss"]) == 2 and history["loss"][1] < history["loss"][0]
    assert _psnr(student.generator, x, y) > before + 2.0
    assert getattr(student.generator, "optimizer", None) is None  # not compiled
    assert pipeline.match(student, teacher, setup, data, 0) is None


def test_match_phase_in_the_pipeline_checkpoints_and_resumes(task, tmp_path):
    teacher, x, y, pairs = task
    setup = _setup(teacher)
    arguments = {
        "steps": 2,
        "steps_per_epoch": 2,
        "calibration": x[:4],
        "match_steps": 4,
        "checkpoint_dir": str(tmp_path / "run"),
        "verbose": 0,
    }
    phases, scores = [], {}

    def score(phase, student):
        phases.append(phase)
        scores[phase] = _psnr(student.generator, x, y)

    method = methods.get("distill")
    result = pipeline.compress(
        method, teacher, pairs, setup, after_phase=score, **arguments
    )
    assert phases == ["build", "slim", "refit", "match", "finetune"]
    assert len(result.histories["match"]["loss"]) == 2
    assert scores["match"] != scores["refit"]
    matched = tmp_path / "run" / "matched" / "generator.keras"
    assert matched.exists()

    again = pipeline.compress(method, teacher, pairs, setup, **arguments)
    assert sorted(again.seconds) == ["finetune"]  # resumed after the match
    saved = keras.models.load_model(matched)
    assert _psnr(saved, x, y) == pytest.approx(scores["match"], abs=1e-3)


def test_zero_steps_ship_the_matched_student(task):
    teacher, x, y, pairs = task
    phases = []
    result = pipeline.compress(
        methods.get("distill"),
        teacher,
        pairs,
        _setup(teacher),
        steps=0,
        steps_per_epoch=2,
        calibration=x[:4],
        match_steps=2,
        after_phase=lambda phase, student: phases.append(phase),
        verbose=0,
    )
    assert phases == ["build", "slim", "refit", "match"]
    assert result.steps == {"search": 0, "finetune": 0}
    assert result.trained_steps == {"match": 2}
    assert sorted(result.histories) == ["match"]
    with pytest.raises(ValueError, match="'gan_slimming' no steps for its search"):
        pipeline.compress(
            methods.get("gan_slimming"), teacher, pairs, _setup(teacher), steps=0
        )


def test_a_detail_skip_is_refitted_around_and_paid_for_in_the_budget(task):
    teacher, x, y, pairs = task
    setup = _setup(teacher)
    scores = {}
    result = pipeline.compress(
        methods.get("distill"),
        teacher,
        pairs,
        setup,
        steps=0,
        calibration=x[:4],
        detail_skip=2.0,
        after_phase=lambda phase, s: scores.update({phase: _psnr(s.generator, x, y)}),
        verbose=0,
    )
    generator = result.student.generator
    skip = generator.get_layer("detail_skip").kernel.numpy()[0, 0]
    np.testing.assert_array_equal(skip, np.eye(3))
    assert scores["refit"] > scores["slim"] + 0.5  # 9.73 -> 10.70 dB
    assert result.macs == tgc.profile(generator, SHAPE).macs <= setup.budget.macs
    assert result.skips == {"colour_skip": False, "detail_skip": 2.0}
    assert pipeline.skip_macs(SHAPE, detail_skip=2.0) == (
        (256 + 12) * 256 * 3 * 13 + 256 * 256 * 3 * 13 + 256 * 256 * 9
    )
    assert not methods.get("gan_slimming", refit=False).detail_skip
    both = {"colour_map": (np.eye(3), np.zeros(3)), "detail_skip": 2.0}
    with pytest.raises(ValueError, match="passes the input's detail twice"):
        pipeline.compress(
            methods.get("distill"), teacher, pairs, setup, steps=0, **both
        )


def test_students_of_a_frozen_teacher_are_trainable(task):
    teacher = task[0]
    teacher.trainable = False  # as AdversarialTrainer(freeze_teacher=True) leaves it
    for name in ("distill", "uniform"):
        method = methods.get(name)
        student = method.slim(method.build(teacher, _setup(teacher)))
        generator = student.generator
        assert len(generator.trainable_variables) == len(generator.weights) > 0, name


def test_budget_errors(task):
    teacher, x, _, pairs = task
    smallest = methods.get("distill").smallest_macs(teacher, SHAPE)
    setup = _setup(teacher, macs_budget=smallest / 2e9)
    with pytest.raises(BudgetError, match="out of reach for method 'distill'"):
        pipeline.compress(methods.get("distill"), teacher, pairs, setup, steps=1)

    class Greedy(_Gradual):
        name = "greedy_test"
        search_share = 0.0

        def build(self, teacher, setup):  # ignores the budget
            gated = tgc.pruning.add_gates(teacher, "binary")
            return methods.Student(gated, methods.discriminator(setup))

    with pytest.raises(BudgetError, match="'greedy_test'.*over its budget"):
        pipeline.compress(Greedy(), teacher, pairs, _setup(teacher), steps=1)

    class Unsplit(Greedy):
        def split_steps(self, steps):
            return {"finetune": steps + 1, "search": 0}

    with pytest.raises(ValueError, match="split_steps"):
        pipeline.compress(Unsplit(), teacher, pairs, _setup(teacher), steps=1)

    class NoSearch(Greedy):
        search_share = 0.5

        def search_trainer(self, student, teacher, setup, steps):
            return None

    with pytest.raises(ValueError, match="has no search_trainer"):
        pipeline.compress(NoSearch(), teacher, pairs, _setup(teacher), steps=2)
