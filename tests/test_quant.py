"""Tests of keras_layers.FakeQuant: grid, clamp, STE, moving ranges, saving."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_layers import FakeQuant


def _values(low, high, count=2001):
    return np.linspace(low, high, count, dtype=np.float32).reshape(1, -1)


def test_unsigned_values_lie_on_the_grid_and_clamp():
    quant = FakeQuant(min_value=0.0, max_value=4.0)
    x = _values(-2.0, 6.0)
    y = keras.ops.convert_to_numpy(quant(x))
    levels = y / (4.0 / 255.0)
    np.testing.assert_allclose(levels, np.round(levels), atol=1e-3)
    assert y.min() == 0.0 and y.max() == pytest.approx(4.0)
    inside = (x >= 0.0) & (x <= 4.0)
    np.testing.assert_array_less(np.abs(y - x)[inside], 4.0 / 255.0 / 2 + 1e-6)
    assert np.all(y[x < 0.0] == 0.0)
    np.testing.assert_allclose(y[x > 4.0], 4.0, atol=1e-6)
    assert len(np.unique(y)) == 256


def test_signed_is_symmetric_on_the_narrow_grid():
    quant = FakeQuant(signed=True, max_value=1.0)
    y = keras.ops.convert_to_numpy(quant(_values(-3.0, 3.0)))
    levels = y / (2.0 / 254.0)
    np.testing.assert_allclose(levels, np.round(levels), atol=1e-3)
    assert np.round(levels).min() == -127 and np.round(levels).max() == 127
    assert len(np.unique(y)) == 255
    assert 0.0 in y


def test_gradient_is_straight_through_inside_and_zero_outside():
    quant = FakeQuant(min_value=-1.0, max_value=2.0)
    x = tf.constant([[-3.0, -0.5, 0.013, 1.99, 2.5, 7.0]])
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = quant(x)
    gradient = tape.gradient(y, x).numpy()
    np.testing.assert_array_equal(gradient, [[0.0, 1.0, 1.0, 1.0, 0.0, 0.0]])


def test_moving_ranges_update_in_training_only():
    quant = FakeQuant(ranges="moving", momentum=0.75)
    first = tf.constant([[-2.0, 1.0, 3.0]])
    quant(first)
    assert float(quant.initialized) == 0.0
    quant(first, training=True)
    assert float(quant.min_range) == pytest.approx(-2.0)
    assert float(quant.max_range) == pytest.approx(3.0)
    second = tf.constant([[0.5, 7.0]])
    quant(second, training=True)
    assert float(quant.min_range) == pytest.approx(0.75 * -2.0 + 0.25 * 0.0)
    assert float(quant.max_range) == pytest.approx(0.75 * 3.0 + 0.25 * 7.0)
    frozen = (float(quant.min_range), float(quant.max_range))
    y = keras.ops.convert_to_numpy(quant(tf.constant([[-50.0, 50.0]])))
    assert (float(quant.min_range), float(quant.max_range)) == frozen
    np.testing.assert_allclose(y, [[frozen[0], frozen[1]]], atol=0.03)


def test_moving_range_starts_from_given_values():
    quant = FakeQuant(ranges="moving", min_value=-1.0, max_value=1.0, momentum=0.5)
    quant(tf.constant([[0.0, 3.0]]), training=True)
    assert float(quant.max_range) == pytest.approx(2.0)
    assert float(quant.min_range) == pytest.approx(-0.5)


def test_per_channel_ranges_differ_from_per_tensor():
    x = np.tile(np.float32([[-4.0, -0.4, 0.4, 4.0]]).T, (1, 2)).reshape(1, 4, 2)
    per_channel = FakeQuant(signed=True, max_value=[0.5, 3.0], per_channel=True)
    y = keras.ops.convert_to_numpy(per_channel(x))
    np.testing.assert_allclose(y[0, :, 0], [-0.5, -0.4, 0.4, 0.5], atol=0.5 / 127)
    np.testing.assert_allclose(y[0, :, 1], [-3.0, -0.4, 0.4, 3.0], atol=3.0 / 127)
    per_tensor = FakeQuant(signed=True, max_value=3.0)
    z = keras.ops.convert_to_numpy(per_tensor(x))
    np.testing.assert_array_equal(z[..., 0], z[..., 1])

    moving = FakeQuant(signed=True, ranges="moving", per_channel=True)
    scaled = x * np.float32([1.0, 0.25])
    moving(scaled, training=True)
    np.testing.assert_allclose(moving.max_range.numpy(), [4.0, 1.0])
    np.testing.assert_allclose(moving.min_range.numpy(), [-4.0, -1.0])


def test_xla_training_step_matches_eager():
    x = tf.random.stateless_normal((2, 6, 6, 4), seed=(1, 2))
    eager = FakeQuant(ranges="moving", per_channel=True, name="eager")
    compiled = FakeQuant(ranges="moving", per_channel=True, name="compiled")

    @tf.function(jit_compile=True)
    def step(inputs):
        with tf.GradientTape() as tape:
            tape.watch(inputs)
            outputs = compiled(inputs, training=True)
            total = tf.reduce_sum(outputs)
        return outputs, tape.gradient(total, inputs)

    outputs, gradient = step(x)
    expected = eager(x, training=True).numpy()
    np.testing.assert_allclose(outputs.numpy(), expected, atol=1e-5)
    np.testing.assert_allclose(compiled.max_range.numpy(), eager.max_range.numpy())
    assert set(np.unique(gradient.numpy())) <= {0.0, 1.0}
    # Nudging 0 onto the grid may leave a channel's extreme value just outside.
    assert np.sum(gradient.numpy() == 0.0) <= 2 * x.shape[-1]


def test_keras_round_trip_keeps_learned_ranges(tmp_path):
    inputs = keras.Input((8, 8, 3))
    x = FakeQuant(signed=True, max_value=1.0)(inputs)
    x = keras.layers.Conv2D(4, 3, padding="same")(x)
    outputs = FakeQuant(ranges="moving", per_channel=True, momentum=0.9)(x)
    model = keras.Model(inputs, outputs)
    data = np.random.default_rng(0).uniform(-1, 1, (2, 8, 8, 3)).astype("float32")
    model(data, training=True)
    path = tmp_path / "fake_quant.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_array_equal(
        loaded.predict(data, verbose=0), model.predict(data, verbose=0)
    )
    original, restored = model.layers[-1], loaded.layers[-1]
    assert restored.get_config() == original.get_config()
    np.testing.assert_array_equal(
        restored.max_range.numpy(), original.max_range.numpy()
    )
    assert float(restored.initialized) == 1.0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"ranges": "ema", "max_value": 1.0}, "ranges must be one of"),
        ({"num_bits": 1, "max_value": 1.0}, "num_bits"),
        ({}, "needs max_value"),
        ({"signed": True, "min_value": -1.0, "max_value": 1.0}, "symmetric"),
        ({"momentum": 1.0, "ranges": "moving"}, "momentum"),
    ],
)
def test_bad_arguments_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        FakeQuant(**kwargs)


def test_bad_ranges_are_refused_at_build():
    with pytest.raises(ValueError, match="must contain 0"):
        FakeQuant(min_value=1.0, max_value=2.0)(np.ones((1, 3), np.float32))
    with pytest.raises(ValueError, match=r"shape \(3,\)"):
        FakeQuant(max_value=[1.0, 2.0], per_channel=True)(np.ones((1, 3), np.float32))
    with pytest.raises(ValueError, match="known last axis"):
        FakeQuant(max_value=1.0, per_channel=True).build((1, None))
