"""Tests of tgc.proximal: GAN Slimming's soft-threshold step on scale gates,
the MACs-driven rho controller and the final projection onto the budget."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import tfgancompress as tgc
from keras_layers import ChannelGate
from tfgancompress import proximal
from tfgancompress.schedules import MacsBudget

SIZE = 16
SHAPE = (SIZE, SIZE, 3)


def _teacher(seed: int) -> keras.Model:
    """A small ResNet generator with trained-looking affine norms."""
    keras.utils.set_random_seed(seed)
    teacher = tgc.models.resnet_generator(ngf=8, n_blocks=2, affine=True)
    rng = np.random.default_rng(seed)
    for layer in teacher.layers:
        if getattr(layer, "gamma", None) is not None:
            layer.gamma.assign(rng.uniform(0.3, 1.5, layer.gamma.shape))
            layer.beta.assign(rng.uniform(-0.3, 0.3, layer.beta.shape))
    return teacher


def test_proximal_step_is_the_soft_threshold_at_the_current_learning_rate():
    student = tgc.pruning.add_gates(_teacher(0), "scale")
    gates = proximal.scale_gates(student)
    rng = np.random.default_rng(1)
    for gate in gates:
        gate.gamma.assign(rng.normal(0.0, 0.05, gate.channels))
    rho = 0.3
    schedule = keras.optimizers.schedules.CosineDecay(0.1, 10)
    optimizer = keras.optimizers.SGD(schedule, momentum=0.5)
    optimizer.build([gate.gamma for gate in gates])

    @tf.function(jit_compile=True)
    def step():
        # The learning rate of the step that has just been applied.
        learning_rate = optimizer.learning_rate
        optimizer.iterations.assign_add(1)
        proximal.proximal_step(gates, rho * learning_rate)

    for iteration in range(3):
        before = [gate.gamma.numpy() for gate in gates]
        step()
        threshold = rho * float(schedule(iteration))
        for gate, gamma in zip(gates, before, strict=True):
            expected = np.sign(gamma) * np.maximum(np.abs(gamma) - threshold, 0.0)
            np.testing.assert_allclose(gate.gamma.numpy(), expected, atol=1e-7)
    closed = sum(int((gate.gamma.numpy() == 0).sum()) for gate in gates)
    assert 0 < closed < sum(gate.channels for gate in gates)
    np.testing.assert_allclose(
        proximal.soft_threshold([-0.5, 0.05, 2.0], 0.1), [-0.4, 0.0, 1.9], atol=1e-6
    )


def test_residual_stream_gates_are_not_pruned():
    student = tgc.pruning.add_gates(_teacher(0), "scale")
    names = [gate.name for gate in proximal.scale_gates(student)]
    assert names == [
        "stem_norm_gate",
        "down1_norm_gate",
        "block1_norm1_gate",
        "block2_norm1_gate",
        "up1_norm_gate",
        "up2_norm_gate",
    ]
    everything = proximal.scale_gates(student, residual=True)
    assert {g.name for g in everything} - set(names) == {
        "down2_norm_gate",
        "block1_norm2_gate",
        "block2_norm2_gate",
    }
    with pytest.raises(ValueError, match="proximal_step is for mode 'scale'"):
        proximal.proximal_step([ChannelGate(mode="binary")], 0.1)


def test_zero_scale_channels_are_gone_after_slim_with_outputs_equal():
    teacher = _teacher(2)
    student = tgc.pruning.add_gates(teacher, "scale")
    rng = np.random.default_rng(3)
    for gate in proximal.scale_gates(student):
        gamma = gate.gamma.numpy()
        gamma[rng.random(gate.channels) < 0.5] = 0.0
        gate.gamma.assign(gamma)
        # Positive betas: closed channels output relu(beta) > 0, folded by slim.
        gate.beta.assign(rng.uniform(0.05, 0.5, gate.channels))
    images = np.random.default_rng(4).uniform(-1, 1, (2, 32, 32, 3)).astype("float32")
    slim = tgc.slim(student)
    np.testing.assert_allclose(
        slim.predict(images, verbose=0), student.predict(images, verbose=0), atol=2e-5
    )
    kept = {c.name: c.kept for c in tgc.live_channels(slim)}
    for gate in proximal.scale_gates(student):
        conv = gate.name.replace("norm", "conv").removesuffix("_gate")
        # Transposed convs and zero-padded convs keep one carrier at most.
        assert kept[conv] <= int((gate.gamma.numpy() != 0).sum()) + 1, conv
    full = tgc.profile(student, SHAPE).macs
    assert tgc.profile(slim, SHAPE).macs == tgc.cost.gate_macs(student, SHAPE) < full


def test_rho_control_lands_within_five_percent_of_the_macs_budget():
    teacher = _teacher(5)
    student = tgc.pruning.add_gates(teacher, "scale")
    gates = proximal.scale_gates(student)
    gammas = [gate.gamma for gate in gates]
    others = [v for v in student.trainable_variables if all(v is not g for g in gammas)]
    steps, interval = 40, 4
    learning_rate = keras.optimizers.schedules.CosineDecay(0.1, steps)
    sgd = keras.optimizers.SGD(learning_rate, momentum=0.5)
    adam = keras.optimizers.Adam(1e-4, beta_1=0.5)
    full = tgc.cost.gate_macs(student, SHAPE)
    budget = 0.55 * full
    schedule = MacsBudget(full, budget, 0, int(0.7 * steps), frequency=1)
    controller = proximal.RhoController.for_budget(
        student, schedule, SHAPE, learning_rate, horizon=2 * interval
    )
    rho = tf.Variable(controller.rho)

    @tf.function(jit_compile=True)
    def train_step(x):
        learning_rate = sgd.learning_rate
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.square(student(x, training=True) - teacher(x)))
        grads = tape.gradient(loss, gammas + others)
        sgd.apply_gradients(zip(grads[: len(gammas)], gammas, strict=True))
        adam.apply_gradients(zip(grads[len(gammas) :], others, strict=True))
        proximal.proximal_step(gates, rho * learning_rate)

    rng = np.random.default_rng(6)
    for step in range(steps):
        train_step(rng.uniform(-1, 1, (2, *SHAPE)).astype("float32"))
        if (step + 1) % interval == 0:
            rho.assign(controller.update(step + 1, float(sgd.learning_rate)))
    searched = tgc.cost.gate_macs(student, SHAPE)
    final = proximal.prune_to_budget(student, budget, SHAPE)
    print(f"searched {searched / budget:.3f}, final {final / budget:.3f} of budget")
    assert abs(searched / budget - 1.0) <= 0.05
    assert 0.95 * budget <= final <= budget
    assert final == tgc.profile(tgc.slim(student), SHAPE).macs


def test_prune_to_budget_zeroes_the_smallest_scales_first():
    student = tgc.pruning.add_gates(_teacher(7), "scale")
    gates = proximal.scale_gates(student)
    before = np.concatenate([np.abs(gate.gamma.numpy()) for gate in gates])
    budget = 0.5 * tgc.cost.gate_macs(student, SHAPE)
    macs = proximal.prune_to_budget(student, budget, SHAPE)
    after = np.concatenate([np.abs(gate.gamma.numpy()) for gate in gates])
    assert macs <= budget
    assert after[after > 0].min() >= before[after == 0].max()
    assert np.array_equal(after[after > 0], before[after > 0])
    with pytest.raises(ValueError, match="with every scale gate closed"):
        proximal.prune_to_budget(student, 1000, SHAPE)
    assert proximal.prune_to_budget(student, budget, SHAPE) == macs  # already fits


def test_rho_controller_raises_rho_above_target_and_lowers_it_below():
    student = tgc.pruning.add_gates(_teacher(8), "scale")
    full = tgc.cost.gate_macs(student, SHAPE)
    schedule = MacsBudget(full, 0.5 * full, 0, 10, frequency=1)
    controller = proximal.RhoController(student, schedule, SHAPE, rho=1e-4)
    assert controller.update(10, learning_rate=0.1) > 1e-4  # at full width
    controller.rho = 100.0  # forecast: every gate closed, below the target
    assert controller.update(10, learning_rate=0.1) < 100.0
    with pytest.raises(ValueError, match="rho must be in rho_range"):
        proximal.RhoController(student, schedule, SHAPE, rho=0.0)
    with pytest.raises(ValueError, match="no ChannelGate"):
        proximal.RhoController(_teacher(8), schedule, SHAPE, rho=0.1)
