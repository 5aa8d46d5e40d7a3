"""The `dmad` method: search trainer, freeze at budget, co-attention fine-tuning."""

from __future__ import annotations

import dataclasses
import json
import pathlib
import re

import keras
import matplotlib.image
import numpy as np
import pytest
import tensorflow as tf
from tiny_tasks import TRAINING, VIEWS, write_photos

import keras_layers
import tfgancompress as tgc
from training import losses, methods, pipeline, tasks, train
from training.budget import Budget
from training.methods import dmad

SHAPE = (256, 256, 3)
ROOT = pathlib.Path(__file__).resolve().parents[1]


def _readme_block(section: str) -> str:
    """The one python block of the README section titled `section`."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    parts = re.split(r"^## ", readme, flags=re.MULTILINE)
    (text,) = [part for part in parts if part.startswith(section + "\n")]
    (block,) = re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)
    return block


@pytest.fixture(scope="module")
def task():
    keras.utils.set_random_seed(0)
    teacher = tgc.models.resnet_generator(ngf=8, n_blocks=2, name="teacher")
    x = np.random.default_rng(0).uniform(-1, 1, (8, 32, 32, 3)).astype("float32")
    y = teacher.predict(x, verbose=0)
    pairs = tf.data.Dataset.from_tensor_slices((x, y))
    return teacher, x, y, pairs.batch(2, drop_remainder=True).repeat()


def _setup(teacher, jit_compile=False, **budget):
    budget.setdefault("macs_ratio", 20)
    return methods.Setup(
        Budget.resolve(teacher, **budget), ndf=8, jit_compile=jit_compile
    )


def _eager(get):
    """`methods.get` whose trainers run eagerly (tracing a step costs more
    than the example's few steps)."""

    def eager_get(*args, **kwargs):
        method = get(*args, **kwargs)
        for phase in ("search_trainer", "finetune_trainer"):
            make = getattr(method, phase)

            def eager(*trainer_args, make=make, **trainer_kwargs):
                trainer = make(*trainer_args, **trainer_kwargs)
                trainer.run_eagerly = True
                return trainer

            setattr(method, phase, eager)
        return method

    return eager_get


def _close(generator, fraction, seed=0):
    """Closes about `fraction` of every mask's channels (w below the band)."""
    rng = np.random.default_rng(seed)
    for gate in tgc.masks.dmad_gates(generator).values():
        weight = gate.weight.numpy()
        closed = rng.uniform(size=gate.channels) < fraction
        closed[0] = False
        gate.weight.assign(np.where(closed, -1.5, weight).astype(np.float32))


def _weights(generator):
    gates = tgc.masks.dmad_gates(generator)
    return {name: gate.weight.numpy().copy() for name, gate in gates.items()}


def test_mask_groups_of_a_resnet():
    generator = tgc.masks.add_masks(tgc.models.resnet_generator(ngf=4, n_blocks=2))
    groups = dmad.mask_groups(generator)
    assert groups["residual"] == [
        ("down2_norm_gate", "block1_norm2_gate", "block2_norm2_gate")
    ]
    assert groups["binarised"] == ["up1_norm_gate", "up2_norm_gate"]
    assert groups["prunable"] == [
        "stem_norm_gate",
        "down1_norm_gate",
        "block1_norm1_gate",
        "block2_norm1_gate",
    ]


def test_search_losses_and_mask_step_scale(task):
    teacher, _, _, _ = task
    method = methods.get("dmad", "lambda_sparsity=0.01")
    setup = _setup(teacher)
    student = method.build(teacher, setup)
    trainer = method.search_trainer(student, teacher, setup, 10)
    before = _weights(student.generator)
    terms = trainer.mask_losses()
    # The sparsity term: plain on prunable masks, group-weighted on residual.
    groups = dmad.mask_groups(student.generator)
    expected = sum(
        float(losses.mask_sparsity_loss(before[n], 1.0)) for n in groups["prunable"]
    )
    for names in groups["residual"]:
        coefficients = losses.group_sparsity_coefficients(
            np.stack([before[n] for n in names]), 1.0
        )
        expected += sum(
            float(losses.mask_sparsity_loss(before[n], 1.0, coefficients))
            for n in names
        )
    np.testing.assert_allclose(float(terms["sparsity"]), 0.01 * expected, rtol=1e-5)
    binarise = sum(
        float(losses.mask_binarising_loss(before[n], 1.0)) for n in groups["binarised"]
    )
    np.testing.assert_allclose(float(terms["binarise"]), 0.01 * 100 * binarise)
    # after_step scales what the optimizer did to the mask weights.
    step = trainer.prepare_step(*next(iter(task[3])))
    gates = tgc.masks.dmad_gates(student.generator)
    for gate in gates.values():
        gate.weight.assign(gate.weight.numpy() + 0.01)
    trainer.mask_step_scale.assign(3.0)
    trainer.after_step(step)
    for name, gate in gates.items():
        np.testing.assert_allclose(gate.weight.numpy(), before[name] + 0.03, atol=1e-6)
    end = method.band_schedule(10).end_step
    scale = dmad.mask_travel_scale(4.0, setup, 10, end)
    rates = [0.5 * 2e-4 * (1 + np.cos(np.pi * t / 10)) for t in range(end)]
    np.testing.assert_allclose(scale * sum(rates), 4.0)


def test_masks_freeze_when_the_budget_is_met(task):
    teacher, x, _, pairs = task
    method = methods.get("dmad")
    setup = _setup(teacher)
    student = method.build(teacher, setup)
    generator = student.generator
    _close(generator, 0.8)
    opened = tgc.masks.open_macs(generator, SHAPE)
    assert opened < tgc.profile(teacher, SHAPE).macs
    trainer = method.search_trainer(student, teacher, setup, 8)
    trainer.run_eagerly = True  # cheaper than tracing for 4 steps
    schedule = dmad.DmadSchedule(
        tgc.schedules.BandSchedule(0, 6), opened, SHAPE, min_open=1
    )
    trainer.fit(pairs, epochs=1, steps_per_epoch=1, callbacks=[schedule], verbose=0)
    assert schedule.frozen_at == 0
    assert [r["event"] for r in schedule.history] == ["check", "frozen"]
    frozen = _weights(generator)
    for weight in frozen.values():
        assert set(np.unique(weight)) <= {-1.0, 1.0}
    trainer.fit(pairs, epochs=1, steps_per_epoch=3, callbacks=[schedule], verbose=0)
    for name, weight in _weights(generator).items():
        np.testing.assert_array_equal(weight, frozen[name])
    for gate in tgc.masks.dmad_gates(generator).values():
        assert float(gate.bound.numpy()) == 0.0
    assert tgc.cost.gate_macs(generator, SHAPE) <= opened
    np.testing.assert_allclose(
        generator(x, training=True), generator(x, training=False), atol=1e-6
    )


def test_finetune_distils_co_attention_with_an_online_teacher_d(task):
    teacher, _, _, pairs = task
    method = methods.get("dmad")
    setup = _setup(teacher)
    student = method.slim(method.build(teacher, setup))
    assert tgc.profile(student.generator, SHAPE).macs <= setup.budget.macs
    trainer = method.finetune_trainer(student, teacher, setup, 4)
    teacher_d = student.state["teacher_discriminator"]
    d_before = [w.numpy().copy() for w in teacher_d.weights]
    g_before = [w.numpy().copy() for w in teacher.weights]
    history = trainer.fit(pairs, epochs=1, steps_per_epoch=2, verbose=0).history
    assert {"attention", "teacher_d", "teacher_d_gan", "recon", "gan"} <= set(history)
    assert "distill" not in history
    assert all(np.isfinite(v[-1]) for v in history.values())
    changed = [
        not np.array_equal(w.numpy(), b)
        for w, b in zip(teacher_d.weights, d_before, strict=True)
    ]
    assert any(changed)
    for w, b in zip(teacher.weights, g_before, strict=True):
        np.testing.assert_array_equal(w.numpy(), b)


def test_search_share_splits_the_steps():
    assert methods.get("dmad").split_steps(100) == {"search": 50, "finetune": 50}
    assert methods.get("dmad").split_steps(300) == {"search": 150, "finetune": 150}
    quarter = methods.get("dmad", "search_share=0.25")
    assert quarter.split_steps(100) == {"search": 25, "finetune": 75}
    assert methods.get("dmad", "search_share=0.01").split_steps(10) == {
        "search": 1,
        "finetune": 9,
    }
    for share in ("0", "1"):
        with pytest.raises(ValueError, match="search_share"):
            methods.get("dmad", f"search_share={share}")


def test_final_cut_option_chooses_how_slim_meets_the_budget(task):
    teacher = task[0]
    setup = _setup(teacher)
    widths = {}
    for cut in tgc.masks.CUTS:
        method = methods.get("dmad", f"final_cut={cut}")
        assert method.options.final_cut == cut
        student = method.slim(method.build(teacher, setup))
        assert tgc.profile(student.generator, SHAPE).macs <= setup.budget.macs
        widths[cut] = [
            layer.filters
            for layer in student.generator.layers
            if isinstance(layer, keras.layers.Conv2D | keras.layers.Conv2DTranspose)
        ]
    assert widths["cost"] != widths["threshold"]
    with pytest.raises(ValueError, match="final_cut"):
        methods.get("dmad", "final_cut=uniform")


def test_pipeline_gives_a_plain_student_within_budget(task):
    teacher, x, _, pairs = task
    method = _eager(methods.get)("dmad", "mask_travel=2")
    setup = _setup(teacher)
    result = pipeline.compress(
        method,
        teacher,
        pairs,
        setup,
        steps=12,
        steps_per_epoch=6,
        calibration=x,
        verbose=0,
    )
    generator = result.student.generator
    assert result.macs <= setup.budget.macs
    assert not [
        layer
        for layer in generator._flatten_layers(include_self=False)
        if isinstance(layer, keras_layers.ChannelGate)
    ]
    # The budget is not reached while the band closes (checks at every
    # step of the 6-step search, closed at step 4), so the lowest masks
    # close at the end.
    trajectory = result.student.state["trajectory"]
    checks = [r for r in trajectory if r["event"] == "check"]
    assert [r["step"] for r in checks] == [0, 1, 2, 3, 4]
    assert checks[0]["bound"] == 1.0 > checks[2]["bound"] > checks[4]["bound"] > 0
    assert all(r["open_macs"] > setup.budget.macs for r in checks)
    assert trajectory[-1]["event"] == "frozen" and trajectory[-1]["bound"] == 0.0
    assert trajectory[0]["open_channels"] > trajectory[-1]["open_channels"]


def test_readme_model_fit_example(task, tmp_path, monkeypatch):
    teacher, x, _, pairs = task
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(methods, "get", _eager(methods.get))
    namespace = {"teacher": teacher, "pairs": pairs, "views": x, "steps": 4}
    block = _readme_block("DMAD: differentiable masks and co-attention distillation")
    exec(compile(block, "README.md", "exec"), namespace)
    generator, setup = namespace["generator"], namespace["setup"]
    assert namespace["split"] == {"search": 2, "finetune": 2}
    assert not [
        layer
        for layer in generator._flatten_layers(include_self=False)
        if isinstance(layer, keras_layers.ChannelGate)
    ]
    macs = tgc.profile(generator, SHAPE).macs
    assert macs <= setup.budget.macs
    assert tgc.profile(teacher, SHAPE).macs / macs >= 20
    history = namespace["trainer"].history.history
    assert {"attention", "teacher_d", "teacher_d_gan"} <= set(history)
    assert (tmp_path / "masks.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    trajectory = namespace["student"].state["trajectory"]
    assert trajectory[-1]["event"] == "frozen"
    assert trajectory[-1]["open_macs"] <= setup.budget.macs


class _Interrupt(keras.callbacks.Callback):
    """Kills `fit` (an exception) when the trainer reaches `step`."""

    def __init__(self, step):
        super().__init__()
        self.step = step

    def on_train_batch_begin(self, batch, logs=None):
        if int(self.model.g_optimizer.iterations.numpy()) == self.step:
            raise RuntimeError("interrupted")


def _search(teacher, pairs, setup, backup_dir, callbacks=()):
    """A 4-step DMAD search of 2-step epochs, backed up in `backup_dir`."""
    method = _eager(methods.get)("dmad", "mask_travel=2")
    student = method.build(teacher, setup)
    pipeline.search(
        method,
        student,
        teacher,
        setup,
        pairs,
        4,
        steps_per_epoch=2,
        callbacks=callbacks,
        backup_dir=backup_dir,
        verbose=0,
    )
    return student


def test_mask_trajectory_resumes_and_is_written_as_json_and_png(task, tmp_path):
    teacher, _, _, pairs = task
    setup = dataclasses.replace(
        _setup(teacher),
        work_dir=str(tmp_path / "method"),
        report_dir=str(tmp_path / "report"),
    )
    backup = str(tmp_path / "backup")
    # Killed at the check of step 2, after the backup of the first epoch
    # (steps 0-1): the trajectory on disk runs to step 2.
    with pytest.raises(RuntimeError, match="interrupted"):
        _search(teacher, pairs, setup, backup, [_Interrupt(2)])
    saved = json.loads((tmp_path / "method" / "mask_trajectory.json").read_text())
    assert [r["step"] for r in saved["history"]] == [0, 1, 2]
    assert not (tmp_path / "report").exists()
    # Resumed at step 2: step 2 is recorded again, once; the band closes at
    # step 3 (75% of 4), and the masks freeze at the end.
    student = _search(teacher, pairs, setup, backup)
    trajectory = student.state["trajectory"]
    assert [r["step"] for r in trajectory] == [0, 1, 2, 3, 4]
    assert [r["event"] for r in trajectory] == ["check"] * 4 + ["frozen"]
    assert trajectory[:2] == saved["history"][:2]
    # The last record is the frozen masks as they are.
    generator = student.generator
    opened = tgc.masks.open_channels(generator)
    last = trajectory[-1]
    assert last["open_by_mask"] == {n: int(o.sum()) for n, o in opened.items()}
    assert last["open_channels"] == sum(int(o.sum()) for o in opened.values())
    assert last["open_macs"] == tgc.cost.gate_macs(generator, SHAPE)
    assert last["open_macs"] <= setup.budget.macs
    residual = dmad.mask_groups(generator)["residual"][0]
    stream = np.logical_or.reduce([opened[n] for n in residual])
    assert last["live_by_group"]["residual stream"] == int(stream.sum())
    assert last["live_by_group"]["block1_conv1"] == int(
        opened["block1_norm1_gate"].sum()
    )
    assert len(last["live_by_group"]) == 7  # the stream + 6 masks of its own
    assert trajectory[0]["open_channels"] > last["open_channels"]
    report = json.loads((tmp_path / "report" / "mask_trajectory.json").read_text())
    assert report["budget_macs"] == setup.budget.macs
    assert report["history"] == json.loads(json.dumps(trajectory))
    image = matplotlib.image.imread(tmp_path / "report" / "mask_trajectory.png")
    assert image.ndim == 3 and image.shape[0] > 400 and image.shape[1] > 400
    assert image[..., :3].std() > 0.05  # not blank


def test_two_identical_runs_train_identical_weights(tmp_path):
    """The search and the fine-tuning read the task's shuffled stream with
    iterators of their own: the same settings, the same student, to the
    bit."""
    keras.utils.set_random_seed(0)
    teacher = tgc.models.resnet_generator(ngf=8, n_blocks=1, affine=True)
    write_photos(tmp_path / "photos", 8)
    task = tasks.photo_task(
        teacher, "tiny", tmp_path / "photos", views=VIEWS, cache_dir=tmp_path / "c"
    )
    config = train.settings({**TRAINING, "steps": 4, "match_steps": 0})
    config["macs_ratio"] = 8
    budget = train.budget_for(task, config)
    runs = [
        train.compress(_eager(methods.get)("dmad"), task, config, budget)[0]
        for _ in range(2)
    ]
    assert runs[0].steps == runs[1].steps == {"search": 2, "finetune": 2}
    first, second = (r.student.generator.get_weights() for r in runs)
    assert len(first) == len(second) > 0
    for a, b in zip(first, second, strict=True):
        np.testing.assert_array_equal(a, b)
