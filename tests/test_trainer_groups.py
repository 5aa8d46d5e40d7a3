"""AdversarialTrainer's extra optimizer groups and in-step gate masks.

A pruning agent (a Dense layer) computes the masks of a generator's and a
discriminator's `ChannelGate`s inside the train step (`gate_masks`); the
trainer drives the gates with them (`keras_layers.driven_gates`) and trains
the agent in an `"after"` group on losses of both networks. An online
teacher trains in a `"before"` group.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_layers
from training import AdversarialTrainer, OptimizerGroup, losses

SIZE = 16


def _generator(name, gate):
    inputs = keras.Input((SIZE, SIZE, 3))
    x = keras.layers.Conv2D(4, 3, padding="same")(inputs)
    x = keras_layers.ChannelGate(name=gate, trainable=False)(keras.layers.ReLU()(x))
    outputs = keras.layers.Conv2D(3, 1, activation="tanh")(x)
    return keras.Model(inputs, outputs, name=name)


def _discriminator():
    inputs = keras.Input((SIZE, SIZE, 6))
    x = keras.layers.Conv2D(4, 4, strides=2, padding="same")(inputs)
    gate = keras_layers.ChannelGate(name="d_gate", trainable=False)
    x = gate(keras.layers.LeakyReLU(0.2)(x))
    return keras.Model(inputs, keras.layers.Conv2D(1, 4, padding="same")(x))


class _AgentTrainer(AdversarialTrainer):
    """A trainer whose agent sets the G and D gates inside each step."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.agent = keras.layers.Dense(8, name="agent")
        self.agent.build((1, 1))

    def gate_masks(self, step):
        keep = tf.sigmoid(self.agent(tf.ones((1, 1)))[0])
        return {
            self.generator.get_layer("g_gate"): keep[:4],
            self.discriminator.get_layer("d_gate"): keep[4:],
        }


def _images(n=2):
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (n, SIZE, SIZE, 3)).astype("float32")
    return x, np.tanh(x[..., ::-1] * 1.5).astype("float32")


def _trainer(lr_networks, lr_groups, jit_compile=False, size_weight=1.0):
    keras.utils.set_random_seed(0)
    teacher = _generator("teacher", "teacher_gate")
    trainer = _AgentTrainer(
        _generator("student", "g_gate"),
        _discriminator(),
        teacher=teacher,
        taps=None,
        freeze_teacher=False,
    )
    agent = OptimizerGroup(
        "agent",
        keras.optimizers.Adam(lr_groups),
        variables=lambda: trainer.agent.trainable_variables,
        losses=lambda step: {
            "agent_g": step.g_terms["gan"] + step.g_terms["recon"],
            "agent_d": step.d_terms["d_gan"],
            "agent_size": size_weight
            * tf.reduce_mean(tf.concat(list(step.masks.values()), 0)),
        },
        loss_names=["agent_g", "agent_d", "agent_size"],
    )
    online_teacher = OptimizerGroup(
        "teacher",
        keras.optimizers.Adam(lr_groups),
        variables=lambda: teacher.trainable_variables,
        losses=lambda step: {
            "teacher_l1": losses.l1_loss(teacher(step.x, training=True), step.target)
        },
        loss_names=["teacher_l1"],
        when="before",
    )
    trainer.compile(
        keras.optimizers.Adam(lr_networks),
        keras.optimizers.Adam(lr_networks),
        lambda_recon=10.0,
        jit_compile=jit_compile,
        groups=[online_teacher, agent],
    )
    return trainer


def _snapshot(trainer):
    parts = {
        "generator": trainer.generator,
        "discriminator": trainer.discriminator,
        "teacher": trainer.teacher,
        "agent": trainer.agent,
    }
    return {name: [w.numpy() for w in part.weights] for name, part in parts.items()}


def _changed(before, after) -> dict:
    return {
        name: any(
            not np.array_equal(a, b)
            for a, b in zip(before[name], after[name], strict=True)
        )
        for name in before
    }


def _fit(trainer, steps):
    data = tf.data.Dataset.from_tensors(_images()).repeat(steps)
    return trainer.fit(data, epochs=1, verbose=0).history


def test_groups_update_only_their_variables():
    frozen_networks = _trainer(lr_networks=0.0, lr_groups=1e-2)
    start = _snapshot(frozen_networks)
    history = _fit(frozen_networks, 2)
    assert _changed(start, _snapshot(frozen_networks)) == {
        "generator": False,
        "discriminator": False,
        "teacher": True,
        "agent": True,
    }
    assert sorted(history) == sorted(
        ["g_loss", "gan", "recon", "d_loss", "d_gan", "agent_loss", "agent_g"]
        + ["agent_d", "agent_size", "teacher_loss", "teacher_l1"]
    )
    np.testing.assert_allclose(
        history["agent_loss"][0],
        history["agent_g"][0] + history["agent_d"][0] + history["agent_size"][0],
        rtol=1e-5,
    )
    for group in frozen_networks.groups:
        assert int(group.optimizer.iterations) == 2

    frozen_groups = _trainer(lr_networks=1e-2, lr_groups=0.0)
    start = _snapshot(frozen_groups)
    _fit(frozen_groups, 2)
    assert _changed(start, _snapshot(frozen_groups)) == {
        "generator": True,
        "discriminator": True,
        "teacher": False,
        "agent": False,
    }


def test_masks_drive_both_networks_and_train_the_agent_under_xla():
    after = {}
    for jit in (False, True):
        trainer = _trainer(lr_networks=1e-2, lr_groups=1e-2, jit_compile=jit)
        _fit(trainer, 1)
        after[jit] = _snapshot(trainer)
    for name in after[False]:
        for plain, xla in zip(after[False][name], after[True][name], strict=True):
            np.testing.assert_allclose(plain, xla, atol=1e-5, err_msg=name)

    # The agent's gradient reaches it through each network's gates: with
    # one network's masks fixed, only the agent outputs of the other move.
    for driven, fixed in (("g_gate", "d_gate"), ("d_gate", "g_gate")):
        trainer = _trainer(lr_networks=1e-2, lr_groups=1e-2, size_weight=0.0)
        columns = slice(0, 4) if driven == "g_gate" else slice(4, 8)

        def masks(step, trainer=trainer, driven=driven, fixed=fixed, columns=columns):
            gates = {
                "g_gate": trainer.generator.get_layer("g_gate"),
                "d_gate": trainer.discriminator.get_layer("d_gate"),
            }
            keep = tf.sigmoid(trainer.agent(tf.ones((1, 1)))[0, columns])
            return {gates[driven]: keep, gates[fixed]: tf.ones(4)}

        trainer.gate_masks = masks
        start = trainer.agent.kernel.numpy()
        _fit(trainer, 1)
        moved = np.abs(trainer.agent.kernel.numpy() - start)[0] > 0
        assert moved.tolist() == [c in range(8)[columns] for c in range(8)], driven


def test_group_optimizers_are_saved_with_the_trainer(tmp_path):
    trainer = _trainer(lr_networks=1e-2, lr_groups=1e-2)
    _fit(trainer, 2)
    path = str(tmp_path / "trainer.weights.h5")
    trainer.save_weights(path)
    restored = _trainer(lr_networks=1e-2, lr_groups=1e-2)
    restored.load_weights(path)
    for name in ("agent", "teacher"):
        saved = trainer.group_optimizers[name].variables
        loaded = restored.group_optimizers[name].variables
        assert int(restored.group_optimizers[name].iterations) == 2
        for a, b in zip(saved, loaded, strict=True):
            np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_group_errors():
    def make(groups):
        keras.utils.set_random_seed(0)
        student = _generator("student", "g_gate")
        trainer = _AgentTrainer(student, _discriminator(), taps=None)
        trainer.compile(
            keras.optimizers.Adam(),
            keras.optimizers.Adam(),
            jit_compile=False,
            groups=groups(trainer),
        )
        return trainer

    def group(name, variables, **kwargs):
        return OptimizerGroup(
            name,
            keras.optimizers.Adam(),
            variables=variables,
            losses=lambda step: {f"{name}_term": tf.reduce_mean(step.fake)},
            loss_names=[f"{name}_term"],
            **kwargs,
        )

    with pytest.raises(ValueError, match="updated by both the generator and"):
        make(lambda t: [group("g", lambda: t.generator.trainable_variables[:1])])
    with pytest.raises(ValueError, match="group 'empty' has no variables"):
        make(lambda t: [group("empty", lambda: [])])
    with pytest.raises(ValueError, match="names must be unique"):
        make(lambda t: [group("a", lambda: t.agent.weights[:1])] * 2)
    with pytest.raises(ValueError, match="when must be one of"):
        group("a", list, when="during")
    unused = make(lambda t: [group("agent", lambda: t.agent.trainable_variables)])
    unused.gate_masks = lambda step: {}
    with pytest.raises(ValueError, match="group 'agent'.*does not depend on"):
        unused.train_on_batch(*_images())


class _SplitTrainer(AdversarialTrainer):
    """The generator's last kernel is left to a `"generator"` group."""

    def generator_variables(self):
        last = self.generator.layers[-1].kernel
        return [v for v in super().generator_variables() if v is not last]


def test_a_generator_group_shares_the_generator_backward_pass():
    def fit(split: bool):
        keras.utils.set_random_seed(0)
        kind = _SplitTrainer if split else AdversarialTrainer
        trainer = kind(_generator("student", "g_gate"), _discriminator(), taps=None)
        groups = []
        if split:
            groups.append(
                OptimizerGroup(
                    "kernel",
                    keras.optimizers.SGD(0.1),
                    variables=lambda: [trainer.generator.layers[-1].kernel],
                    losses=lambda step: {},
                    loss_names=[],
                    when="generator",
                )
            )
        trainer.compile(
            keras.optimizers.SGD(0.1),
            keras.optimizers.SGD(0.1),
            jit_compile=False,
            groups=groups,
        )
        x, y = _images()
        history = trainer.fit(x, y, batch_size=2, epochs=1, verbose=0)
        return trainer, history.history

    split, split_history = fit(True)
    plain, _ = fit(False)
    # The same SGD step, whichever optimizer holds the kernel.
    for a, b in zip(split.generator.weights, plain.generator.weights, strict=True):
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-6)
    assert int(split.group_optimizers["kernel"].iterations) == 1
    assert "kernel_loss" not in split_history
