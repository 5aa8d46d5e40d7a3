"""tgc.cost: MACs of the slimmed model, fast (exact) and differentiable."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from gate_patterns import gate_list, randomize_gates, randomize_norms

import keras_layers
import tfgancompress as tgc
from tfgancompress import surgery
from tfgancompress.cost import MacsEstimator, gate_macs

SHAPE = (32, 32, 3)


def _slim_macs(model, shape=SHAPE):
    return tgc.profile(tgc.slim(model), shape).macs


def _assert_float32_equal(estimate, macs):
    """Equal up to float32 rounding of a sum of a few dozen terms."""
    assert abs(float(estimate) - macs) <= 1e-6 * macs, (float(estimate), macs)


def _resnet():
    return tgc.models.resnet_generator(ngf=8, n_blocks=3, gated="binary")


def _mobile():
    return tgc.models.mobile_resnet_generator(ngf=8, n_blocks=3, gated="binary")


def _unet():
    model = tgc.models.unet_generator(
        ngf=8, num_downs=5, norm="instance", gated="binary", input_shape=SHAPE
    )
    randomize_norms(model)
    return model


def _discriminator():
    return tgc.models.patchgan_discriminator(ndf=8, conditional=True, gated=True)


def _hard_keeps(model):
    """The gates' current decisions as keeps, keyed by the gate layers."""
    return {
        gate: tf.constant(gate.keep_mask(), tf.float32) for gate in gate_list(model)
    }


@pytest.mark.parametrize("build", [_resnet, _mobile, _unet, _discriminator])
def test_hard_gates_cost_what_slim_keeps(build):
    model = build()
    shape = (32, 32, 6) if build is _discriminator else SHAPE
    estimator = MacsEstimator(model, shape)
    assert estimator.full_macs == tgc.profile(model, shape).macs
    for keep, closed in ((0.5, 0.0), (0.2, 0.0), (0.4, 0.3), (0.1, 0.5)):
        randomize_gates(model, keep=keep, closed=closed)
        macs = _slim_macs(model, shape)
        assert gate_macs(model, shape) == macs
        _assert_float32_equal(estimator(), macs)
        keeps = _hard_keeps(model)
        for gate in gate_list(model):  # the given keeps, not the gates, count
            gate.alpha.assign(np.ones(gate.channels))
        _assert_float32_equal(estimator(keeps), macs)
        assert gate_macs(model, shape) == estimator.full_macs


def test_whole_layer_removed_before_batch_norm():
    """A layer with every channel removed feeds 0 to the next conv, whose
    BatchNorm turns it into a nonzero constant: slim keeps carrier channels
    for it, gate_macs counts them, the estimator does not (documented)."""
    model = tgc.models.unet_generator(
        ngf=8, num_downs=5, gated="binary", input_shape=SHAPE
    )
    randomize_norms(model)
    estimator = MacsEstimator(model, SHAPE)
    randomize_gates(model, keep=0.5)  # every gate keeps a channel: exact
    _assert_float32_equal(estimator(), _slim_macs(model))
    model.get_layer("down2_gate").alpha.assign(np.zeros(16))
    macs = _slim_macs(model)
    assert gate_macs(model, SHAPE) == macs
    assert float(estimator()) < macs


def test_gate_macs_does_not_slim(monkeypatch):
    model = _resnet()
    randomize_gates(model, keep=0.3, closed=0.2)
    expected = _slim_macs(model)

    def forbidden(*args):
        raise AssertionError("gate_macs ran slim's analysis")

    monkeypatch.setattr(surgery, "_analyse", forbidden)
    monkeypatch.setattr(surgery, "_rebuild", forbidden)
    assert gate_macs(model, SHAPE) == expected
    assert gate_macs(model, (64, 64, 3)) > expected


def test_scale_gate_carriers_are_exact_in_gate_macs_only():
    """GAN Slimming: closed channels with beta > 0 feed zero padding / ConvT."""
    model = tgc.models.resnet_generator(ngf=8, n_blocks=2, gated="scale")
    masks = randomize_gates(model, keep=0.4)
    for gate in gate_list(model):
        gate.beta.assign(np.full(gate.channels, 0.3))
    macs = _slim_macs(model)
    assert gate_macs(model, SHAPE) == macs
    estimate = float(MacsEstimator(model, SHAPE)())
    assert estimate < macs
    # The estimate is slim's count once the removed channels hold zero,
    # i.e. without the carrier channels.
    for gate in gate_list(model):
        gate.beta.assign(np.where(masks[gate.name], 0.3, 0.0))
    _assert_float32_equal(estimate, _slim_macs(model))
    assert gate_macs(model, SHAPE) == _slim_macs(model)


def test_super_layers_count_at_active_width():
    inputs = keras.Input(SHAPE)
    x = keras_layers.SuperConv2D(8, 3, padding="same")(inputs)
    x = keras.layers.ReLU()(x)
    x = keras_layers.SuperSeparableConv2D(8, 3, padding="same")(x)
    x = keras_layers.InstanceNormalization()(x)
    x = keras_layers.ChannelGate(name="gate")(x)
    x = keras.layers.ReLU()(x)
    x = keras_layers.SuperConv2DTranspose(6, 3, strides=2, padding="same")(x)
    outputs = keras.layers.Conv2D(3, 1)(keras.layers.ReLU()(x))
    model = keras.Model(inputs, outputs)
    estimator = MacsEstimator(model, SHAPE)
    supers = [layer for layer in model.layers if hasattr(layer, "active_filters")]
    for widths in ((3, 5, 2), (8, 1, 6)):
        for layer, width in zip(supers, widths, strict=True):
            layer.set_active_filters(width)
        randomize_gates(model, keep=0.5)
        macs = _slim_macs(model)
        assert gate_macs(model, SHAPE) == macs
        _assert_float32_equal(estimator(), macs)


def test_gradient_flows_to_the_keeps_with_the_right_sign():
    model = _resnet()
    estimator = MacsEstimator(model, SHAPE)
    rng = np.random.default_rng(1)
    logits = {
        name: tf.Variable(rng.normal(1.0, 1.0, gate.channels), dtype=tf.float32)
        for name, gate in estimator.gates.items()
    }

    def macs():
        return estimator(
            {n: tf.sigmoid(tf.cast(v, tf.float32)) for n, v in logits.items()}
        )

    with tf.GradientTape() as tape:
        value = macs()
    grads = tape.gradient(value, logits)
    for name, grad in grads.items():
        assert np.all(grad.numpy() > 0), name
    # Against a central difference on one stem logit.
    step = 1e-2
    variable = logits["stem_gate"]
    original = variable.numpy()
    variable.assign(original + step * np.eye(8)[0])
    up = float(macs())
    variable.assign(original - step * np.eye(8)[0])
    down = float(macs())
    variable.assign(original)
    np.testing.assert_allclose(
        grads["stem_gate"].numpy()[0], (up - down) / (2 * step), rtol=1e-3
    )


def test_residual_group_lives_if_any_member_keeps():
    """Soft rule: a tied channel lives with probability 1 - prod(1 - p)."""
    model = _resnet()
    estimator = MacsEstimator(model, SHAPE)
    stream = tgc.surgery.channel_groups(model).tied[0]
    probabilities = [0.5, 0.6, 0.7, 0.8]
    spread = {
        name: tf.fill((32,), p) for name, p in zip(stream, probabilities, strict=True)
    }
    union = 1.0 - np.prod([1.0 - p for p in probabilities])
    # All on down2: a stream whose first member is removed carries only
    # constants, which slim removes whole (not the soft rule's subject).
    one = {name: tf.zeros(32) for name in stream}
    one[stream[0]] = tf.fill((32,), float(union))
    _assert_float32_equal(estimator(spread), float(estimator(one)))


def test_estimator_runs_in_tf_function_and_xla():
    model = _mobile()
    estimator = MacsEstimator(model, SHAPE)
    gates = list(estimator.gates.values())
    logits = [tf.Variable(tf.fill((g.channels,), 0.5)) for g in gates]

    def loss():
        with tf.GradientTape() as tape:
            keeps = {g: tf.sigmoid(v) for g, v in zip(gates, logits, strict=True)}
            value = estimator(keeps) / estimator.full_macs
        return value, tape.gradient(value, logits)

    eager = loss()
    for compiled in (tf.function(loss), tf.function(loss, jit_compile=True)):
        value, grads = compiled()
        np.testing.assert_allclose(value.numpy(), eager[0].numpy(), rtol=1e-5)
        for got, want in zip(grads, eager[1], strict=True):
            np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-4)


def test_bad_keeps_are_named():
    estimator = MacsEstimator(_resnet(), SHAPE)
    with pytest.raises(ValueError, match="Unknown gate 'nope'.*stem_gate"):
        estimator({"nope": tf.ones(8)})
    with pytest.raises(ValueError, match=r"stem_gate.*\(8,\), got \(4,\)"):
        estimator({"stem_gate": tf.ones(4)})
