"""GCC: selective-activation discriminator, global threshold, losses, method."""

from __future__ import annotations

import dataclasses

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_layers
import tfgancompress as tgc
from tests.gate_patterns import images
from training import budget, losses, methods, pipeline
from training.callbacks import gates_of
from training.methods import gcc

RNG = np.random.default_rng(13)


# Selective activation ------------------------------------------------------


def test_straight_through_gradient_reaches_alpha():
    layer = keras_layers.SelectiveActivationConv2D(4, 3, padding="same", norm=None)
    x = images((2, 8, 8, 3))
    layer.build(x.shape)
    np.testing.assert_array_equal(layer.gate.alpha.numpy(), np.ones(4))
    layer.gate.alpha.assign([1.0, 0.7, 0.3, 0.0])
    upstream = RNG.normal(size=(2, 8, 8, 4)).astype("float32")
    with tf.GradientTape() as tape:
        y = layer(x, training=True)
        loss = tf.reduce_sum(y * upstream)
    grad = tape.gradient(loss, layer.gate.alpha).numpy()
    pre_gate = layer.conv(x).numpy()
    # Forward: hard mask; backward: d loss / d alpha = sum(upstream * pre-gate),
    # for closed channels too (they can reopen).
    np.testing.assert_array_equal(y.numpy()[..., 2:], 0.0)
    np.testing.assert_allclose(y.numpy()[..., :2], pre_gate[..., :2], atol=1e-6)
    expected = (upstream * pre_gate).sum((0, 1, 2))
    np.testing.assert_allclose(grad, expected, rtol=1e-4, atol=1e-4)
    assert np.all(np.abs(grad) > 0)


def test_optimizer_keeps_alpha_in_unit_interval():
    layer = keras_layers.SelectiveActivationConv2D(3, 1, norm=None)
    layer.build((None, 4, 4, 2))
    layer.gate.alpha.assign([0.05, 0.5, 0.95])
    optimizer = keras.optimizers.SGD(1.0)
    optimizer.apply_gradients([(tf.constant([1.0, 0.0, -1.0]), layer.gate.alpha)])
    np.testing.assert_allclose(layer.gate.alpha.numpy(), [0.0, 0.5, 1.0])


def test_patchgan_takes_a_gate_mode():
    for gated, mode in ((True, "binary"), ("binary", "binary"), ("dmad", "dmad")):
        model = tgc.models.patchgan_discriminator(ndf=4, gated=gated)
        gates = tgc.surgery.gate_layers(model)
        assert list(gates) == [f"layer{i}_conv_gate" for i in (1, 2, 3, 4)]
        assert {gate.mode for gate in gates.values()} == {mode}
    for plain in (False, None):
        model = tgc.models.patchgan_discriminator(ndf=4, gated=plain)
        assert not tgc.surgery.gate_layers(model)
    with pytest.raises(ValueError, match="gated must be one of"):
        tgc.models.patchgan_discriminator(ndf=4, gated="hard")


@pytest.mark.parametrize("norm", ["instance", "batch"])
def test_slim_of_gated_discriminator_equals_it(norm):
    model = tgc.models.patchgan_discriminator(
        ndf=8, norm=norm, conditional=True, gated="binary"
    )
    for layer in model.layers:
        norm = getattr(layer, "norm", None)
        if isinstance(norm, keras.layers.BatchNormalization):
            channels = norm.gamma.shape[0]
            norm.moving_mean.assign(RNG.normal(0, 0.3, channels))
            norm.moving_variance.assign(RNG.uniform(0.5, 2.0, channels))
            norm.gamma.assign(RNG.uniform(0.5, 1.5, channels))
            norm.beta.assign(RNG.normal(0, 0.3, channels))
    masks = {}
    for name, gate in tgc.surgery.gate_layers(model).items():
        alpha = RNG.uniform(0.0, 1.0, gate.channels).astype("float32")
        if name == "layer3_conv_gate":  # a layer with a single live channel
            alpha = np.eye(gate.channels, dtype="float32")[1]
        gate.alpha.assign(alpha)
        masks[name] = alpha >= 0.5
    small = tgc.slim(model)
    assert not tgc.surgery.gate_layers(small)
    x = images((2, 64, 64, 6))
    np.testing.assert_allclose(
        small(x, training=False), model(x, training=False), atol=1e-5
    )
    kept = [c.kept for c in tgc.live_channels(model)]
    assert kept == [int(m.sum()) for m in masks.values()] + [1]
    shape = (64, 64, 6)
    assert tgc.profile(small, shape).macs == tgc.cost.gate_macs(model, shape)
    assert tgc.profile(small, shape).macs < tgc.profile(model, shape).macs


# Global threshold ------------------------------------------------------------


def _scale_gated_resnet():
    plain = tgc.models.resnet_generator(ngf=16, n_blocks=3, affine=True)
    gated = tgc.pruning.add_gates(plain, "scale")
    for gate in tgc.surgery.gate_layers(gated).values():
        gate.gamma.assign(RNG.uniform(-1.0, 1.0, gate.channels).astype("float32"))
        gate.beta.assign(RNG.normal(0.0, 0.3, gate.channels).astype("float32"))
    return gated


def test_scale_importance_shares_residual_groups():
    gated = _scale_gated_resnet()
    importance = tgc.pruning.scale_importance(gated)
    gates = tgc.surgery.gate_layers(gated)
    stream = ("down2_norm_gate", *(f"block{i}_norm2_gate" for i in (1, 2, 3)))
    mean = np.mean([np.abs(gates[name].gamma.numpy()) for name in stream], axis=0)
    for name in stream:
        np.testing.assert_allclose(importance[name], mean, rtol=1e-6)
    np.testing.assert_allclose(
        importance["stem_norm_gate"], np.abs(gates["stem_norm_gate"].gamma.numpy())
    )
    binary = tgc.models.resnet_generator(ngf=4, n_blocks=1, gated="binary")
    with pytest.raises(ValueError, match="are not"):
        tgc.pruning.scale_importance(binary)


@pytest.mark.parametrize("fraction", [0.4, 0.15])
def test_threshold_search_lands_within_one_percent(fraction):
    gated = _scale_gated_resnet()
    importance = tgc.pruning.scale_importance(gated)
    shape = (64, 64, 3)
    full = tgc.profile(gated, shape).macs
    budget = int(full * fraction)
    result = tgc.pruning.prune_to_budget(gated, importance, budget, shape)
    small = tgc.slim(gated)
    macs = tgc.profile(small, shape).macs
    assert macs == result.macs
    assert 0.99 * budget <= macs <= budget
    gates = tgc.surgery.gate_layers(gated)
    for name, gate in gates.items():
        keep = gate.keep_mask()
        expected = importance[name] >= result.threshold
        if expected.any():
            np.testing.assert_array_equal(keep, expected)
        assert keep.sum() == result.kept[name] >= 1
        dropped = ~keep
        np.testing.assert_array_equal(gate.gamma.numpy()[dropped], 0.0)
        np.testing.assert_array_equal(gate.beta.numpy()[dropped], 0.0)
    stream = [gates[f"block{i}_norm2_gate"].keep_mask() for i in (1, 2, 3)]
    for mask in stream:
        np.testing.assert_array_equal(mask, gates["down2_norm_gate"].keep_mask())


def test_restore_weights_keeps_the_decisions():
    gated = _scale_gated_resnet()
    original = gated.get_weights()
    for variable in gated.trainable_variables:  # a pre-training moves them all
        variable.assign(variable + 0.1)
    importance = tgc.pruning.scale_importance(gated)
    tgc.pruning.prune_to_budget(gated, importance, 10**8, (64, 64, 3))
    gates = tgc.surgery.gate_layers(gated)
    masks = {name: gate.keep_mask() for name, gate in gates.items()}
    assert 0 < np.mean(np.concatenate(list(masks.values()))) < 1
    tgc.pruning.restore_weights(gated, original)
    position = {id(v): i for i, v in enumerate(gated.weights)}
    stem = gated.get_layer("stem_conv").kernel
    np.testing.assert_array_equal(stem.numpy(), original[position[id(stem)]])
    for name, gate in gates.items():
        keep = masks[name]
        np.testing.assert_array_equal(gate.keep_mask(), keep)
        np.testing.assert_array_equal(gate.beta.numpy()[~keep], 0.0)
        before = original[position[id(gate.gamma)]]
        np.testing.assert_array_equal(gate.gamma.numpy()[keep], before[keep])


def test_threshold_search_errors():
    gated = _scale_gated_resnet()
    importance = tgc.pruning.scale_importance(gated)
    with pytest.raises(ValueError, match="out of reach"):
        tgc.pruning.prune_to_budget(gated, importance, 1000, (64, 64, 3))
    del importance["stem_norm_gate"]
    with pytest.raises(ValueError, match="missing.*stem_norm_gate"):
        tgc.pruning.prune_to_budget(gated, importance, 10**9, (64, 64, 3))


# Losses ----------------------------------------------------------------------


def test_adversarial_balance_and_gate_loss():
    d = np.array([[0.2, 0.6], [1.5, -0.3]], "float32")
    expected = {
        "lsgan": abs(np.mean((d - 1) ** 2) - np.mean(d**2)),
        "hinge": abs(-np.mean(d) - np.mean(np.maximum(1 + d, 0))),
        "vanilla": abs(np.mean(np.log1p(np.exp(-d))) - np.mean(np.log1p(np.exp(d)))),
    }
    for name, value in expected.items():
        got = float(losses.adversarial_balance(name, d))
        np.testing.assert_allclose(got, value, rtol=1e-5)
    real = np.array([0.9, 0.4], "float32")
    terms = losses.selective_activation_loss("lsgan", real, d, 0.1)
    np.testing.assert_allclose(
        float(terms["coordination"]), abs(expected["lsgan"] - 0.1), rtol=1e-5
    )
    np.testing.assert_allclose(
        float(terms["capacity"]),
        0.5 * (np.mean((real - 1) ** 2) + np.mean(d**2)),
        rtol=1e-5,
    )
    with pytest.raises(ValueError, match="Unknown GAN loss"):
        losses.adversarial_balance("wgan", d)


# The method ------------------------------------------------------------------

SIZE = 32


def _pairs(n=4, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1, 1, (n, SIZE, SIZE, 3)).astype("float32")
    y = np.tanh(1.5 * x[..., ::-1]).astype("float32")
    return x, y


def _trainer(student_d=None, online_teacher=False, **optimizers):
    keras.utils.set_random_seed(1)
    student = tgc.models.resnet_generator(ngf=4, n_blocks=1, name="student")
    teacher = tgc.models.resnet_generator(ngf=8, n_blocks=1, name="teacher")
    if student_d is None:
        student_d = tgc.models.patchgan_discriminator(
            ndf=4, n_layers=2, conditional=True, gated="binary"
        )
    teacher_d = tgc.models.patchgan_discriminator(ndf=4, n_layers=2, conditional=True)
    trainer = gcc.GCCTrainer(
        student, student_d, teacher, teacher_d, online_teacher=online_teacher
    )
    defaults = gcc.GCCTrainer.default_optimizers(
        2e-3, steps=50, gate_learning_rate=0.05
    )
    trainer.compile(**{**defaults, **optimizers}, jit_compile=False)
    return trainer


def _values(variables):
    return [v.numpy().copy() for v in variables]


def _changed(before, variables):
    return [
        not np.array_equal(b, v.numpy()) for b, v in zip(before, variables, strict=True)
    ]


def test_alternating_updates_touch_only_their_own_variables():
    x, y = _pairs(2)
    for frozen in ("gate_optimizer", "d_optimizer"):
        trainer = _trainer(**{frozen: keras.optimizers.SGD(0.0)})
        alphas = [gate.alpha for gate in trainer.gates]
        for alpha in alphas:
            alpha.assign(np.full(alpha.shape, 0.8, "float32"))
        weights = trainer.discriminator_variables()
        assert {id(v) for v in weights}.isdisjoint({id(a) for a in alphas})
        assert len(weights) + len(alphas) == len(
            trainer.discriminator.trainable_variables
        )
        teacher = trainer.teacher.trainable_variables + trainer.teacher.weights
        teacher_d = trainer.teacher_discriminator.trainable_variables
        before = [_values(v) for v in (alphas, weights, teacher, teacher_d)]
        trainer.train_on_batch(x, y)
        alpha_moved, weight_moved, teacher_moved, teacher_d_moved = (
            _changed(b, v)
            for b, v in zip(before, (alphas, weights, teacher, teacher_d), strict=True)
        )
        assert not any(teacher_moved)  # the pretrained teacher is frozen
        assert all(teacher_d_moved)  # its discriminator trains online
        if frozen == "gate_optimizer":
            assert not any(alpha_moved) and all(weight_moved)
        else:
            assert all(alpha_moved) and not any(weight_moved)


def test_default_gate_rate_closes_gates_in_a_short_run():
    # The paper's Adam 1e-4 moves alpha at most ~1e-4 a step: no gate can fall
    # from 1 below 0.5 in the benchmark's few hundred steps. The method's
    # default does, here within 90 steps of a student pair out of balance.
    x, y = _pairs(4)
    pairs = tf.data.Dataset.from_tensor_slices((x, y)).batch(2).repeat()
    rate = gcc.GCC.Options().gate_learning_rate
    trainer = _trainer(gate_optimizer=keras.optimizers.Adam(rate))
    trainer.fit(pairs, epochs=1, steps_per_epoch=90, verbose=0)
    kept = np.concatenate([gate.keep_mask() for gate in trainer.gates])
    assert 0 < kept.sum() < kept.size


def test_slimmed_discriminator_equals_the_trained_gated_one():
    x, y = _pairs(4)
    trainer = _trainer()
    for gate, keep in zip(trainer.gates, (0.5, 0.25, 0.75), strict=True):
        alpha = np.where(RNG.uniform(size=gate.channels) < keep, 0.6, 0.45)
        gate.alpha.assign(alpha.astype("float32"))
    pairs = tf.data.Dataset.from_tensor_slices((x, y)).batch(2).repeat()
    student = methods.Student(trainer.generator, trainer.discriminator)
    callback = gcc.SlimDiscriminator(student, (SIZE, SIZE, 3))
    trainer.fit(pairs, epochs=1, steps_per_epoch=3, callbacks=[callback], verbose=0)
    gated = trainer.discriminator
    fractions = student.state["d_live_fraction"]
    kept = [gate.keep_mask() for gate in trainer.gates]
    assert min(k.mean() for k in kept) > 0 and max(k.mean() for k in kept) < 1
    assert list(fractions.values())[:3] == [k.mean() for k in kept]
    small = student.discriminator
    assert not gates_of(small)
    d_input = np.concatenate([x, y], axis=-1)
    np.testing.assert_allclose(
        small(d_input, training=False), gated(d_input, training=False), atol=1e-5
    )
    report = pipeline.discriminator_report(student)
    assert report["d_live_fraction"] == fractions
    macs = tgc.profile(small, (SIZE, SIZE, 6)).macs
    assert report["d_macs"] == macs < report["d_macs_before"]


def test_online_teacher_losses_fall_when_overfitting():
    x, y = _pairs(2)
    trainer = _trainer(online_teacher=True)
    assert trainer.teacher.trainable
    pairs = tf.data.Dataset.from_tensor_slices((x, y)).batch(2).repeat()
    history = trainer.fit(pairs, epochs=4, steps_per_epoch=5, verbose=0).history
    teacher_g, teacher_d = history["teacher_g_loss"], history["teacher_d_gan"]
    assert np.all(np.diff(history["teacher_recon"]) < 0)  # epoch means
    assert teacher_g[-1] < 0.7 * teacher_g[0]
    assert teacher_d[-1] < 0.5 * teacher_d[0]
    assert history["recon"][-1] < history["recon"][0]
    assert np.isfinite(history["gate_coordination"]).all()


def test_gcc_trainer_errors():
    student_d = tgc.models.patchgan_discriminator(ndf=4, n_layers=2, conditional=True)
    with pytest.raises(ValueError, match="selective-activation"):
        _trainer(student_d=student_d)
    generator = tgc.models.resnet_generator(ngf=4, n_blocks=1)
    with pytest.raises(ValueError, match="mode='paired'"):
        gcc.GCCTrainer(
            generator,
            tgc.models.patchgan_discriminator(ndf=4, gated="binary"),
            generator,
            tgc.models.patchgan_discriminator(ndf=4),
            mode="unpaired",
            online_teacher=True,
        )


def _tiny_task():
    keras.utils.set_random_seed(0)
    teacher = tgc.models.resnet_generator(ngf=16, n_blocks=1, affine=True, name="t")
    x, _ = _pairs(8)
    y = teacher.predict(x, verbose=0)
    pairs = tf.data.Dataset.from_tensor_slices((x, y)).batch(2, drop_remainder=True)
    macs_budget = budget.Budget.resolve(teacher, macs_ratio=20)
    return teacher, x, pairs.repeat(), methods.Setup(macs_budget, ndf=4)


def test_gcc_through_the_pipeline_at_one_twentieth():
    teacher, x, pairs, setup = _tiny_task()
    setup = dataclasses.replace(setup, jit_compile=False)
    method = methods.get("gcc", gate_learning_rate=0.05, min_channels=2)
    searched = {}

    def after_phase(phase, student):
        if phase == "search":  # the kept channels got the teacher's weights back
            searched["stem"] = student.generator.get_layer("stem_conv").kernel.numpy()

    result = pipeline.compress(
        method,
        teacher,
        pairs,
        setup,
        steps=3,
        calibration=x,
        after_phase=after_phase,
        verbose=0,
    )
    np.testing.assert_array_equal(
        searched["stem"], teacher.get_layer("stem_conv").kernel.numpy()
    )
    student = result.student
    assert result.steps == {"search": 1, "finetune": 2}
    search = student.state["threshold_search"].result
    assert min(search.kept.values()) >= 2
    shape = setup.budget.input_shape
    assert result.macs == search.macs == tgc.profile(student.generator, shape).macs
    assert search.macs <= setup.budget.macs
    stem = student.generator.get_layer("stem_conv").kernel.numpy()
    assert stem.shape[-1] == search.kept["stem_norm_gate"]
    assert not gates_of(student.generator) and not gates_of(student.discriminator)
    assert student.state["d_macs"] <= student.state["d_macs_before"]
    assert set(student.kept) >= {"stem_conv", "out_conv"}
    assert result.refit_images == 8


def test_gcc_distillation_weights_default_to_a_tenth_of_the_paper_paired():
    teacher, _, _, setup = _tiny_task()
    setup = dataclasses.replace(setup, jit_compile=False)
    expected = {
        ("paired", ()): (5.0, 1e3),
        ("unpaired", ()): (0.01, 10.0),
        ("paired", ("lambda_content=50", "lambda_gram=1e4")): (50.0, 1e4),
    }
    for (mode, options), weights in expected.items():
        method = methods.get("gcc", list(options))
        mode_setup = dataclasses.replace(setup, mode=mode)
        student = method.build(teacher, mode_setup)
        trainer = method.finetune_trainer(student, teacher, mode_setup, steps=4)
        assert (trainer.lambda_content, trainer.lambda_gram) == weights
    # GCCTrainer itself keeps the paper's weights.
    trainer = _trainer()
    assert (trainer.lambda_content, trainer.lambda_gram) == (50.0, 1e4)


def test_gcc_re_initialises_the_pruned_generator_on_request():
    teacher, _, _, setup = _tiny_task()
    shape = setup.budget.input_shape
    smallest = [
        methods.get("gcc", min_channels=k).smallest_macs(teacher, shape)
        for k in (1, 4, 1000)
    ]
    assert smallest[0] == budget.smallest_gated_macs(teacher, shape)
    assert smallest[0] < smallest[1] < smallest[2] == tgc.profile(teacher, shape).macs
    method = methods.get("gcc", "inherit=false")
    student = method.build(teacher, setup)
    assert {g.mode for g in gates_of(student.generator)} == {"scale"}
    assert {g.mode for g in gates_of(student.discriminator)} == {"binary"}
    tgc.pruning.prune_to_budget(
        student.generator,
        tgc.pruning.scale_importance(student.generator),
        setup.budget.macs,
        setup.budget.input_shape,
    )
    pruned = tgc.slim(student.generator)
    fresh = method.slim(student)
    assert fresh.kept is None and not fresh.inherits_teacher
    assert gates_of(fresh.discriminator)  # slimmed after fine-tuning
    for layer in pruned.layers:
        if layer.weights:
            other = fresh.generator.get_layer(layer.name)
            assert [w.shape for w in layer.weights] == [w.shape for w in other.weights]
    np.testing.assert_raises(
        AssertionError,
        np.testing.assert_allclose,
        fresh.generator.get_layer("stem_conv").kernel,
        pruned.get_layer("stem_conv").kernel,
    )
