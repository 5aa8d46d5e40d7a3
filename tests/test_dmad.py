"""DMAD's building blocks: masks, band schedule, folding, sparsity and attention."""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

import tfgancompress as tgc
from keras_layers import ChannelGate
from keras_layers.gates import dmad_mask
from tfgancompress.schedules import BandSchedule
from training import losses

RNG = np.random.default_rng(0)
SHAPE = (64, 64, 3)
KNOTS = np.array([-1.0, -0.5, 0.0, 0.5, 1.0], np.float32)


def _images(size=32, batch=2):
    return RNG.uniform(-1.0, 1.0, (batch, size, size, 3)).astype(np.float32)


def _mask_gradient(weight, bound):
    weight = tf.Variable(np.asarray(weight, np.float32))
    with tf.GradientTape() as tape:
        mask = dmad_mask(weight, bound)
    return mask.numpy(), tape.gradient(mask, weight).numpy()


@pytest.mark.parametrize("bound", [1.0, 0.25])
def test_mask_values_and_gradients_at_the_five_knots(bound):
    values, grads = _mask_gradient(KNOTS * bound, bound)
    np.testing.assert_allclose(values, [0.0, 0.125, 0.5, 0.875, 1.0], atol=1e-6)
    # m = (w/b + 1)^2 / 2 left of 0, 1 - (1 - w/b)^2 / 2 right of it.
    np.testing.assert_allclose(
        grads, np.array([0.0, 0.5, 1.0, 0.5, 0.0]) / bound, rtol=1e-5, atol=1e-6
    )


def test_mask_is_flat_outside_the_band_and_a_step_when_closed():
    outside = [-5.0, -1.01, 1.01, 7.0]
    values, grads = _mask_gradient(outside, 1.0)
    np.testing.assert_array_equal(values, [0, 0, 1, 1])
    np.testing.assert_array_equal(grads, 0.0)
    values, grads = _mask_gradient([-0.3, -1e-6, 1e-6, 0.3], 0.0)
    np.testing.assert_array_equal(values, [0, 0, 1, 1])
    np.testing.assert_array_equal(grads, 0.0)
    assert np.isfinite(grads).all()


def test_gate_gradient_reaches_the_weight_through_a_network():
    gate = ChannelGate(mode="dmad")
    x = tf.constant(RNG.uniform(0.5, 1.5, (2, 3, 3, 5)).astype(np.float32))
    gate.build(x.shape)
    weights = np.array([-2.0, -0.5, 0.0, 0.5, 2.0], np.float32)
    gate.weight.assign(weights)
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(gate(x, training=True))
    grad = tape.gradient(loss, gate.weight).numpy()
    slope = np.array([0.0, 0.5, 1.0, 0.5, 0.0])
    np.testing.assert_allclose(grad, slope * x.numpy().sum((0, 1, 2)), rtol=1e-5)
    np.testing.assert_array_equal(gate.mask(training=False).numpy(), [0, 0, 0, 1, 1])


def test_band_schedule_follows_the_cube_rule_and_closes():
    schedule = BandSchedule.for_steps(1000)  # closes at 750, 150 updates
    assert (schedule.end_step, schedule.frequency) == (750, 5)
    for step in (0, 10, 375, 600, 750, 900):
        progress = min(step / 750, 1.0)
        expected = 1.0 - progress ** (1 / 3)
        np.testing.assert_allclose(float(schedule(step)[1]), expected, atol=1e-6)
    due = [bool(schedule(s)[0]) for s in (0, 3, 5, 745, 750, 755)]
    assert due == [True, False, True, True, True, False]
    # The end step is always due, whatever the frequency.
    odd = BandSchedule(0, 7, frequency=5, power=0.5, initial_bound=2.0)
    assert [bool(odd(s)[0]) for s in (5, 6, 7)] == [True, False, True]
    assert float(odd(7)[1]) == 0.0
    xla = tf.function(lambda s: odd(s), jit_compile=True)
    np.testing.assert_allclose(float(xla(tf.constant(3))[1]), 2 * (1 - (3 / 7) ** 0.5))
    config = json.loads(json.dumps(odd.get_config()))
    again = tgc.schedules.deserialize(config)
    assert isinstance(again, BandSchedule)
    assert again.get_config() == odd.get_config()
    with pytest.raises(ValueError, match="end_step"):
        BandSchedule(5, 5)
    with pytest.raises(ValueError, match="initial_bound"):
        BandSchedule(0, 5, initial_bound=0.0)


def test_group_sparsity_coefficients_hand_made_case():
    # Four masks of one residual group, six channels, band 0.5.
    weights = np.array(
        [
            [0.9, -0.9, -0.9, 0.1, 0.2, -0.9],
            [0.1, -0.9, 0.2, 0.1, -0.9, -0.6],
            [-0.2, -0.9, -0.9, 0.1, -0.9, -0.9],
            [0.0, -0.7, -0.9, 0.3, -0.9, 0.5],
        ],
        np.float32,
    )
    coefficients = losses.group_sparsity_coefficients(weights, 0.5).numpy()
    # ch0: alive in mask 0 -> 0; ch1: pruned everywhere -> 0; ch2: one of
    # four in the band -> 4; ch3: all four in the band -> 1; ch4: one -> 4;
    # ch5: w == b is inside the band (not above it) -> 4 / 1.
    np.testing.assert_allclose(coefficients, [0, 0, 4, 1, 4, 4])
    closed = losses.group_sparsity_coefficients(weights, 0.0).numpy()
    np.testing.assert_array_equal(closed, np.zeros(6))


def test_sparsity_loss_pushes_in_band_weights_by_their_coefficient():
    weight = tf.Variable([-2.0, -0.5, 0.25, 0.99, 1.5])
    coefficients = tf.constant([3.0, 3.0, 2.0, 0.0, 5.0])
    with tf.GradientTape() as tape:
        loss = losses.mask_sparsity_loss(weight, 1.0, coefficients)
    np.testing.assert_allclose(float(loss), 3 * 0.5 + 2 * 1.25)
    np.testing.assert_allclose(tape.gradient(loss, weight).numpy(), [0, 3, 2, 0, 0])
    assert float(losses.mask_sparsity_loss(weight, 0.0)) == 0.0


def test_binarising_loss_pushes_weights_to_the_band_edges():
    weight = tf.Variable([-0.6, 0.2, 3.0])
    with tf.GradientTape() as tape:
        loss = losses.mask_binarising_loss(weight, 1.0)
    np.testing.assert_allclose(float(loss), np.hypot(0.4, 0.8), rtol=1e-6)
    grad = tape.gradient(loss, weight).numpy()
    assert grad[0] > 0 and grad[1] < 0 and grad[2] == 0  # descent: away from 0
    empty = tf.Variable([2.0, -3.0])
    with tf.GradientTape() as tape:
        loss = losses.mask_binarising_loss(empty, 1.0)
    assert float(loss) == 0.0
    np.testing.assert_array_equal(tape.gradient(loss, empty).numpy(), [0.0, 0.0])


def _with_weights(model, draw):
    for gate in tgc.masks.dmad_gates(model).values():
        gate.weight.assign(draw(gate.channels).astype(np.float32))


GENERATORS = {
    "resnet": lambda: tgc.models.resnet_generator(ngf=4, n_blocks=2),
    "mobile": lambda: tgc.models.mobile_resnet_generator(ngf=4, n_blocks=2),
    "unet": lambda: tgc.models.unet_generator(
        ngf=4, num_downs=5, norm="batch", input_shape=(32, 32, 3)
    ),
}


@pytest.mark.parametrize("kind", sorted(GENERATORS))
def test_add_masks_keeps_the_function_and_fold_on_enter_keeps_outputs(kind):
    keras.utils.set_random_seed(1)
    teacher = GENERATORS[kind]()
    x = _images()
    student = tgc.masks.add_masks(teacher, seed=0)
    gates = tgc.masks.dmad_gates(student)
    norms = [layer.name for layer in teacher.layers if "norm" in layer.name]
    assert sorted(gates) == sorted(f"{norm}_gate" for norm in norms)
    np.testing.assert_allclose(
        student(x, training=True), teacher(x, training=True), atol=2e-5
    )
    # Weights either outside every band or entering the m = 1 region when
    # the band shrinks from 1 to 0.4: the output must not move.
    _with_weights(student, lambda c: RNG.choice([-2.0, 0.5, 0.9, 2.0], c))
    before = student(x, training=True).numpy()
    folded = tgc.masks.anneal(student, 0.4)
    assert folded > 0
    assert all(float(g.bound.numpy()) == pytest.approx(0.4) for g in gates.values())
    np.testing.assert_allclose(student(x, training=True), before, atol=2e-5)
    # Without the fold the entering channels jump from m(w) to 1.
    unfolded = tgc.masks.add_masks(teacher, seed=0)
    _with_weights(unfolded, lambda c: RNG.choice([0.5, 0.9], c))
    reference = unfolded(x, training=True).numpy()
    for gate in tgc.masks.dmad_gates(unfolded).values():
        gate.set_bound(0.4)
    assert np.abs(unfolded(x, training=True).numpy() - reference).max() > 1e-3


def test_freeze_keeps_outputs_and_slim_keeps_the_function():
    keras.utils.set_random_seed(2)
    teacher = GENERATORS["resnet"]()
    student = tgc.masks.add_masks(teacher, seed=0)
    _with_weights(student, lambda c: RNG.uniform(-1.5, 1.5, c))
    tgc.masks.anneal(student, 0.6)
    x = _images()
    before = student(x, training=True).numpy()
    kept = tgc.masks.freeze(student)
    for name, gate in tgc.masks.dmad_gates(student).items():
        assert float(gate.bound.numpy()) == 0.0
        np.testing.assert_array_equal(gate.weight.numpy(), np.where(kept[name], 1, -1))
    np.testing.assert_allclose(student(x, training=True), before, atol=2e-5)
    np.testing.assert_allclose(student(x, training=False), before, atol=2e-5)
    np.testing.assert_allclose(tgc.slim(student)(x), before, atol=5e-5)


def test_residual_keep_rule_keeps_a_channel_open_in_any_mask():
    keras.utils.set_random_seed(3)
    student = tgc.masks.add_masks(GENERATORS["resnet"](), seed=0)
    gates = tgc.masks.dmad_gates(student)
    residual = ["down2_norm_gate", "block1_norm2_gate", "block2_norm2_gate"]
    for gate in gates.values():
        gate.weight.assign(np.full(gate.channels, 1.0, np.float32))
        gate.set_bound(0.0)
    channels = gates[residual[0]].channels
    # Channel 0 open in one mask, channel 1 in two, channel 2 in none.
    patterns = {
        residual[0]: [1.0, 1.0, -1.0],
        residual[1]: [-1.0, 1.0, -1.0],
        residual[2]: [-1.0, -1.0, -1.0],
    }
    for name, head in patterns.items():
        gates[name].weight.assign(np.r_[head, np.ones(channels - 3)].astype(np.float32))
    keep = tgc.masks.residual_keep(student)
    assert sorted(keep) == sorted(residual)
    assert keep[residual[2]][:3].tolist() == [True, True, False]
    assert tgc.masks.residual_keep(student, min_open=2)[residual[0]][:3].tolist() == [
        False,
        True,
        False,
    ]
    # slim applies the same rule: one open mask keeps the channel.
    slim_width = tgc.slim(student).get_layer("down2_conv").filters
    assert slim_width == channels - 1
    with pytest.raises(ValueError, match="min_open"):
        tgc.masks.residual_keep(student, min_open=0)


def test_freeze_to_budget_applies_the_residual_rule_once(min_open=2):
    keras.utils.set_random_seed(4)
    student = tgc.masks.add_masks(GENERATORS["resnet"](), seed=0)
    _with_weights(student, lambda c: RNG.uniform(-0.5, 1.0, c))
    tgc.masks.anneal(student, 0.6)
    budget = tgc.masks.open_macs(student, SHAPE) // 3
    tgc.masks.freeze_to_budget(student, budget, SHAPE, min_open)
    frozen = tgc.masks.open_channels(student)
    assert tgc.cost.gate_macs(student, SHAPE) <= budget
    residual = ["down2_norm_gate", "block1_norm2_gate", "block2_norm2_gate"]
    votes = np.sum([frozen[name] for name in residual], axis=0)
    assert votes.max() >= min_open and not ((votes > 0) & (votes < min_open)).any()
    # What slim does again (`Dmad.slim`) closes nothing more.
    tgc.masks.freeze_to_budget(student, budget, SHAPE, min_open)
    for name, open_ in tgc.masks.open_channels(student).items():
        np.testing.assert_array_equal(open_, frozen[name], err_msg=name)


def _kept_weight(units, kept) -> float:
    """The cut's objective: the kept units' weights (a residual channel once)."""
    return sum(
        float(score[np.any([kept[n] for n in names], axis=0)].sum())
        for names, score in units
    )


def test_cost_cut_keeps_more_weight_per_mac_than_the_threshold_cut():
    keras.utils.set_random_seed(5)
    teacher = GENERATORS["resnet"]()

    def searched():
        # Hard masks; the up-sampling ones (the costliest channels, at the
        # highest resolutions) weigh a little more than the rest.
        student = tgc.masks.add_masks(teacher, seed=0)
        rng = np.random.default_rng(0)
        for name, gate in tgc.masks.dmad_gates(student).items():
            low = 0.4 if name.startswith("up") else 0.0
            gate.weight.assign(rng.uniform(low, 1.0, gate.channels).astype(np.float32))
            gate.set_bound(0.0)
        return student

    student = searched()
    units = tgc.masks._cut_units(student, tgc.masks.open_channels(student), 1)
    budget = tgc.masks.open_macs(student, SHAPE) // 3
    results = {}
    for cut in tgc.masks.CUTS:
        student = searched()
        kept = tgc.masks.freeze_to_budget(student, budget, SHAPE, cut=cut)
        macs = tgc.cost.gate_macs(student, SHAPE)
        assert macs <= budget, cut
        results[cut] = (_kept_weight(units, kept), macs, kept)
        # Idempotent: a second call (what `Dmad.slim` does) closes nothing.
        again = tgc.masks.freeze_to_budget(student, budget, SHAPE, cut=cut)
        for name, open_ in again.items():
            np.testing.assert_array_equal(open_, kept[name], err_msg=f"{cut} {name}")
    weight, macs, kept = results["cost"]
    threshold_weight, threshold_macs, threshold_kept = results["threshold"]
    # Hand-checked on this case: 36.5 vs 26.9 kept weight, 11.2 vs 8.1 per MMAC.
    assert weight > 1.2 * threshold_weight
    assert weight / macs > 1.2 * threshold_weight / threshold_macs
    # The threshold cut keeps the expensive up-sampling channels, the cost
    # cut trades them for cheaper ones.
    assert kept["up2_norm_gate"].sum() < threshold_kept["up2_norm_gate"].sum()
    assert sum(int(k.sum()) for k in kept.values()) > sum(
        int(k.sum()) for k in threshold_kept.values()
    )
    # Every mask keeps a channel; a residual channel closes in all its masks.
    assert all(k.any() for k in kept.values())
    residual = ["down2_norm_gate", "block1_norm2_gate", "block2_norm2_gate"]
    alive = np.any([kept[name] for name in residual], axis=0)
    opened = tgc.masks.open_channels(searched())
    for name in residual:
        np.testing.assert_array_equal(kept[name], alive & opened[name])
    with pytest.raises(ValueError, match="cut must be one of"):
        tgc.masks.freeze_to_budget(student, budget, SHAPE, cut="uniform")


def test_cost_cut_closes_the_cheapest_weight_first_one_channel_at_a_time():
    keras.utils.set_random_seed(6)
    student = tgc.masks.add_masks(GENERATORS["resnet"](), seed=0)
    for gate in tgc.masks.dmad_gates(student).values():
        gate.weight.assign(np.full(gate.channels, 1.0, np.float32))
        gate.set_bound(0.0)
    stem = tgc.masks.dmad_gates(student)["stem_norm_gate"]
    stem.weight.assign(np.array([1.0, 0.01, 0.02, 1.0], np.float32))
    full = tgc.masks.open_macs(student, SHAPE)
    # A budget just below the full cost: one stem channel (the cheapest
    # weight per MAC there is) closes, the one of weight 0.01.
    keep = tgc.masks.cost_cut(student, full - 1, SHAPE)
    assert keep["stem_norm_gate"].tolist() == [True, False, True, True]
    assert all(k.all() for name, k in keep.items() if name != "stem_norm_gate")
    # The model is not changed; within budget the cut keeps every open channel.
    assert tgc.masks.open_macs(student, SHAPE) == full
    keep = tgc.masks.cost_cut(student, full, SHAPE)
    assert all(k.all() for k in keep.values())


def test_folding_needs_an_affine_norm():
    student = tgc.models.resnet_generator(ngf=4, n_blocks=1, gated="dmad")
    gate = student.get_layer("stem_gate")
    gate.weight.assign(np.full(gate.channels, 0.5, np.float32))
    with pytest.raises(ValueError, match="non-affine norm 'stem_norm'"):
        tgc.masks.anneal(student, 0.2)


def test_co_attention_target_mixes_normalised_maps():
    g = tf.constant(RNG.normal(size=(2, 8, 8, 6)).astype(np.float32))
    d = tf.constant(RNG.normal(size=(2, 8, 8, 4)).astype(np.float32))
    target = losses.co_attention_target(g, d).numpy()
    np.testing.assert_allclose(np.square(target).sum((1, 2)), 1.0, rtol=1e-5)
    mix = losses.attention_map(g).numpy() + losses.attention_map(d).numpy()
    mix /= np.sqrt(np.square(mix).sum((1, 2), keepdims=True))
    np.testing.assert_allclose(target, mix, rtol=1e-5)
    only_g = losses.co_attention_target(g, d, weight=1.0)
    np.testing.assert_allclose(only_g, losses.attention_map(g), rtol=1e-5)
    small = losses.co_attention_target(g, d[:, :4, :4, :])
    assert small.shape == (2, 8, 8)
    # A student whose map equals the target has zero attention loss.
    assert float(losses.attention_distillation_loss(g, only_g)) < 1e-12


def test_feature_norm_loss_is_the_batch_mean_of_per_sample_norms():
    x = np.zeros((2, 3, 3, 2), np.float32)
    y = x.copy()
    y[0] += 1.0  # norm sqrt(18)
    y[1, 0, 0, 0] = 4.0  # norm 4
    np.testing.assert_allclose(
        float(losses.feature_norm_loss(x, y)), (np.sqrt(18) + 4) / 2, rtol=1e-6
    )
    with pytest.raises(ValueError, match="same shape"):
        losses.feature_norm_loss(x, y[:, :2])
