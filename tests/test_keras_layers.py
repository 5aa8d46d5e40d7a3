"""Tests of every layer in `keras_layers`: numerics, gradients, save/load, XLA."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_layers import ChannelGate, SelectiveActivationConv2D

RNG = np.random.default_rng(0)


def _images(shape=(2, 8, 8, 3)) -> np.ndarray:
    return RNG.uniform(-1.0, 1.0, size=shape).astype("float32")


def _instance_norm_reference(x, gamma=None, beta=None, eps=1e-5):
    """PyTorch `InstanceNorm2d` in NumPy: biased variance, eps in the sqrt."""
    x = x.astype("float64")
    mean = x.mean(axis=(1, 2), keepdims=True)
    var = ((x - mean) ** 2).mean(axis=(1, 2), keepdims=True)
    y = (x - mean) / np.sqrt(var + eps)
    if gamma is not None:
        y = y * gamma
    if beta is not None:
        y = y + beta
    return y


def _conv_reference(x, kernel, bias, strides, padding):
    y = tf.nn.conv2d(x, kernel, strides=strides, padding=padding.upper()).numpy()
    return y if bias is None else y + bias


def _round_trip(layer, x, tmp_path, **call_kwargs):
    """Saves a one-layer model as .keras, reloads it, compares outputs/config."""
    inputs = keras.Input(x.shape[1:])
    model = keras.Model(inputs, layer(inputs, **call_kwargs))
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_array_equal(model.predict(x, verbose=0), loaded(x).numpy())
    loaded_layer = loaded.layers[-1]
    assert type(loaded_layer) is type(layer)
    assert loaded_layer.get_config() == layer.get_config()
    for original, restored in zip(layer.weights, loaded_layer.weights, strict=True):
        np.testing.assert_array_equal(original.numpy(), restored.numpy())
    return loaded_layer


def _xla_training_step(layer, x, **call_kwargs):
    """Runs forward + backward in training mode under XLA; returns the output."""

    @tf.function(jit_compile=True)
    def step(inputs):
        with tf.GradientTape() as tape:
            outputs = layer(inputs, training=True, **call_kwargs)
            loss = tf.reduce_mean(tf.square(outputs))
        grads = tape.gradient(loss, layer.trainable_variables)
        return outputs, grads

    outputs, grads = step(tf.constant(x))
    for grad in grads:
        assert grad is not None
        assert np.all(np.isfinite(grad.numpy()))
    return outputs.numpy()


# SelectiveActivationConv2D ------------------------------------------------


def _selective_reference(layer, x):
    conv = layer.conv
    y = _conv_reference(
        x,
        conv.kernel.numpy(),
        conv.bias.numpy() if conv.use_bias else None,
        conv.strides,
        conv.padding,
    )
    if layer.norm_type == "instance":
        y = _instance_norm_reference(y)
    elif layer.norm_type == "batch":
        norm = layer.norm
        y = (y - norm.moving_mean.numpy()) / np.sqrt(
            norm.moving_variance.numpy() + norm.epsilon
        ) * norm.gamma.numpy() + norm.beta.numpy()
    return y * (layer.gate.alpha.numpy() >= layer.gate.threshold)


@pytest.mark.parametrize("norm", [None, "instance", "batch"])
def test_selective_activation_equals_gate_norm_conv(norm, tmp_path):
    layer = SelectiveActivationConv2D(6, 4, strides=2, padding="same", norm=norm)
    x = _images((2, 16, 16, 3))
    layer.build(x.shape)
    assert isinstance(layer.conv, keras.layers.Conv2D)
    assert isinstance(layer.gate, ChannelGate)
    assert layer.gate.mode == "binary"
    if norm == "batch":
        layer.norm.moving_mean.assign(RNG.normal(size=6).astype("float32"))
        layer.norm.moving_variance.assign(RNG.uniform(0.5, 2, 6).astype("float32"))
        layer.norm.gamma.assign(RNG.normal(size=6).astype("float32"))
        layer.norm.beta.assign(RNG.normal(size=6).astype("float32"))
    layer.conv.bias.assign(RNG.normal(size=6).astype("float32"))
    layer.gate.alpha.assign([0.0, 0.2, 0.5, 0.7, 1.0, 0.49])

    y = layer(x).numpy()
    assert y.shape == (2, 8, 8, 6)
    np.testing.assert_allclose(y, _selective_reference(layer, x), atol=1e-4)
    assert np.all(y[..., [0, 1, 5]] == 0.0)

    loaded = _round_trip(layer, x, tmp_path)
    np.testing.assert_allclose(loaded(x).numpy(), y, atol=1e-6)
    _xla_training_step(layer, x)


def test_selective_activation_sublayer_types():
    instance = SelectiveActivationConv2D(4, 3, norm="instance", gate_mode="dmad")
    assert not instance.norm.center and not instance.norm.scale
    assert instance.gate.mode == "dmad"
    assert isinstance(
        SelectiveActivationConv2D(4, 3, norm="batch").norm,
        keras.layers.BatchNormalization,
    )
    assert SelectiveActivationConv2D(4, 3).norm is None


def test_selective_activation_rejects_bad_arguments():
    with pytest.raises(ValueError, match="norm must be one of"):
        SelectiveActivationConv2D(4, 3, norm="group")
    with pytest.raises(ValueError, match="mode must be one of"):
        SelectiveActivationConv2D(4, 3, gate_mode="hard")
    with pytest.raises(ValueError, match="rank 4"):
        SelectiveActivationConv2D(4, 3)(np.zeros((2, 8, 3), "float32"))
