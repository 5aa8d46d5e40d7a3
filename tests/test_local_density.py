"""The local_density method: agents with peer feedback, G and D slimmed, pipeline.

The KDE term (zero for identical neighbourhoods, growing with perturbation)
is tested in `test_density.py`; the agents' differentiable MACs against
`profile(slim(...))` in `test_agents.py`.
"""

import pathlib
import re
import types

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_layers
import tfgancompress as tgc
from training import callbacks, methods, pipeline
from training.budget import Budget

SIZE = 32
SHAPE = (256, 256, 3)


@pytest.fixture(scope="module")
def task():
    keras.utils.set_random_seed(0)
    teacher = tgc.models.resnet_generator(ngf=16, n_blocks=1, name="teacher")
    x = np.random.default_rng(0).uniform(-1, 1, (8, SIZE, SIZE, 3)).astype("float32")
    y = teacher.predict(x, verbose=0)
    pairs = tf.data.Dataset.from_tensor_slices((x, y))
    return teacher, x, y, pairs.batch(2, drop_remainder=True).repeat()


def _setup(teacher):
    budget = Budget.resolve(teacher, macs_ratio=20, input_shape=SHAPE)
    return methods.Setup(budget, ndf=8, jit_compile=False)


def _method(name="local_density", **options):
    return methods.get(name, {"bank_capacity": 8, **options})


def test_registry_options_and_the_ablation():
    assert {"local_density", "local_density_no_peer"} <= set(methods.available())
    assert methods.get("local_density").options.peer is True
    ablation = methods.get("local_density_no_peer")
    assert ablation.options.peer is False
    assert (
        ablation.options.lambda_density
        == methods.get("local_density").options.lambda_density
    )
    assert methods.get("local_density").split_steps(10) == {"search": 3, "finetune": 7}
    for bad, match in (
        ("search_share=0", "search_share"),
        ("d_macs_ratio=0", "d_macs_ratio"),
        ("neighbours=4,bank_capacity=4", "bank_capacity"),
        ("lambda_peer=-1", "lambda_peer"),
    ):
        with pytest.raises(ValueError, match=match):
            methods.get("local_density", bad)


def _one_step_terms(trainer, x, y):
    """The step's group loss terms and the tape that recorded them (the
    order of `AdversarialTrainer.train_step`, without the updates)."""
    with tf.GradientTape(persistent=True) as tape:
        step = trainer.prepare_step(tf.constant(x), tf.constant(y))
        step.masks = trainer.gate_masks(step)
        with trainer.drive_gates(step.masks):
            step.fake, step.student_features = trainer.generate(step.x)
            step.d_terms = trainer.discriminator_losses(step)
            step.g_terms = trainer.generator_losses(step)
        terms = {
            group.name: group.losses(step)
            for group in trainer.groups
            if group.name in ("genG", "genD")
        }
        for name, group in terms.items():  # sums with and without the peer term
            group["with_peer"] = tf.add_n(list(group.values()))
            group["without_peer"] = group[f"{name}_own"] + group[f"{name}_resource"]
    return terms, tape


def _gradient(tape, loss, agent):
    grads = tape.gradient(loss, agent.trainable_variables)
    return np.concatenate([np.ravel(g) for g in grads if g is not None])


def test_each_agents_gradient_includes_its_peer_term(task):
    teacher, x, y, _ = task
    setup = _setup(teacher)
    method = _method()
    student = method.build(teacher, setup)
    trainer = method.search_trainer(student, teacher, setup, steps=4)
    # A peer state that is not zero: the agents see their peers.
    trainer.g_feedback.assign(tf.linspace(0.2, 0.8, trainer.g_feedback.shape[0]))
    trainer.d_feedback.assign(tf.linspace(0.9, 0.1, trainer.d_feedback.shape[0]))
    terms, tape = _one_step_terms(trainer, x[:2], y[:2])
    for name, agent in (("genG", trainer.genG), ("genD", trainer.genD)):
        group = terms[name]
        expected = [f"{name}_{term}" for term in ("own", "peer", "resource")]
        assert sorted(group) == sorted([*expected, "with_peer", "without_peer"])
        peer = _gradient(tape, group[f"{name}_peer"], agent)
        assert np.abs(peer).max() > 1e-6, name
        with_peer = _gradient(tape, group["with_peer"], agent)
        without = _gradient(tape, group["without_peer"], agent)
        assert not np.allclose(with_peer, without, rtol=1e-3, atol=1e-7), name
    # The peer's state reaches the agent's decisions.
    g_state, _ = trainer.agent_states()
    seen = trainer.genG.logits(g_state)
    blind = trainer.genG.logits(tf.zeros_like(g_state))
    assert not np.allclose(seen[0], blind[0])

    ablation = _method("local_density_no_peer")
    student = ablation.build(teacher, setup)
    trainer = ablation.search_trainer(student, teacher, setup, steps=4)
    assert trainer.agent_states() == (None, None)
    assert trainer.genG.state_dim == trainer.genD.state_dim == 0
    terms, _ = _one_step_terms(trainer, x[:2], y[:2])
    assert sorted(terms["genD"])[:2] == ["genD_own", "genD_resource"]
    assert "genD_peer" not in terms["genD"]


def _d_input(x, y):
    return np.concatenate([x, y], axis=-1)


def test_pruning_phase_slims_g_and_d_to_their_gated_outputs(task):
    """The end of the pruning phase (`CommitAgents`) and `slim` (training the
    agents is covered by the README and pipeline tests)."""
    teacher, x, y, _ = task
    setup = _setup(teacher)
    method = _method(d_macs_ratio=0.3)
    student = method.build(teacher, setup)
    trainer = method.search_trainer(student, teacher, setup, steps=3)
    trainer.d_feedback.assign(tf.linspace(0.9, 0.1, trainer.d_feedback.shape[0]))
    commit = method.search_callbacks(student, setup, steps=3)
    commit[0].set_model(trainer)
    commit[0].on_train_end()
    committed = commit[0].committed
    g_gated, d_gated = student.generator, student.discriminator
    d_shape = (*SHAPE[:2], 6)
    d_full = student.state["d_agent"].full_macs
    assert committed["g_macs"] <= setup.budget.macs
    assert committed["d_macs"] <= 0.3 * d_full

    gated_g = g_gated.predict(x, verbose=0)
    gated_d = d_gated.predict(_d_input(x, y), verbose=0)
    slimmed = method.slim(student)
    for model in (slimmed.generator, slimmed.discriminator):
        assert not callbacks.gates_of(model)
        assert not any(
            isinstance(layer, keras_layers.SelectiveActivationConv2D)
            for layer in model.layers
        )
    assert tgc.profile(slimmed.generator, SHAPE).macs == committed["g_macs"]
    assert tgc.profile(slimmed.discriminator, d_shape).macs == committed["d_macs"]
    assert committed["d_macs"] < d_full
    np.testing.assert_allclose(
        slimmed.generator.predict(x, verbose=0), gated_g, atol=1e-4
    )
    np.testing.assert_allclose(
        slimmed.discriminator.predict(_d_input(x, y), verbose=0), gated_d, atol=1e-4
    )


def test_pipeline_compresses_within_budget_and_fine_tunes_with_density(task):
    teacher, x, _, pairs = task
    setup = _setup(teacher)
    result = pipeline.compress(
        _method("local_density_no_peer", augmented=1),
        teacher,
        pairs,
        setup,
        steps=4,
        steps_per_epoch=2,
        calibration=x,
        verbose=0,
    )
    assert result.steps == {"search": 1, "finetune": 3}
    assert result.macs <= setup.budget.macs
    assert result.refit_images == len(x)
    assert not callbacks.gates_of(result.student.discriminator)
    finetune = result.histories["finetune"]
    assert {"density", "local_gan", "local_d"} <= set(finetune)
    assert "genG_loss" not in finetune and "genG_loss" in result.histories["search"]
    assert np.isfinite(finetune["g_loss"]).all()


def test_readme_model_fit_example_runs(task):
    readme = pathlib.Path(__file__).resolve().parents[1] / "README.md"
    sections = re.split(r"^## ", readme.read_text(encoding="utf-8"), flags=re.M)
    (section,) = [s for s in sections if s.startswith("Local density structure")]
    (example,) = re.findall(r"```python\n(.*?)```", section, flags=re.DOTALL)
    teacher, _, y, pairs = task
    namespace = {
        "teacher": teacher,
        "pairs": pairs,
        "steps": 2,
        # The same methods, without XLA (compiling is tested elsewhere) and
        # with a small discriminator.
        "methods": types.SimpleNamespace(
            get=methods.get,
            Setup=lambda *args, **kwargs: methods.Setup(
                *args, **{**kwargs, "ndf": 8, "jit_compile": False}
            ),
        ),
    }
    exec(compile(example, "README.md", "exec"), namespace)
    small, student = namespace["small"], namespace["student"]
    assert tgc.profile(small, SHAPE).macs <= _setup(teacher).budget.macs
    assert not callbacks.gates_of(small)
    assert not callbacks.gates_of(student.discriminator)
    assert small.predict(y[:2], verbose=0).shape == (2, SIZE, SIZE, 3)
