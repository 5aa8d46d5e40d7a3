"""Pruning agents: keras_layers.PruningAgent and tgc.agents.GateAgent."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_layers
import tfgancompress as tgc
from keras_layers import PruningAgent, gumbel_sigmoid, resource_loss
from tfgancompress.agents import GateAgent, gate_units

SHAPE = (32, 32, 3)
D_SHAPE = (32, 32, 6)
RNG = np.random.default_rng(0)


def _generator():
    teacher = tgc.models.resnet_generator(ngf=8, n_blocks=2)
    return tgc.pruning.add_gates(teacher, "gumbel")


def _discriminator():
    return tgc.models.patchgan_discriminator(ndf=8, conditional=True, gated=True)


def test_gumbel_sigmoid_relaxed_and_hard():
    logits = tf.constant(np.linspace(-6.0, 6.0, 64), tf.float32)
    soft = gumbel_sigmoid(logits, 0.4, seed=1).numpy()
    assert soft.min() >= 0.0 and soft.max() <= 1.0
    assert 0.01 < soft.mean() < 0.99 and np.any((soft > 0.05) & (soft < 0.95))
    assert soft[-8:].min() > 0.5 and soft[:8].max() < 0.5  # |logit| >> noise
    with tf.GradientTape() as tape:
        tape.watch(logits)
        hard = gumbel_sigmoid(logits, 0.4, seed=1, hard=True)
    assert set(np.unique(hard.numpy())) <= {0.0, 1.0}
    assert float(tf.reduce_max(tf.abs(tape.gradient(hard, logits)))) > 0.0
    with pytest.raises(ValueError, match="temperature"):
        gumbel_sigmoid(logits, 0.0)


def test_resource_loss_is_zero_at_the_target_and_grows_away():
    values = [float(resource_loss(r, 0.05)) for r in (0.05, 0.1, 0.5, 1.0)]
    assert values[0] == 0.0
    assert values == sorted(values)
    assert values[-1] == pytest.approx(2 * np.log(1.95), rel=1e-6)


def test_agent_outputs_and_gradients():
    agent = PruningAgent([4, 8, 4], state_dim=3, seed=1)
    state = tf.constant([0.5, 1.0, 0.2])
    keeps = agent(state, training=True)
    assert [tuple(k.shape) for k in keeps] == [(4,), (8,), (4,)]
    hard = agent(state, training=False)
    assert all(set(np.unique(k.numpy())) <= {0.0, 1.0} for k in hard)
    # A fresh agent keeps every channel (offset 3 > |logits|).
    assert all(float(tf.reduce_min(k)) == 1.0 for k in hard)
    with tf.GradientTape() as tape:
        loss = tf.add_n([tf.reduce_sum(k) for k in agent(state, training=False)])
    grads = tape.gradient(loss, agent.trainable_variables)
    assert all(g is not None for g in grads)  # hard keeps pass gradients
    # The state changes the decision logits.
    moved = agent.logits(state * 0.0)[1] - agent.logits(state)[1]
    assert float(tf.reduce_max(tf.abs(moved))) > 1e-4


def test_agent_bad_arguments():
    with pytest.raises(ValueError, match="widths"):
        PruningAgent([])
    with pytest.raises(ValueError, match="temperature"):
        PruningAgent([4], temperature=0)
    with pytest.raises(ValueError, match="2 values"):
        PruningAgent([4], state_dim=2)(tf.zeros(3))
    with pytest.raises(ValueError, match="no state"):
        PruningAgent([4])(tf.zeros(3))


def test_agent_keras_round_trip(tmp_path):
    agent = PruningAgent([4, 8], state_dim=2, hidden_units=8, offset=1.0, seed=3)
    inputs = keras.Input((2,), batch_size=1)
    model = keras.Model(inputs, agent(inputs))
    path = str(tmp_path / "agent.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    state = np.array([[0.3, -0.7]], np.float32)
    expected = model.predict(state, verbose=0)
    for a, b in zip(expected, loaded.predict(state, verbose=0), strict=True):
        np.testing.assert_array_equal(a, b)
    config = loaded.layers[-1].get_config()
    assert config["widths"] == [4, 8] and config["offset"] == 1.0
    assert config["hidden_units"] == 8 and config["seed"] == 3


def test_units_tie_the_residual_stream():
    units = gate_units(_generator())
    assert ("down2_norm_gate", "block1_norm2_gate", "block2_norm2_gate") in units
    assert sum(len(u) for u in units) == 9 and len(units) == 7
    assert gate_units(_discriminator()) == [
        (f"layer{i}_conv_gate",) for i in range(1, 5)
    ]
    with pytest.raises(ValueError, match="no ChannelGate"):
        gate_units(tgc.models.resnet_generator(ngf=4, n_blocks=1))


def _random_hard_keeps(agent, closed=0.0):
    keeps = []
    for width in agent.widths:
        keep = (RNG.uniform(size=width) < RNG.uniform(0.2, 0.9)).astype("float32")
        keep[RNG.integers(width)] = 1.0
        if RNG.uniform() < closed:
            keep[:] = 0.0
        keeps.append(tf.constant(keep))
    return keeps


@pytest.mark.parametrize(
    "build, shape", [(_generator, SHAPE), (_discriminator, D_SHAPE)]
)
def test_differentiable_macs_equal_profile_of_slim_on_hard_gates(build, shape):
    network = build()
    agent = GateAgent(network, shape, target_ratio=0.1)
    assert agent.full_macs == tgc.profile(network, shape).macs
    for trial in range(4):
        keeps = _random_hard_keeps(agent, closed=0.2 if trial else 0.0)
        estimate = float(agent.macs(keeps))
        keras_layers.set_keeps(agent.masks(keeps))
        macs = tgc.profile(tgc.slim(network), shape).macs
        assert abs(estimate - macs) <= 1e-6 * macs, (trial, estimate, macs)
        ratio = float(agent.macs_ratio(keeps))
        assert float(agent.resource_loss(keeps)) == pytest.approx(
            2 * np.log(abs(ratio - 0.1) + 1), rel=1e-5
        )


def test_soft_keeps_give_macs_gradients_to_every_unit():
    agent = GateAgent(_generator(), SHAPE, target_ratio=0.05, seed=0)
    with tf.GradientTape() as tape:
        loss = agent.resource_loss(agent.keeps(training=True))
    grads = tape.gradient(loss, agent.agent.trainable_variables)
    variables = agent.agent.trainable_variables
    heads = [g for v, g in zip(variables, grads, strict=True) if "head" in v.path]
    assert len(heads) == 2 * len(agent.units)  # kernel + bias per unit
    assert all(float(tf.reduce_max(tf.abs(g))) > 0 for g in heads)


def test_masks_drive_the_gates_with_one_mask_per_unit():
    network = _generator()
    agent = GateAgent(network, SHAPE, target_ratio=0.5)
    keeps = _random_hard_keeps(agent)
    x = RNG.uniform(-1, 1, (2, *SHAPE)).astype("float32")
    with keras_layers.driven_gates(agent.masks(keeps)):
        driven = network(x, training=False).numpy()
    keras_layers.set_keeps(agent.masks(keeps))
    np.testing.assert_allclose(tgc.slim(network)(x).numpy(), driven, atol=2e-5)
    names = agent.named_masks(keeps)
    assert names["block2_norm2_gate"] is names["down2_norm_gate"]


def test_start_from_a_ranking():
    network = _generator()
    agent = GateAgent(network, SHAPE, target_ratio=0.2, seed=0)
    scores = tgc.pruning.l1_importance(network)
    agent.start_from(scores, spread=2.0)
    for unit, logit in zip(agent.units, agent.agent.logits(), strict=True):
        logit = logit.numpy()
        assert logit.max() + agent.agent.offset > 0  # still keeps all, mostly
        ranked = np.argsort(scores[unit[0]])
        # The bias dominates the small random kernel part of the logits.
        assert np.corrcoef(logit, scores[unit[0]])[0, 1] > 0.8, unit
        assert logit[ranked[-1]] > logit[ranked[0]]
    agent.commit(max_macs=agent.full_macs // 4)
    kept = network.get_layer("up1_norm_gate").keep_mask()
    up1 = scores["up1_norm_gate"]
    assert up1[kept].mean() > up1[~kept].mean()
    with pytest.raises(ValueError, match="scores for gate 'stem_norm_gate'"):
        agent.start_from({})


def test_commit_writes_hard_decisions_and_meets_a_budget():
    network = _generator()
    agent = GateAgent(network, SHAPE, target_ratio=0.2, seed=0)
    assert agent.commit() == agent.full_macs  # a fresh agent keeps everything
    assert agent.commit(max_macs=agent.full_macs) == agent.full_macs
    budget = agent.full_macs // 5
    macs = agent.commit(max_macs=budget)
    assert macs <= budget and macs == tgc.profile(tgc.slim(network), SHAPE).macs
    assert macs > budget * 0.7  # the budget is filled, not just met
    logits = np.concatenate([v.numpy() for v in agent.agent.logits()])
    kept = np.concatenate([agent.gates[u[0]].keep_mask() for u in agent.units])
    assert logits[kept].min() > np.median(logits[~kept])  # kept by the ranking
    # An agent that already decided on fewer channels is filled up to it.
    for head in agent.agent.heads:
        head.bias.assign(head.bias - 10.0)
    assert agent.commit() < budget / 2
    filled = agent.commit(max_macs=budget)
    assert budget * 0.7 < filled <= budget
    for gate in agent.gates.values():
        assert gate.keep_mask().sum() >= 1
    with pytest.raises(ValueError, match="one channel per unit"):
        agent.commit(max_macs=10)
