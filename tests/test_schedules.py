"""tfgancompress.schedules: tfmot-compatible channel schedules driving gates."""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_layers import ChannelGate
from tfgancompress import schedules
from tfgancompress._tfmot import tfmot
from tfgancompress.schedules import (
    ChannelSparsity,
    MacsBudget,
    apply_schedule,
    apply_sparsity,
    keep_count,
)

PARAMETER = np.array([0.3, -0.2, 0.9, 0.0, 0.6, 0.55, 0.1, -1.0], np.float32)


def _runners():
    """The same callable eagerly, in tf.function and under XLA."""
    return {
        "eager": lambda fn: fn,
        "graph": tf.function,
        "xla": lambda fn: tf.function(fn, jit_compile=True),
    }


def _gate(mode: str, values=PARAMETER) -> ChannelGate:
    gate = ChannelGate(mode=mode)
    gate.build((None, len(values)))
    gate.gate_parameter.assign(values)
    return gate


def test_schedules_are_tfmot_pruning_schedules():
    for schedule in (ChannelSparsity(0.0, 0.5, 0, 10), MacsBudget(8.0, 2.0, 0, 10)):
        assert isinstance(schedule, tfmot.sparsity.keras.PruningSchedule)


def test_channel_sparsity_curve_matches_tfmot_polynomial_decay():
    ours = ChannelSparsity(0.1, 0.8, begin_step=10, end_step=110, power=3, frequency=5)
    theirs = tfmot.sparsity.keras.PolynomialDecay(0.1, 0.8, 10, 110, 3, 5)
    for step in (0, 10, 11, 15, 60, 110, 115, 500):
        ours_prune, ours_sparsity = ours(tf.constant(step, tf.int64))
        theirs_prune, theirs_sparsity = theirs(tf.constant(step, tf.int64))
        assert bool(ours_prune) == bool(theirs_prune)
        np.testing.assert_allclose(float(ours_sparsity), float(theirs_sparsity), 1e-6)
    progress = 0.5
    expected = 0.8 + (0.1 - 0.8) * (1 - progress) ** 3
    np.testing.assert_allclose(float(ours(60)[1]), expected, rtol=1e-6)
    assert [bool(ours(s)[0]) for s in (9, 10, 12, 15, 110, 115)] == [
        False,
        True,
        False,
        True,
        True,
        False,
    ]


def test_macs_budget_follows_sqrt_of_macs_ratio():
    schedule = MacsBudget(64e9, 4e9, begin_step=0, end_step=100, power=1, frequency=1)
    assert float(schedule(0)[1]) == pytest.approx(0.0, abs=1e-7)
    assert float(schedule(100)[1]) == pytest.approx(0.75, abs=1e-6)
    assert float(schedule(1000)[1]) == pytest.approx(0.75, abs=1e-6)
    assert float(schedule.macs(50)) == pytest.approx(34e9, rel=1e-6)
    keep = 1.0 - float(schedule(50)[1])
    assert keep**2 == pytest.approx(34 / 64, rel=1e-5)
    budgets = [float(schedule.macs(s)) for s in range(0, 101, 10)]
    assert budgets == sorted(budgets, reverse=True)


@pytest.mark.parametrize("runner", ["eager", "graph", "xla"])
@pytest.mark.parametrize("dtype", [tf.int32, tf.int64])
def test_schedules_run_in_eager_graph_and_xla(runner, dtype):
    wrap = _runners()[runner]
    for schedule in (
        ChannelSparsity(0.0, 0.6, 0, 100, frequency=10),
        MacsBudget(9.0, 1.0, 0, 100),
    ):
        reference = [tuple(map(float, schedule(s))) for s in (0, 10, 55, 100)]
        fn = wrap(lambda step, schedule=schedule: schedule(step))
        got = [tuple(map(float, fn(tf.constant(s, dtype)))) for s in (0, 10, 55, 100)]
        np.testing.assert_allclose(got, reference, rtol=1e-6, atol=1e-7)


def test_schedule_accepts_the_optimizer_step_variable():
    optimizer = keras.optimizers.Adam()
    schedule = ChannelSparsity(0.0, 0.5, 0, 10, frequency=1)
    should_prune, sparsity = tf.function(schedule, jit_compile=True)(
        optimizer.iterations
    )
    assert bool(should_prune) and float(sparsity) == 0.0


@pytest.mark.parametrize(
    "schedule",
    [
        ChannelSparsity(0.05, 0.7, 3, 30, power=2, frequency=7),
        MacsBudget(56.8e9, 3.5e9, 100, 2000, power=3, frequency=50),
        tfmot.sparsity.keras.PolynomialDecay(0.0, 0.5, 0, 10),
        tfmot.sparsity.keras.ConstantSparsity(0.25, 5),
    ],
)
def test_get_config_round_trip(schedule):
    config = json.loads(json.dumps(schedule.get_config()))
    rebuilt = schedules.deserialize(config)
    assert type(rebuilt) is type(schedule)
    assert rebuilt.get_config() == schedule.get_config()
    for step in (0, 7, 50, 1000):
        np.testing.assert_allclose(
            [float(v) for v in rebuilt(step)], [float(v) for v in schedule(step)]
        )


def test_deserialize_rejects_unknown():
    with pytest.raises(ValueError, match="class_name"):
        schedules.deserialize({"class_name": "Cosine", "config": {}})


@pytest.mark.parametrize(
    "build, message",
    [
        (
            lambda: ChannelSparsity(0.0, 1.0, 0, 10),
            r"final_sparsity must be in \[0, 1\)",
        ),
        (lambda: ChannelSparsity(-0.1, 0.5, 0, 10), "initial_sparsity"),
        (lambda: ChannelSparsity(0.0, 0.5, 10, 10), "end_step must be > begin_step"),
        (lambda: ChannelSparsity(0.0, 0.5, -1, 10), "begin_step must be >= 0"),
        (lambda: ChannelSparsity(0.0, 0.5, 0, 10, frequency=0), "frequency"),
        (lambda: ChannelSparsity(0.0, 0.5, 0, 10, power=0), "power"),
        (lambda: MacsBudget(1e9, 2e9, 0, 10), "must not exceed initial_macs"),
        (lambda: MacsBudget(1e9, 0, 0, 10), "target_macs must be a number > 0"),
        (lambda: MacsBudget(1e9, 5e8, 20, 10), "end_step must be > begin_step"),
        (lambda: keep_count(1.0, 8), r"sparsity must be in \[0, 1\)"),
        (lambda: keep_count(0.5, 0), "channels must be >= 1"),
    ],
)
def test_bad_arguments(build, message):
    with pytest.raises(ValueError, match=message):
        build()


def test_keep_count():
    assert int(keep_count(0.75, 64)) == 16
    assert int(keep_count(0.0, 7)) == 7
    assert int(keep_count(0.99, 4)) == 1
    assert int(keep_count(0.5, 5)) == 2  # round half to even, like tfmot
    assert int(keep_count(tf.constant(0.25), 8)) == 6
    assert int(tf.function(keep_count, jit_compile=True)(tf.constant(0.5), 10)) == 5


@pytest.mark.parametrize("runner", ["eager", "graph", "xla"])
@pytest.mark.parametrize("mode", ["binary", "dmad", "gumbel", "scale"])
def test_apply_sparsity_keeps_exactly_the_top_channels(mode, runner):
    gate = _gate(mode)
    fn = _runners()[runner](lambda s: apply_sparsity(gate, s))
    keep = fn(tf.constant(0.5)).numpy()
    # Signed parameter for binary/dmad/gumbel, |gamma| for scale.
    if mode == "scale":
        expected = [False, False, True, False, True, True, False, True]
    else:
        expected = [True, False, True, False, True, True, False, False]
    assert keep.tolist() == expected
    assert gate.keep_mask().tolist() == expected
    values = gate.gate_parameter.numpy()
    if mode == "scale":
        np.testing.assert_array_equal(values[~keep], 0.0)
        np.testing.assert_array_equal(values[keep], PARAMETER[keep])
    outputs = gate(tf.ones((1, 2, 2, 8)), training=False).numpy()
    assert np.all((outputs[0, 0, 0] != 0) == np.array(expected))


def test_apply_sparsity_moves_only_wrong_side_parameters():
    gate = _gate("binary", np.array([0.3, 0.8, 0.9, 0.7], np.float32))
    apply_sparsity(gate, 0.25)
    np.testing.assert_allclose(gate.alpha.numpy(), [0.3, 0.8, 0.9, 0.7])
    apply_sparsity(gate, 0.75)
    np.testing.assert_allclose(gate.alpha.numpy(), [0.3, 0.499, 0.9, 0.499])
    apply_sparsity(gate, 0.5)  # tie at 0.499: the lower index wins
    np.testing.assert_allclose(gate.alpha.numpy(), [0.3, 0.5, 0.9, 0.499])
    assert gate.keep_mask().tolist() == [False, True, True, False]


def test_apply_sparsity_revives_a_zero_scale_channel():
    gate = _gate("scale", np.array([0.0, 0.0, 2.0, -1.0], np.float32))
    apply_sparsity(gate, 0.25)
    assert gate.keep_mask().tolist() == [True, False, True, True]
    np.testing.assert_allclose(gate.gamma.numpy(), [1e-3, 0.0, 2.0, -1.0])


def test_apply_sparsity_with_importance_and_ties():
    gate = _gate("dmad", np.ones(6, np.float32))
    keep = apply_sparsity(gate, 0.5)
    assert keep.numpy().tolist() == [True, True, True, False, False, False]
    importance = tf.constant([0.1, 5.0, 0.2, 4.0, 0.0, 3.0])
    keep = tf.function(apply_sparsity, jit_compile=True)(gate, 0.5, importance)
    assert keep.numpy().tolist() == [False, True, False, True, False, True]
    assert gate.keep_mask().tolist() == keep.numpy().tolist()


def test_apply_sparsity_errors():
    with pytest.raises(TypeError, match="ChannelGate"):
        apply_sparsity(keras.layers.Dense(2), 0.5)
    with pytest.raises(ValueError, match="not built"):
        apply_sparsity(ChannelGate(name="fresh"), 0.5)
    with pytest.raises(ValueError, match=r"must have shape \(8,\)"):
        apply_sparsity(_gate("binary"), 0.5, importance=tf.ones(3))
    with pytest.raises(ValueError, match=r"sparsity must be in \[0, 1\)"):
        apply_sparsity(_gate("binary"), 1.5)


def test_tfmot_schedule_drives_gates_in_an_xla_step():
    gates = [_gate("binary", np.linspace(1.0, 0.6, 8).astype(np.float32))]
    gates.append(_gate("gumbel", np.linspace(3.0, 1.0, 16).astype(np.float32)))
    schedule = tfmot.sparsity.keras.PolynomialDecay(0.0, 0.75, 0, 30, frequency=10)
    step = tf.Variable(0, dtype=tf.int64)

    @tf.function(jit_compile=True)
    def train_step():
        pruned = apply_schedule(gates, schedule, step)
        step.assign_add(1)
        return pruned

    kept = []
    for _ in range(31):
        pruned = bool(train_step())
        kept.append([int(g.keep_mask().sum()) for g in gates])
        assert pruned == ((int(step) - 1) % 10 == 0)
    for s in (0, 10, 20, 30):
        sparsity = float(schedule(s)[1])
        assert kept[s] == [int(keep_count(sparsity, 8)), int(keep_count(sparsity, 16))]
    assert kept[30] == [2, 4]
    assert gates[0].keep_mask().tolist() == [True, True] + [False] * 6


def test_macs_budget_drives_a_gate():
    gate = _gate("dmad", np.linspace(1.0, 0.1, 16).astype(np.float32))
    schedule = MacsBudget(16.0, 4.0, begin_step=0, end_step=10, frequency=1)
    assert bool(apply_schedule([gate], schedule, 10))
    assert int(gate.keep_mask().sum()) == 8  # keep = sqrt(4 / 16) of 16
    assert not bool(apply_schedule([gate], ChannelSparsity(0.0, 0.9, 5, 10), 3))
    assert int(gate.keep_mask().sum()) == 8
