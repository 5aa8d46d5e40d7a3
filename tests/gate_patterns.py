"""Shared test helpers: random hard gate patterns and equivalence checks."""

import keras
import numpy as np

import keras_layers

RNG = np.random.default_rng(0)


def images(shape=(2, 64, 64, 3)):
    return RNG.uniform(-1.0, 1.0, shape).astype("float32")


def gate_list(model):
    found = []
    for layer in model.layers:
        if isinstance(layer, keras_layers.ChannelGate):
            found.append(layer)
        elif isinstance(layer, keras_layers.SelectiveActivationConv2D):
            found.append(layer.gate)
    return found


def randomize_gates(model, keep=0.5, shift=False, closed=0.0):
    """Random hard decisions on every gate; returns {gate name: keep mask}.

    Each gate keeps one channel at least, except with probability `closed`,
    where it removes all of them.
    """
    masks = {}
    for gate in gate_list(model):
        channels = gate.channels
        alive = RNG.uniform(size=channels) < keep
        alive[RNG.integers(channels)] = True
        if closed and RNG.uniform() < closed:
            alive[:] = False
        if gate.mode == "binary":
            gate.alpha.assign(np.where(alive, 0.9, 0.1))
        elif gate.mode == "dmad":
            gate.weight.assign(np.where(alive, 0.3, -0.3))
        elif gate.mode == "gumbel":
            gate.logits.assign(np.where(alive, 2.0, -2.0))
        else:
            gamma = RNG.uniform(0.5, 1.5, channels) * RNG.choice([-1, 1], channels)
            gate.gamma.assign(np.where(alive, gamma, 0.0))
            if shift:
                gate.beta.assign(RNG.normal(0.0, 0.5, channels))
        masks[gate.name] = alive
    return masks


def randomize_norms(model):
    """Non-trivial affine and batch statistics so folding is really tested."""
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            channels = layer.gamma.shape[0]
            layer.moving_mean.assign(RNG.normal(0, 0.3, channels))
            layer.moving_variance.assign(RNG.uniform(0.5, 2.0, channels))
            layer.gamma.assign(RNG.uniform(0.5, 1.5, channels))
            layer.beta.assign(RNG.normal(0, 0.3, channels))
        elif isinstance(layer, keras_layers.InstanceNormalization) and layer.scale:
            layer.gamma.assign(RNG.uniform(0.5, 1.5, layer.gamma.shape[0]))
            layer.beta.assign(RNG.normal(0, 0.3, layer.beta.shape[0]))


def assert_equivalent(model, small, x):
    expected = np.asarray(model(x, training=False))
    got = np.asarray(small(x, training=False))
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)


def assert_plain(model):
    for layer in model.layers:
        assert not isinstance(
            layer,
            (
                keras_layers.ChannelGate,
                keras_layers.SelectiveActivationConv2D,
                keras_layers.SuperConv2D,
                keras_layers.SuperConv2DTranspose,
                keras_layers.SuperSeparableConv2D,
            ),
        ), layer.name
