"""The gan_compression method: L1-cut supernet, per-step configs, search, pipeline."""

import json
import os
import pathlib
import re

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_layers
import tfgancompress as tgc
from tfgancompress.models import supernet
from training import methods, pipeline
from training import search as search_cli
from training.budget import Budget
from training.methods import gan_compression
from training.trainer import AdversarialTrainer

SHAPE = (256, 256, 3)
SUPER = (keras_layers.SuperConv2D, tgc.models.SuperTorchConv2DTranspose)
# Cheap search settings: the evolution's mechanics are tested in test_search.
QUICK = "population=3,generations=1"


@pytest.fixture(scope="module")
def task():
    keras.utils.set_random_seed(0)
    teacher = tgc.models.resnet_generator(ngf=16, n_blocks=3, affine=True, name="t")
    x = np.random.default_rng(0).uniform(-1, 1, (8, 32, 32, 3)).astype("float32")
    y = teacher.predict(x, verbose=0)
    pairs = tf.data.Dataset.from_tensor_slices((x, y))
    pairs = pairs.batch(2, drop_remainder=True).repeat()
    return teacher, x, y, pairs


def _setup(teacher, **kwargs):
    return methods.Setup(
        Budget.resolve(teacher, macs_ratio=20), ndf=8, jit_compile=False, **kwargs
    )


def _plain(model) -> bool:
    return not any(isinstance(layer, SUPER) for layer in model.layers)


def test_build_cuts_the_teacher_into_a_supernet_of_its_top_l1_filters(task):
    teacher, x, _, _ = task
    method = methods.get("gan_compression")
    student = method.build(teacher, _setup(teacher))
    net = student.generator
    assert str(supernet.largest_config(net)) == "8_8_8_8_8_8_8_8"
    assert str(supernet.current_config(net)) == "8_8_8_8_8_8_8_8"
    stem_l1 = np.abs(teacher.get_layer("stem_conv").kernel.numpy()).sum((0, 1, 2))
    np.testing.assert_array_equal(
        student.kept["stem_conv"], np.argsort(-stem_l1, kind="stable")[:8]
    )
    cut, kept = supernet.l1_cut(teacher, "8_8_8_8_8_8_8_8")
    assert {k: list(v) for k, v in kept.items()} == {
        k: list(v) for k, v in student.kept.items()
    }
    np.testing.assert_allclose(net(x[:2]).numpy(), cut(x[:2]).numpy(), atol=1e-5)
    # A sub-network keeps the teacher's kept channels: the stem's first 4.
    small, small_kept = supernet.l1_cut(teacher, "4_8_8_8_8_8_8_8")
    np.testing.assert_array_equal(small_kept["stem_conv"], kept["stem_conv"][:4])
    np.testing.assert_array_equal(
        small.get_layer("stem_conv").kernel.numpy(),
        teacher.get_layer("stem_conv").kernel.numpy()[..., kept["stem_conv"][:4]],
    )

    space = method.space(supernet.largest_config(net))
    assert space.choices[0] == (8, 6, 4, 3, 2)
    smallest = supernet.config_macs(
        "2_2_2_2_2_2_2_2", SHAPE, supernet.ResnetFamily.of(net)
    )
    assert method.smallest_macs(teacher, SHAPE) == smallest
    assert method.split_steps(100) == {"search": 50, "finetune": 50}
    assert method.predistill_steps(50) == 20
    fast = methods.get("gan_compression", "fast=true")
    assert fast.split_steps(100) == {"search": 50, "finetune": 50}
    assert fast.predistill_steps(50) == 0
    assert method.split_steps(1) == {"search": 1, "finetune": 0}


def test_options_are_checked():
    for options, message in (
        ("choices=1;2", r"fractions in \(0, 1\]"),
        ("choices=a", "comma-separated"),
        ("width=0", r"width must be in \(0, 1\]"),
        ("predistill_share=0.7,supernet_share=0.5", r"must be in \(0, 1\]"),
        ("search=random", "search must be one of"),
        ("refit=all", "refit must be one of"),
        ("gan_loss=wgan", "gan_loss must be one of"),
        ("config=8_8", "8 positive ints"),
        ("population=1", "population >= 2"),
        ("budget_floor=1.5", r"budget_floor must be in \[0, 1\]"),
    ):
        with pytest.raises(ValueError, match=message):
            methods.get("gan_compression", options)
    floors = methods.get(
        "gan_compression", "max_latency_ms=40,budget_floor=0.9"
    ).budget_floors(100)
    assert floors == {"min_macs": None, "min_latency_ms": 36.0}
    floors = methods.get("gan_compression", "budget_floor=0.9").budget_floors(100)
    assert floors == {"min_macs": 90.0, "min_latency_ms": None}
    floors = methods.get("gan_compression", "budget_floor=0").budget_floors(100)
    assert floors == {"min_macs": None, "min_latency_ms": None}
    assert methods.get("gan_compression").options.budget_floor == 0.9
    assert methods.get("gan_compression").split_steps(300) == {
        "search": 150,
        "finetune": 150,
    }


def test_sampled_configs_and_mappers_that_follow_the_sampled_width(task):
    teacher, x, _, _ = task
    method = methods.get("gan_compression", "predistill_share=0.2,supernet_share=0.5")
    setup = _setup(teacher)
    student = method.build(teacher, setup)
    net = student.generator
    sampler, search = method.search_callbacks(student, setup, steps=10)
    assert isinstance(search, gan_compression.SubnetSearch)
    assert sampler.start_step == method.predistill_steps(10) == 3
    space = method.space(supernet.largest_config(net))
    draws = [sampler.config_at(step) for step in range(12)]
    assert draws[:3] == [space.largest()] * 3
    assert draws[3:] == [space.sample(step, setup.seed) for step in range(3, 12)]
    assert len(set(draws)) == 10
    # Within the budget when asked; the same draws for a fresh sampler.
    macs, budget = sampler.macs, setup.budget.macs
    bounded = gan_compression.SampleConfigs(
        net, space, seed=0, max_macs=budget, macs=macs
    )
    draws = [bounded.config_at(step) for step in range(20)]
    assert all(macs(config) <= budget for config in draws)
    assert draws == [bounded.config_at(step) for step in range(20)]

    # The 1x1 mappers read the full-width taps, whose switched-off channels
    # are 0: they compute the mapper sliced to the sampled width.
    trainer = AdversarialTrainer(net, student.discriminator, teacher=teacher)
    config = supernet.ChannelConfig.parse("3_4_2_6_3_8_2_4")
    supernet.set_config(net, config)
    plain = supernet.extract(net, config)
    tapped = tgc.models.with_taps(plain, tgc.models.tap_names(plain))
    _, *wide = trainer.student_tapped(x[:2], training=True)
    _, *narrow = tapped(x[:2], training=True)
    for mapper, f_wide, f_narrow in zip(trainer.mappers, wide, narrow, strict=True):
        width = f_narrow.shape[-1]
        assert width == 4 * config.channels[2] < f_wide.shape[-1]
        np.testing.assert_array_equal(f_wide.numpy()[..., width:], 0.0)
        kernel, bias = mapper.get_weights()
        expected = np.einsum("bhwc,cd->bhwd", f_narrow.numpy(), kernel[0, 0, :width])
        np.testing.assert_allclose(mapper(f_wide).numpy(), expected + bias, atol=1e-4)


def test_pipeline_ships_the_searched_subnet_within_the_budget(task, tmp_path):
    teacher, x, _, pairs = task
    # All steps train the supernet and no refit: the shipped student is the
    # searched sub-network exactly as the supernet computed it.
    method = methods.get(
        "gan_compression",
        f"{QUICK},refit=none,predistill_share=0.5,supernet_share=0.5,budget_floor=0.9",
    )
    setup = _setup(teacher)
    seen = []  # the configuration each step trains (after the sampler ran)
    record = keras.callbacks.LambdaCallback(
        on_train_batch_begin=lambda batch, logs: seen.append(
            supernet.current_config(record.model.generator)
        )
    )
    result = pipeline.compress(
        method,
        teacher,
        pairs,
        setup,
        steps=4,
        steps_per_epoch=4,
        calibration=x,
        callbacks=[record],
        checkpoint_dir=str(tmp_path),
        verbose=0,
    )
    assert result.steps == {"search": 4, "finetune": 0}
    space = method.space("8_8_8_8_8_8_8_8")
    assert seen == [space.largest()] * 2 + [space.sample(s, 0) for s in (2, 3)]
    generator = result.student.generator
    assert _plain(generator) and result.refit_images is None
    assert result.macs == tgc.profile(generator, SHAPE).macs <= setup.budget.macs
    assert tgc.profile(teacher, SHAPE).macs / result.macs >= 20

    search = result.student.state["search"]
    work = tmp_path / "method"
    with open(work / "search.json", encoding="utf-8") as file:
        log = json.load(file)
    assert log["best"]["config"] == search.best.config == result.student.state["config"]
    assert all(
        0.9 * setup.budget.macs <= c["macs"] <= setup.budget.macs
        for c in log["candidates"]
    )
    assert log["settings"]["min_macs"] == 0.9 * setup.budget.macs
    assert search.best.score == max(c["score"] for c in log["candidates"])
    assert (work / "search.png").stat().st_size > 1000
    assert result.macs == supernet.config_macs(
        search.best.config, SHAPE, supernet.ResnetFamily.of(teacher)
    )
    # The trained supernet, switched to the best config, is the student.
    trained = keras.models.load_model(work / "supernet.keras")
    supernet.set_config(trained, search.best.config)
    np.testing.assert_allclose(
        generator(x[:2]).numpy(), trained(x[:2]).numpy(), atol=2e-5
    )
    # The validation images were the first batches of the training stream.
    inputs, targets = pipeline.validation_slice(pairs, teacher, "paired", 4)
    scorer = gan_compression.SubnetScorer(trained, inputs, targets, jit_compile=False)
    assert scorer(search.best.config) == pytest.approx(search.best.score, abs=1e-4)


def test_teacher_refit_takes_the_searched_widths_from_the_teacher(task):
    teacher, x, y, _ = task
    method = methods.get("gan_compression", f"{QUICK},config=2_6_3_2_3_4_3_2")
    setup = _setup(teacher, validation=(x, y))
    student = method.build(teacher, setup)
    for variable in student.generator.trainable_variables:  # as if trained
        variable.assign(variable * 0.5)
    result = method.choose(student, teacher, setup)
    assert result.best.config == "2_6_3_2_3_4_3_2"
    assert [c.config for c in result.candidates] == ["2_6_3_2_3_4_3_2"]
    slimmed = method.slim(student)
    expected, kept = supernet.l1_cut(teacher, "2_6_3_2_3_4_3_2")
    assert _plain(slimmed.generator)
    np.testing.assert_allclose(
        slimmed.generator(x[:2]).numpy(), expected(x[:2]).numpy(), atol=2e-5
    )
    assert {k: list(v) for k, v in slimmed.kept.items()} == {
        k: list(v) for k, v in kept.items()
    }
    fits = pipeline.refit(slimmed, teacher, x, verbose=False)
    assert fits[-1].name == "out_conv"

    over = methods.get("gan_compression", "config=8_8_8_8_8_8_8_8")
    with pytest.raises(ValueError, match="over the budget"):
        over.choose(over.build(teacher, setup), teacher, setup)
    with pytest.raises(ValueError, match="validation images"):
        _setup(teacher).validation_arrays()


def test_latency_budget_is_respected_and_measured_once(task, tmp_path):
    """Each configuration is exported and timed once (evolution: test_search)."""
    teacher, x, y, _ = task
    options = "config=2_6_3_2_3_4_3_2,latency_runs=1"
    method = methods.get("gan_compression", f"{options},max_latency_ms=1000")
    setup = _setup(teacher, validation=(x, y), work_dir=str(tmp_path))
    net = method.build(teacher, setup).generator
    shape = (32, 32, 3)
    budget = tgc.profile(teacher, shape).macs // 20

    def search(method, cache):
        return method.search_supernet(
            net, x, y, budget, shape, latency=cache, jit_compile=False
        )

    cache = method.latency_cache(net, shape, setup.work_dir)
    (candidate,) = search(method, cache).candidates
    assert candidate.macs <= budget and 0 < candidate.latency_ms <= 1000
    assert cache.measurements == 1 and os.path.exists(tmp_path / "latency.json")
    again = method.latency_cache(net, shape, setup.work_dir)
    assert search(method, again).best.latency_ms == candidate.latency_ms
    assert again.measurements == 0 and again.hits >= 1
    tight = methods.get("gan_compression", f"{options},max_latency_ms=1e-6")
    with pytest.raises(ValueError, match="over the budget.*max_latency_ms=1e-06"):
        search(tight, again)
    assert again.measurements == 0


def test_search_entry_point_writes_the_log(task, tmp_path):
    teacher, x, y, _ = task
    method = methods.get("gan_compression")
    net = method.build(teacher, _setup(teacher)).generator
    net.save(tmp_path / "supernet.keras")
    np.savez(tmp_path / "validation.npz", inputs=x, targets=y)
    budget = tgc.profile(teacher, (32, 32, 3)).macs / 20 / 1e9
    result = search_cli.run(
        supernet=str(tmp_path / "supernet.keras"),
        validation=str(tmp_path / "validation.npz"),
        macs_budget=budget,
        input_size=32,
        population=3,
        generations=1,
        latency_runs=1,
        jit_compile=False,
        output=str(tmp_path / "logs" / "search"),
    )
    with open(tmp_path / "logs" / "search.json", encoding="utf-8") as file:
        log = json.load(file)
    assert log["best"]["config"] == result.best.config
    assert log["best"]["macs"] <= budget * 1e9
    assert log["best"]["latency_ms"] == result.best.latency_ms > 0
    assert (tmp_path / "logs" / "search.png").exists()
    assert (tmp_path / "latency.json").exists()  # next to the supernet
    with pytest.raises(ValueError, match="no array"):
        np.savez(tmp_path / "bad.npz", inputs=x)
        search_cli.run(
            supernet=str(tmp_path / "supernet.keras"),
            validation=str(tmp_path / "bad.npz"),
            macs_budget=budget,
        )
    with pytest.raises(ValueError, match="Unknown settings"):
        search_cli.run(budget=1)


def test_readme_model_fit_example_runs(task, tmp_path, monkeypatch):
    """The README's GAN Compression section runs as written, on a tiny teacher."""
    teacher, x, y, pairs = task
    readme = (pathlib.Path(__file__).resolve().parents[1] / "README.md").read_text()
    (section,) = [
        part
        for part in re.split(r"^## ", readme, flags=re.MULTILINE)
        if part.startswith("GAN Compression\n")
    ]
    (block,) = re.findall(r"```python\n(.*?)```", section, flags=re.DOTALL)
    monkeypatch.chdir(tmp_path)
    # XLA is tested elsewhere; compiling here would triple the test's time.
    block = block.replace("jit_compile=True", "jit_compile=False")
    namespace = {"teacher": teacher, "pairs": pairs, "views": x, "targets": y}
    namespace["steps"] = 2
    exec(compile(block, "README.md", "exec"), namespace)
    small = namespace["small"]
    assert _plain(small)
    budget = tgc.profile(teacher, SHAPE).macs / 20
    assert tgc.profile(small, SHAPE).macs == namespace["result"].best.macs <= budget
