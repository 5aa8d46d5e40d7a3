"""Tests of every layer in `keras_layers`: numerics, gradients, save/load, XLA."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_layers import (
    ChannelGate,
    InstanceNormalization,
    ReflectionPadding2D,
    SelectiveActivationConv2D,
    SuperBatchNormalization,
    SuperConv2D,
    SuperConv2DTranspose,
    SuperInstanceNormalization,
    SuperSeparableConv2D,
)
from keras_layers.conv import plain_class
from keras_layers.gates import dmad_mask

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
    np.testing.assert_allclose(model(x).numpy(), loaded(x).numpy(), atol=1e-6)
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


# InstanceNormalization, ReflectionPadding2D --------------------------------


@pytest.mark.parametrize("affine", [False, True])
def test_instance_norm_matches_pytorch_reference(affine, tmp_path):
    x = 3.0 * _images((2, 8, 8, 5)) + np.arange(5, dtype="float32")
    x[1, ..., 2] = 0.25
    layer = InstanceNormalization(center=affine, scale=affine)
    layer.build(x.shape)
    gamma = beta = None
    if affine:
        gamma = RNG.normal(size=5).astype("float32")
        beta = RNG.normal(size=5).astype("float32")
        layer.gamma.assign(gamma)
        layer.beta.assign(beta)
    else:
        assert layer.weights == []
    y = layer(x).numpy()
    np.testing.assert_allclose(
        y, _instance_norm_reference(x, gamma, beta), rtol=1e-5, atol=1e-5
    )
    constant_channel = 0.0 if beta is None else beta[2]
    np.testing.assert_allclose(y[1, ..., 2], constant_channel, atol=1e-6)
    _round_trip(layer, x, tmp_path)
    np.testing.assert_allclose(_xla_training_step(layer, x), y, atol=1e-5)


@pytest.mark.parametrize(
    ("padding", "expected"),
    [
        (((1, 2), (3, 0)), ((1, 2), (3, 0))),
        ((2, 1), ((2, 2), (1, 1))),
        (3, ((3, 3), (3, 3))),
    ],
)
def test_reflection_padding_matches_numpy(padding, expected, tmp_path):
    x = _images((2, 5, 6, 3))
    layer = ReflectionPadding2D(padding)
    y = layer(x).numpy()
    reference = np.pad(x, ((0, 0), *expected, (0, 0)), mode="reflect")
    np.testing.assert_array_equal(y, reference)
    assert layer.compute_output_shape((None, 5, 6, 3)) == (None, *reference.shape[1:])
    _round_trip(layer, x, tmp_path)
    np.testing.assert_array_equal(_xla_training_step(layer, x), reference)


def test_reflection_padding_rejects_padding_larger_than_input():
    with pytest.raises(ValueError, match="larger than the padding"):
        ReflectionPadding2D(((0, 0), (4, 1)))(np.zeros((1, 6, 4, 2), "float32"))


# ChannelGate --------------------------------------------------------------

GATE_PARAMETERS = {
    "binary": ("alpha", [0.0, 0.3, 0.5, 0.49, 0.9, 1.0]),
    "dmad": ("weight", [-1.0, -0.1, 0.0, 0.2, 0.7, 2.0]),
    "scale": ("gamma", [-1.5, 0.0, 0.3, 0.0, 2.0, -0.2]),
    "gumbel": ("logits", [-3.0, -0.5, 0.0, 0.5, 2.0, 4.0]),
}
EXPECTED_KEEP = {
    "binary": [False, False, True, False, True, True],
    "dmad": [False, False, False, True, True, True],
    "scale": [True, False, True, False, True, True],
    "gumbel": [False, False, False, True, True, True],
}


def _gate(mode: str, **kwargs) -> ChannelGate:
    gate = ChannelGate(mode=mode, **kwargs)
    gate.build((None, 6))
    name, values = GATE_PARAMETERS[mode]
    getattr(gate, name).assign(np.asarray(values, "float32"))
    if mode == "scale":
        gate.beta.assign(np.linspace(-1, 1, 6).astype("float32"))
    return gate


@pytest.mark.parametrize("mode", sorted(GATE_PARAMETERS))
def test_gate_inference_is_channel_affine(mode, tmp_path):
    gate = _gate(mode)
    x = _images((2, 4, 4, 6))
    scale, shift = gate.channel_affine()
    assert scale.shape == shift.shape == (6,)
    np.testing.assert_allclose(gate(x).numpy(), x * scale + shift, atol=1e-6)
    np.testing.assert_array_equal(gate.keep_mask(), EXPECTED_KEEP[mode])
    np.testing.assert_array_equal(gate.keep_mask(), scale != 0.0)
    if mode != "scale":
        np.testing.assert_array_equal(shift, 0.0)
        np.testing.assert_array_equal(scale, np.asarray(EXPECTED_KEEP[mode], float))
    loaded = _round_trip(gate, x, tmp_path)
    np.testing.assert_array_equal(loaded.keep_mask(), gate.keep_mask())
    _xla_training_step(gate, x)


def test_binary_gate_straight_through_gradient_and_clipping():
    gate = _gate("binary")
    x = _images((2, 4, 4, 6))
    upstream = _images((2, 4, 4, 6))
    with tf.GradientTape() as tape:
        y = gate(x, training=True)
        loss = tf.reduce_sum(upstream * y)
    np.testing.assert_array_equal(y.numpy(), x * EXPECTED_KEEP["binary"])
    grad = tape.gradient(loss, gate.alpha)
    np.testing.assert_allclose(
        grad.numpy(), (upstream * x).sum(axis=(0, 1, 2)), rtol=1e-5, atol=1e-5
    )
    direction = np.asarray([1.0, -1.0, 1.0, -1.0, 1.0, -1.0], "float32")
    keras.optimizers.SGD(learning_rate=10.0).apply([direction], [gate.alpha])
    np.testing.assert_array_equal(gate.alpha.numpy(), [0, 1, 0, 1, 0, 1])


def test_dmad_mask_points_gradient_and_hard_step():
    b = 2.0
    points = np.asarray([-b, -b / 2, 0.0, b / 2, b], "float32")
    np.testing.assert_allclose(
        dmad_mask(points, b).numpy(), [0.0, 0.125, 0.5, 0.875, 1.0], atol=1e-7
    )
    weight = tf.Variable([-3.0, -2.5, -1.0, 0.5, 2.5, 9.0])
    with tf.GradientTape() as tape:
        mask = dmad_mask(weight, b)
    grad = tape.gradient(mask, weight).numpy()
    np.testing.assert_array_equal(grad[[0, 1, 4, 5]], 0.0)
    np.testing.assert_allclose(grad[[2, 3]], [0.25, 0.375], atol=1e-6)
    np.testing.assert_array_equal(mask.numpy()[[0, 1, 4, 5]], [0, 0, 1, 1])

    gate = _gate("dmad")
    gate.set_bound(1.0)
    np.testing.assert_allclose(
        gate.mask(training=True).numpy(),
        dmad_mask(GATE_PARAMETERS["dmad"][1], 1.0).numpy(),
    )
    gate.set_bound(0.0)
    np.testing.assert_array_equal(
        gate.mask(training=True).numpy(), np.asarray(EXPECTED_KEEP["dmad"], float)
    )
    gate.set_bound(-1.0)
    assert float(gate.bound.numpy()) == 0.0


def test_scale_gate_proximal_step_soft_thresholds():
    gate = _gate("scale")
    gamma = np.asarray([-1.5, -0.05, 0.0, 0.09, 2.0, 0.1], "float32")
    gate.gamma.assign(gamma)
    gate.proximal_step(0.1)
    expected = np.sign(gamma) * np.maximum(np.abs(gamma) - np.float32(0.1), 0.0)
    np.testing.assert_array_equal(gate.gamma.numpy(), expected)
    np.testing.assert_array_equal(
        gate.keep_mask(), [True, False, False, False, True, False]
    )
    x = _images((1, 2, 2, 6))
    np.testing.assert_allclose(
        gate(x, training=True).numpy(), x * expected + gate.beta.numpy(), atol=1e-6
    )


def test_gumbel_gate_inference_training_and_straight_through():
    gate = _gate("gumbel", temperature=1.0)
    x = np.ones((1, 1, 1, 6), "float32")
    np.testing.assert_array_equal(
        gate(x).numpy().ravel(), np.asarray(GATE_PARAMETERS["gumbel"][1]) > 0
    )
    gate.logits.assign(np.linspace(-2.0, 2.0, 6).astype("float32"))
    samples = np.stack([gate(x, training=True).numpy().ravel() for _ in range(50)])
    assert np.all((samples > 0.0) & (samples < 1.0))
    assert len(np.unique(samples[:, 0])) == 50

    hard = _gate("gumbel", straight_through=True)
    with tf.GradientTape() as tape:
        y = hard(x, training=True)
        loss = tf.reduce_sum(y * np.arange(1, 7, dtype="float32"))
    assert set(np.unique(y.numpy())) <= {0.0, 1.0}
    assert np.any(tape.gradient(loss, hard.logits).numpy() != 0.0)

    gate.set_logits([[1.0, -1.0, 0.0, 0.1, -0.1, 5.0]])
    np.testing.assert_array_equal(
        gate.keep_mask(), [True, False, False, True, False, True]
    )


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
    layer = SelectiveActivationConv2D(
        6,
        (4, 4),
        strides=2,
        padding="same",
        norm=norm,
        kernel_initializer=keras.initializers.RandomNormal(stddev=0.02),
        name="unit",
    )
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


# Super layers -------------------------------------------------------------

SUPER_CASES = {
    "conv": (SuperConv2D, keras.layers.Conv2D, {"strides": 2, "padding": "same"}),
    "transpose": (
        SuperConv2DTranspose,
        keras.layers.Conv2DTranspose,
        {"strides": 2, "padding": "same", "output_padding": 1},
    ),
    "separable": (
        SuperSeparableConv2D,
        keras.layers.SeparableConv2D,
        {"padding": "same", "depth_multiplier": 2},
    ),
}


def _sliced_weights(name: str, weights: list[np.ndarray], k: int) -> list:
    if name == "conv":
        kernel, bias = weights
        return [kernel[..., :k], bias[:k]]
    if name == "transpose":
        kernel, bias = weights
        return [kernel[:, :, :k, :], bias[:k]]
    depthwise, pointwise, bias = weights
    return [depthwise, pointwise[..., :k], bias[:k]]


def _super_layer(name: str, filters: int = 6, input_channels: int = 3):
    super_cls, _, kwargs = SUPER_CASES[name]
    layer = super_cls(filters, 3, bias_initializer="random_normal", **kwargs)
    layer.build((None, 8, 8, input_channels))
    return layer


def _trainable_numpy(layer) -> list[np.ndarray]:
    return [w.numpy() for w in layer.trainable_weights]


@pytest.mark.parametrize("name", sorted(SUPER_CASES))
@pytest.mark.parametrize("k", [1, 4, 6])
def test_super_layer_equals_sliced_plain_layer(name, k):
    _, plain_cls, kwargs = SUPER_CASES[name]
    layer = _super_layer(name)
    assert layer.active_filters.dtype == "int32"
    assert not layer.active_filters.trainable
    assert int(layer.active_filters.numpy()) == 6
    layer.set_active_filters(k)
    assert int(layer.active_filters.numpy()) == k
    x = _images((2, 8, 8, 3))
    y = layer(x).numpy()

    plain = plain_cls(k, 3, **kwargs)
    plain.build(x.shape)
    plain.set_weights(_sliced_weights(name, _trainable_numpy(layer), k))
    assert y.shape[-1] == 6
    np.testing.assert_allclose(y[..., :k], plain(x).numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(y[..., k:], 0.0)


@pytest.mark.parametrize("name", sorted(SUPER_CASES))
def test_super_layer_call_argument_overrides_variable(name):
    layer = _super_layer(name)
    layer.set_active_filters(5)
    x = _images((2, 8, 8, 3))
    full = layer(x, active_filters=6).numpy()
    for k in (2, np.int64(3), tf.constant(4)):
        y = layer(x, active_filters=k).numpy()
        np.testing.assert_array_equal(y[..., :k], full[..., :k])
        np.testing.assert_array_equal(y[..., int(k) :], 0.0)
    assert int(layer.active_filters.numpy()) == 5
    np.testing.assert_array_equal(layer(x).numpy()[..., 5:], 0.0)
    np.testing.assert_array_equal(layer(x).numpy()[..., :5], full[..., :5])


def test_super_layers_chain_like_sliced_network():
    first = _super_layer("conv", filters=6, input_channels=3)
    second = _super_layer("transpose", filters=5, input_channels=6)
    first.set_active_filters(4)
    second.set_active_filters(2)
    x = _images((2, 8, 8, 3))
    y = second(first(x)).numpy()

    plain_first = keras.layers.Conv2D(4, 3, strides=2, padding="same")
    plain_first.build(x.shape)
    plain_first.set_weights(_sliced_weights("conv", _trainable_numpy(first), 4))
    kernel, bias = _trainable_numpy(second)
    plain_second = keras.layers.Conv2DTranspose(
        2, 3, strides=2, padding="same", output_padding=1
    )
    plain_second.build((None, 4, 4, 4))
    plain_second.set_weights([kernel[:, :, :2, :4], bias[:2]])
    expected = plain_second(plain_first(x)).numpy()
    np.testing.assert_allclose(y[..., :2], expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(y[..., 2:], 0.0)


@pytest.mark.parametrize("name", sorted(SUPER_CASES))
def test_super_layer_rejects_bad_widths(name):
    layer = _super_layer(name)
    x = _images((1, 8, 8, 3))
    for bad in (0, 7, -1):
        with pytest.raises(ValueError, match=r"active_filters must be in \[1, 6\]"):
            layer.set_active_filters(bad)
        with pytest.raises(ValueError, match=r"must be in \[1, 6\].*got"):
            layer(x, active_filters=bad)
    for bad in (2.5, True, "3"):
        with pytest.raises(ValueError, match="active_filters must be an int"):
            layer.set_active_filters(bad)
    assert int(layer.active_filters.numpy()) == 6
    unbuilt = SUPER_CASES[name][0](6, 3)
    with pytest.raises(ValueError, match="build the layer"):
        unbuilt.set_active_filters(3)
    with pytest.raises(ValueError, match="channels_last"):
        SUPER_CASES[name][0](6, 3, data_format="channels_first")


@pytest.mark.parametrize("name", sorted(SUPER_CASES))
def test_super_layer_round_trip_and_xla(name, tmp_path):
    layer = _super_layer(name)
    layer.set_active_filters(4)
    x = _images((2, 8, 8, 3))
    loaded = _round_trip(layer, x, tmp_path)
    assert int(loaded.active_filters.numpy()) == 4
    np.testing.assert_array_equal(loaded(x).numpy()[..., 4:], 0.0)

    layer.set_active_filters(6)
    y = _xla_training_step(layer, x, active_filters=tf.constant(3))
    np.testing.assert_allclose(y, layer(x, active_filters=3).numpy(), atol=1e-5)
    np.testing.assert_array_equal(y[..., 3:], 0.0)

    @tf.function(jit_compile=True)
    def kernel_grad(inputs, k):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(layer(inputs, training=True, active_filters=k))
        return tape.gradient(loss, layer.trainable_weights[-2])

    grad = kernel_grad(tf.constant(x), tf.constant(2)).numpy()
    output_axis = 2 if name == "transpose" else 3
    assert np.all(np.take(grad, range(2, 6), axis=output_axis) == 0.0)
    assert np.any(np.take(grad, range(2), axis=output_axis) != 0.0)
    kernel_grad(tf.constant(x), tf.constant(5))
    assert kernel_grad.experimental_get_tracing_count() == 1


SUPER_NORMS = {
    "instance": (
        SuperInstanceNormalization,
        InstanceNormalization,
        {"center": True, "scale": True},
    ),
    "batch": (SuperBatchNormalization, keras.layers.BatchNormalization, {}),
}


def _super_norm(name: str):
    super_cls, plain_cls, kwargs = SUPER_NORMS[name]
    layer = super_cls(**kwargs)
    layer.build((None, 8, 8, 6))
    for variable in layer.weights:
        if variable.name in ("gamma", "beta", "moving_mean"):
            variable.assign(RNG.normal(0.5, 0.5, variable.shape).astype("float32"))
        if variable.name == "moving_variance":
            variable.assign(RNG.uniform(0.5, 2.0, variable.shape).astype("float32"))
    plain = plain_cls(**kwargs)
    plain.build((None, 8, 8, 6))
    plain.set_weights([w.numpy() for w in layer.weights if w.name != "active_filters"])
    return layer, plain


@pytest.mark.parametrize("name", sorted(SUPER_NORMS))
def test_super_norm_zeroes_channels_beyond_width(name, tmp_path):
    layer, plain = _super_norm(name)
    assert plain_class(layer) is SUPER_NORMS[name][1]
    assert layer.filters == 6 and int(layer.active_filters.numpy()) == 6
    x = _images((2, 8, 8, 6))
    np.testing.assert_allclose(layer(x).numpy(), plain(x).numpy(), atol=1e-6)
    layer.set_active_filters(4)
    y = layer(x).numpy()
    # An affine/batch norm would emit its offset on a switched-off channel.
    assert np.abs(plain(np.zeros_like(x)).numpy()[..., 4:]).max() > 0.01
    np.testing.assert_array_equal(y[..., 4:], 0.0)
    np.testing.assert_allclose(y[..., :4], plain(x).numpy()[..., :4], atol=1e-6)
    loaded = _round_trip(layer, x, tmp_path)
    assert int(loaded.active_filters.numpy()) == 4
    y = _xla_training_step(layer, x, active_filters=tf.constant(2))
    np.testing.assert_array_equal(y[..., 2:], 0.0)
    with pytest.raises(ValueError, match=r"active_filters must be in \[1, 6\]"):
        layer.set_active_filters(7)
    with pytest.raises(ValueError, match="build the layer"):
        SUPER_NORMS[name][0]().set_active_filters(3)


def test_super_batch_norm_rejects_other_axes():
    with pytest.raises(ValueError, match="axis=-1"):
        SuperBatchNormalization(axis=1)


def test_plain_class_of_super_convolutions():
    assert plain_class(SuperConv2D) is keras.layers.Conv2D
    assert plain_class(SuperConv2DTranspose(4, 3)) is keras.layers.Conv2DTranspose
    assert plain_class(SuperSeparableConv2D) is keras.layers.SeparableConv2D
    assert plain_class(InstanceNormalization) is InstanceNormalization
