"""Tests of the gan_slimming methods: the README's model.fit example, the
trainer's proximal pruning of the prunable gates, GS-8 and the options."""

import dataclasses
import functools
import pathlib
import re

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_layers
import tfgancompress as tgc
from tfgancompress import proximal
from training import methods, pipeline
from training.budget import Budget
from training.methods import gan_slimming

ROOT = pathlib.Path(__file__).resolve().parents[1]
SHAPE = (32, 32, 3)


def _readme_block(section: str) -> str:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    parts = re.split(r"^## ", readme, flags=re.MULTILINE)
    (text,) = [part for part in parts if part.startswith(section + "\n")]
    (block,) = re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)
    return block


def _eager(make_trainer):
    """`make_trainer` (a method's `search_trainer`, ...) returning eager ones."""

    def make_eager_trainer(*args, **kwargs):
        trainer = make_trainer(*args, **kwargs)
        trainer.run_eagerly = True  # faster than tracing for a few steps
        return trainer

    return make_eager_trainer


def _eager_methods(get):
    """`methods.get` whose search trainers run eagerly."""

    def eager_get(*args, **kwargs):
        method = get(*args, **kwargs)
        method.search_trainer = _eager(method.search_trainer)
        return method

    return eager_get


@pytest.fixture(scope="module")
def teacher():
    keras.utils.set_random_seed(0)
    model = tgc.models.resnet_generator(ngf=16, n_blocks=1, affine=True)
    rng = np.random.default_rng(0)
    for layer in model.layers:
        if getattr(layer, "gamma", None) is not None:
            layer.gamma.assign(rng.uniform(0.3, 1.5, layer.gamma.shape))
            layer.beta.assign(rng.uniform(-0.3, 0.3, layer.beta.shape))
    return model


@pytest.fixture(scope="module")
def pairs(teacher):
    views = np.random.default_rng(1).uniform(-1, 1, (8, *SHAPE)).astype("float32")
    dataset = tf.data.Dataset.from_tensor_slices((views, teacher(views)))
    return views, dataset.batch(2, drop_remainder=True).repeat()


def test_readme_model_fit_example_slims_to_the_budget(teacher, pairs, monkeypatch):
    views, dataset = pairs
    # The example imports `training.methods`: its steps run eagerly here
    # (tracing and compiling a step takes longer than its four runs).
    monkeypatch.setattr(methods, "get", _eager_methods(methods.get))
    monkeypatch.setattr(
        methods, "Setup", functools.partial(methods.Setup, jit_compile=False)
    )
    namespace = {"teacher": teacher, "pairs": dataset, "steps": 4}
    exec(compile(_readme_block("GAN Slimming"), "README.md", "exec"), namespace)
    generator, trainer = namespace["generator"], namespace["trainer"]
    kinds = {type(layer) for layer in generator._flatten_layers(include_self=False)}
    assert keras_layers.ChannelGate not in kinds
    budget = namespace["setup"].budget
    macs = tgc.profile(generator, budget.input_shape).macs
    assert macs <= budget.macs
    assert budget.teacher_macs / macs >= 20
    # Extraction is exact: the slimmed generator computes the gated one.
    np.testing.assert_allclose(
        generator.predict(views, verbose=0),
        trainer.generator.predict(views, verbose=0),
        atol=1e-4,
    )


def _student(teacher, method_name: str, options: str = ""):
    method = methods.get(method_name, options)
    budget = Budget.resolve(teacher, macs_ratio=4, input_shape=SHAPE)
    setup = methods.Setup(budget, ndf=8, jit_compile=False)
    return method, setup, method.build(teacher, setup)


def _search_and_slim(method, setup, student, teacher, pairs):
    """Two eager search steps (with the rho control), then `slim`."""
    trainer = method.search_trainer(student, teacher, setup, steps=2)
    trainer.run_eagerly = True
    trainer.fit(
        pairs[1],
        epochs=1,
        steps_per_epoch=2,
        callbacks=method.search_callbacks(student, setup, 2),
        verbose=0,
    )
    return method.slim(student)


def test_proximal_step_closes_the_prunable_gates_only(teacher, pairs):
    method, setup, student = _student(teacher, "gan_slimming", "content=mse")
    np.testing.assert_allclose(  # the student starts as the teacher
        student.generator.predict(pairs[0], verbose=0), teacher(pairs[0]), atol=1e-5
    )
    trainer = method.search_trainer(student, teacher, setup, steps=2)
    trainer.run_eagerly = True  # one step: tracing it would take longer
    prunable = proximal.scale_gates(student.generator)
    residual = [
        gate
        for gate in proximal.scale_gates(student.generator, residual=True)
        if gate not in prunable
    ]
    gammas = {id(gate.gamma) for gate in prunable}
    assert not gammas & {id(v) for v in trainer.generator_variables()}
    trainer.rho.assign(1e4)  # threshold rho * 0.1 >> |gamma|
    residual_before = [gate.gamma.numpy() for gate in residual]
    history = trainer.fit(pairs[1], epochs=1, steps_per_epoch=1, verbose=0)
    assert set(history.history) >= {"gan", "mse", "g_loss", "d_loss"}
    assert all(not gate.gamma.numpy().any() for gate in prunable)
    for gate, before in zip(residual, residual_before, strict=True):
        assert gate.gamma.numpy().all()
        assert not np.array_equal(gate.gamma.numpy(), before)  # trained by Adam


def test_gs8_trains_quantization_aware_and_exports_without_data(
    teacher, pairs, tmp_path
):
    method, setup, student = _student(
        teacher, "gan_slimming_int8", "content=mse,quantize=search,refit=false"
    )
    assert tgc.quantization.is_quantized(student.generator)
    generator = _search_and_slim(method, setup, student, teacher, pairs).generator
    assert tgc.quantization.is_quantized(generator)
    assert tgc.profile(generator, SHAPE).macs <= setup.budget.macs
    path = tgc.export.to_litert(generator, tmp_path / "g.tflite", "int8", None, SHAPE)
    kernels = [
        op
        for op in tgc.export.litert_graph(path)
        if op.name in ("CONV_2D", "TRANSPOSE_CONV")
    ]
    assert [op.output_dtypes for op in kernels[1:]] == [("int8",)] * (len(kernels) - 1)


def test_gs8_default_fine_tunes_quantization_aware_with_the_distill_objective(
    teacher, pairs, monkeypatch
):
    method, setup, student = _student(teacher, "gan_slimming_int8", "content=mse")
    setup = dataclasses.replace(setup, validation=(pairs[0], pairs[0]))
    assert (method.options.quantize, method.options.finetune_loss) == (
        "finetune",
        "distill",
    )
    assert method.options.refit and method.colour_skip
    assert method.options.float_layers == "auto"
    assert not tgc.quantization.is_quantized(student.generator)  # float search
    student = _search_and_slim(method, setup, student, teacher, pairs)
    planned = []

    plan_kwargs = []

    def plan_int8(model, images, **kwargs):  # the real plan, recorded
        plan_kwargs.append(kwargs)
        plan = plan_of(model, images, **kwargs)
        plan.float_layers = ["up2_conv"]  # a planted choice, to follow
        planned.append((images, plan))
        return plan

    plan_of = tgc.quantization.plan_int8
    monkeypatch.setattr(tgc.quantization, "plan_int8", plan_int8)
    trainer = method.finetune_trainer(student, teacher, setup, steps=1)
    ((images, plan),) = planned  # measured on the validation images
    np.testing.assert_array_equal(images, pairs[0])
    assert plan_kwargs == [{"min_layer_psnr": 50.0, "equalize": False}]
    assert set(plan.sensitivity) >= {"up1_conv", "stem_conv"}
    assert trainer.generator is student.generator
    assert tgc.quantization.is_quantized(student.generator)
    layers = {layer.name for layer in student.generator.layers}
    assert "up2_conv" in layers and "up2_conv_quant" not in layers
    assert "up1_conv_quant" in layers
    assert student.state["int8_float_layers"] == "up2_conv"  # reported
    assert (trainer.lambda_recon, trainer.lambda_distill) == (100.0, 1.0)
    trainer.run_eagerly = True
    history = trainer.fit(pairs[1], epochs=1, steps_per_epoch=1, verbose=0)
    assert history.history["distill"][0] > 0


def test_qat_share_fine_tunes_in_float_then_quantization_aware(teacher, pairs):
    method, setup, student = _student(
        teacher,
        "gan_slimming_int8",
        "content=mse,float_layers=none,qat_share=0.25,qat_learning_rate_scale=0.5",
    )
    assert method.finetune_stages(8) == [6, 2]
    assert method.finetune_stages(1) == [0, 1]
    student = _search_and_slim(method, setup, student, teacher, pairs)
    slimmed = student.generator.predict(pairs[0], verbose=0)
    stages = []
    make_trainer = method.finetune_trainer

    def finetune_trainer(student, teacher, setup, steps, stage):
        assert stage == len(stages)  # the pipeline passes each stage's index
        trainer = make_trainer(student, teacher, setup, steps, stage=stage)
        trainer.run_eagerly = True  # faster than tracing for a few steps
        quantized = tgc.quantization.is_quantized(trainer.generator)
        before = trainer.generator.predict(pairs[0], verbose=0)
        rate = trainer.g_optimizer.learning_rate  # the schedule's step 0
        stages.append((steps, quantized, float(rate), before))
        return trainer

    method.finetune_trainer = finetune_trainer
    history = pipeline.finetune(
        method, student, teacher, setup, pairs[1], 3, steps_per_epoch=2, verbose=0
    )
    (float_steps, float_quantized, float_rate, float_start), stage_two = stages
    qat_steps, qat_quantized, qat_rate, qat_start = stage_two
    assert (float_steps, qat_steps) == (2, 1)
    assert (float_quantized, qat_quantized) == (False, True)
    np.testing.assert_allclose(qat_rate, 0.5 * float_rate, rtol=1e-6)
    np.testing.assert_allclose(float_start, slimmed, atol=1e-5)
    # The quantizers wrap the float-fine-tuned student, not the slimmed one.
    assert np.abs(qat_start - float_start).max() > 1e-3
    assert tgc.quantization.is_quantized(student.generator)
    assert list(pipeline.method_state(student)) == ["int8_float_layers"]
    assert history["trained_steps"] == 3
    # One step: the float stage has none, the one step is quantization-aware.
    method, setup, student = _student(
        teacher, "gan_slimming_int8", "content=mse,float_layers=none,qat_share=0.25"
    )
    student = method.slim(student)
    method.finetune_trainer = _eager(method.finetune_trainer)
    pipeline.finetune(method, student, teacher, setup, pairs[1], 1, verbose=0)
    assert tgc.quantization.is_quantized(student.generator)
    assert len(history["distill"]) == 2  # one epoch per stage


def test_finetune_loss_distill_trains_the_distill_objective(teacher, pairs):
    method, setup, student = _student(
        teacher, "gan_slimming", "content=mse,finetune_loss=distill"
    )
    student = _search_and_slim(method, setup, student, teacher, pairs)
    trainer = method.finetune_trainer(student, teacher, setup, steps=1)
    assert not isinstance(trainer, gan_slimming.GanSlimmingTrainer)
    assert (trainer.lambda_recon, trainer.lambda_distill) == (100.0, 1.0)
    assert len(trainer.mappers) == len(tgc.models.tap_names(student.generator)) > 0
    trainer.run_eagerly = True
    before = student.generator.predict(pairs[0], verbose=0)
    history = trainer.fit(pairs[1], epochs=1, steps_per_epoch=1, verbose=0)
    assert {"gan", "recon", "distill"} <= set(history.history)
    assert history.history["distill"][0] > 0
    assert not np.allclose(student.generator.predict(pairs[0], verbose=0), before)


def test_finetune_beta_weighs_the_finetuning_content_only(teacher, pairs):
    method, setup, student = _student(
        teacher, "gan_slimming", "content=mse,finetune_beta=500"
    )
    search = method.search_trainer(student, teacher, setup, steps=2)
    student = method.slim(student)
    finetune = method.finetune_trainer(student, teacher, setup, steps=2)
    assert (search.beta, finetune.beta) == (20.0, 500.0)
    assert finetune.rho is None and search.rho is not None


def test_options_are_checked():
    assert methods.get("gan_slimming").options.beta == 20.0
    assert methods.get("gan_slimming").options.quantize == "none"
    paper = methods.get("gan_slimming", gan_slimming.PAPER_OPTIONS).options
    assert (paper.content, paper.learning_rate_scale) == ("perceptual", 0.05)
    assert (paper.search_share, paper.refit) == (1.0, False)
    assert methods.get("gan_slimming_int8").options.quantize == "finetune"
    assert methods.get("gan_slimming_int8").colour_skip
    bad = {
        "quantize=finetune,search_share=1": "needs fine-tuning steps",
        "content=l2": "content must be one of",
        "reach=0": "reach must be in",
        "finetune_loss=l1": "finetune_loss must be one of",
        "finetune_beta=0": "finetune_beta must be > 0",
        "finetune_loss=distill,finetune_beta=100": "finetune_beta weighs the 'slim",
        "rho=-1": "rho must be > 0",
        "qat_share=0.5": "needs quantize='finetune'",
        "quantize=finetune,qat_share=0": "qat_share must be in",
        "quantize=finetune,qat_learning_rate_scale=0": "qat_learning_rate_scale must",
    }
    for options, message in bad.items():
        with pytest.raises(ValueError, match=message):
            methods.get("gan_slimming", options)
    with pytest.raises(ValueError, match="quantize='search' cannot be combined"):
        methods.get("gan_slimming_int8", "quantize=search")
    with pytest.raises(ValueError, match="float_layers must be one of"):
        methods.get("gan_slimming_int8", "float_layers=all")
    with pytest.raises(ValueError, match="float_layer_psnr must be > 0"):
        methods.get("gan_slimming_int8", "float_layer_psnr=0")
    method = methods.get("gan_slimming_int8", "float_layers=none")
    assert method.int8_float_layers(None, None) == []
    assert methods.get("gan_slimming", "search_share=0.5").split_steps(10) == {
        "search": 5,
        "finetune": 5,
    }
