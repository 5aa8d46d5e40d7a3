"""keras_layers.driven_gates / set_keeps: gates driven by an agent's tensor."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_layers
import tfgancompress as tgc
from keras_layers import ChannelGate, driven_gates, set_keeps

RNG = np.random.default_rng(0)
X = RNG.uniform(-1.0, 1.0, (2, 32, 32, 3)).astype("float32")


def _model():
    return tgc.models.resnet_generator(ngf=4, n_blocks=1, gated="binary")


class Agent(keras.Model):
    """A toy pruning agent: a learned embedding -> a sigmoid keep per channel."""

    def __init__(self, widths):
        super().__init__()
        self.heads = [keras.layers.Dense(w, activation="sigmoid") for w in widths]
        self.embedding = tf.constant(RNG.normal(size=(1, 4)), tf.float32)

    def call(self, _=None):
        return [tf.reshape(head(self.embedding), (-1,)) for head in self.heads]


def _loss_and_grads(model, agent, gates):
    with tf.GradientTape() as tape:
        with driven_gates(dict(zip(gates, agent(), strict=True))):
            outputs = model(X, training=True)
        loss = tf.reduce_mean(tf.square(outputs))
    return loss, tape.gradient(loss, agent.trainable_variables)


def _small_model():
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Conv2D(4, 3, padding="same")(inputs)
    x = keras_layers.InstanceNormalization()(x)
    x = ChannelGate(mode="gumbel", name="gate1")(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.Conv2D(6, 3, strides=2, padding="same")(x)
    x = ChannelGate(mode="binary", name="gate2")(x)
    return keras.Model(inputs, keras.layers.Conv2D(3, 1)(x))


def test_gradient_reaches_the_agent_eagerly_in_graphs_and_xla():
    model = _small_model()
    gates = [model.get_layer("gate1"), model.get_layer("gate2")]
    agent = Agent([4, 6])
    loss, grads = _loss_and_grads(model, agent, gates)
    assert len(grads) == 4 and all(g is not None for g in grads)
    assert all(float(tf.reduce_max(tf.abs(g))) > 0 for g in grads)
    for jit in (False, True):
        step = tf.function(
            lambda: _loss_and_grads(model, agent, gates), jit_compile=jit
        )
        compiled_loss, compiled = step()
        np.testing.assert_allclose(compiled_loss.numpy(), loss.numpy(), rtol=1e-4)
        for got, want in zip(compiled, grads, strict=True):
            np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-3, atol=1e-7)


def test_outside_the_block_gates_are_untouched():
    model = _model()
    gate = model.get_layer("down1_gate")
    before = model(X, training=False).numpy()
    alpha = gate.alpha.numpy()
    mask = tf.Variable(tf.zeros(8))
    with tf.GradientTape() as tape:
        with driven_gates({gate: mask}):
            inside = model(X, training=False)
        outside = model(X, training=False)
    assert tape.gradient(outside, mask) is None
    assert np.abs(inside.numpy() - before).max() > 1e-3
    np.testing.assert_array_equal(outside.numpy(), before)
    np.testing.assert_array_equal(gate.alpha.numpy(), alpha)


def test_set_keeps_makes_the_gates_what_the_agent_drove():
    model = _model()
    masks = {
        model.get_layer(name): (RNG.uniform(size=width) < 0.5).astype("float32")
        for name, width in (("stem_gate", 4), ("block1_gate1", 16), ("up1_gate", 8))
    }
    for mask in masks.values():
        mask[0] = 1.0
    with driven_gates(masks):
        driven = model(X, training=False).numpy()
    set_keeps(masks)
    for gate, mask in masks.items():
        np.testing.assert_array_equal(gate.keep_mask(), mask == 1.0)
    np.testing.assert_allclose(model(X, training=False).numpy(), driven, atol=1e-6)
    small = tgc.slim(model)
    np.testing.assert_allclose(small(X).numpy(), driven, atol=1e-4)
    assert (
        small.get_layer("block1_conv1").filters
        == masks[model.get_layer("block1_gate1")].sum()
    )


def test_per_sample_masks():
    model = _model()
    gate = model.get_layer("block1_gate1")
    per_sample = np.ones((2, 16), "float32")
    per_sample[1, ::2] = 0.0
    with driven_gates({gate: per_sample}):
        both = model(X, training=False).numpy()
    np.testing.assert_allclose(both[:1], model(X[:1], training=False), atol=1e-6)
    with driven_gates({gate: per_sample[1]}):
        second = model(X[1:], training=False).numpy()
    np.testing.assert_allclose(both[1:], second, atol=1e-6)


@pytest.mark.parametrize("mode", ["binary", "dmad", "scale", "gumbel"])
def test_blocks_nest_and_every_mode_is_driven(mode):
    gate = ChannelGate(mode=mode)
    x = tf.ones((1, 2, 2, 3))
    gate.build(x.shape)
    shift = 0.0
    if mode == "scale":
        gate.beta.assign([0.1, 0.2, 0.3])
        shift = gate.beta.numpy()
    own = gate(x, training=True).numpy() if mode != "gumbel" else None
    outer, inner = tf.constant([0.5, 1.0, 0.0]), tf.constant([2.0, 0.0, 1.0])
    with driven_gates({gate: outer}):
        with driven_gates({gate: inner}):
            np.testing.assert_allclose(gate(x, training=True)[0, 0, 0], inner + shift)
        np.testing.assert_allclose(gate(x, training=True)[0, 0, 0], outer + shift)
    if own is not None:
        np.testing.assert_allclose(gate(x, training=True).numpy(), own)


def test_set_keep_every_mode():
    for mode in ("binary", "dmad", "scale", "gumbel"):
        gate = ChannelGate(mode=mode)
        gate.build((None, 4))
        gate.set_keep([True, False, False, True])
        assert gate.keep_mask().tolist() == [True, False, False, True], mode
        gate.set_keep(np.ones(4, bool))
        assert gate.keep_mask().all(), mode


def test_bad_masks_are_named():
    gate = ChannelGate(name="g")
    gate.build((None, 4))
    with pytest.raises(TypeError, match="ChannelGate"), driven_gates({"g": 1}):
        pass
    shape = "gate 'g'.*C = 4.*got \\(3,\\)"
    with pytest.raises(ValueError, match=shape), driven_gates({gate: tf.ones(3)}):
        pass
    with pytest.raises(ValueError, match="gate 'g'"):
        set_keeps({gate: tf.ones((1, 1, 4))})
    assert keras_layers.gates._driven_mask(gate) is None
