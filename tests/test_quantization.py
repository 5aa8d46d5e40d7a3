"""int8 preparation: quantized tensors, ranges, sensitivity, float fallback, QAT.

The planted model has one tensor like the refitted vintage student's last
up-sampling convolution: sparse outliers 100x its bulk in every channel,
feeding an instance norm that needs them. The sensitivity must single it
out, the plan must keep that convolution in float32, and the LiteRT file
must then agree with the float model far better.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest

from keras_layers import FakeQuant, InstanceNormalization, ReflectionPadding2D
from tfgancompress import export, quantization
from tfgancompress.models import resnet_generator, with_colour_skip

SIZE = 32


def _psnr(a, b) -> float:
    mse = np.mean((np.asarray(a, np.float64) - b) ** 2)
    return float(10.0 * np.log10(4.0 / mse))


def _images(count: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    smooth = rng.uniform(-1, 1, (count, SIZE // 4, SIZE // 4, 3))
    images = np.repeat(np.repeat(smooth, 4, axis=1), 4, axis=2)
    return (0.7 * images + 0.3 * rng.uniform(-1, 1, images.shape)).astype(np.float32)


def _planted() -> keras.Model:
    """`outlier_conv`'s output: bulk ~1, every channel ~1% pixels at -200."""
    rng = np.random.default_rng(0)
    inputs = keras.Input((SIZE, SIZE, 3), name="image")
    a = keras.layers.Conv2D(8, 1, name="in_conv")(inputs)
    a = InstanceNormalization(name="in_norm")(a)
    a = keras.layers.ReLU(name="in_relu")(a)
    tail = keras.layers.Conv2D(8, 1, name="tail_conv")(a)
    tail = keras.layers.ReLU(name="tail_relu")(tail)
    both = keras.layers.Concatenate(name="concat")([a, tail])
    b = keras.layers.Conv2D(8, 1, name="outlier_conv")(both)
    b = InstanceNormalization(center=True, scale=True, name="mid_norm")(b)
    b = keras.layers.ReLU(name="mid_relu")(b)
    b = ReflectionPadding2D(1, name="out_pad")(b)
    b = keras.layers.Conv2D(3, 3, name="out_conv")(b)
    outputs = keras.layers.Activation("tanh", name="out_tanh")(b)
    model = keras.Model(inputs, outputs, name="planted")
    model.get_layer("tail_conv").set_weights(
        [np.eye(8, dtype=np.float32)[None, None], np.full(8, -2.5, np.float32)]
    )
    bulk = rng.normal(0, 0.4, (8, 8))
    model.get_layer("outlier_conv").set_weights(
        [
            np.concatenate([bulk, -200.0 * np.eye(8)])[None, None].astype(np.float32),
            np.zeros(8, np.float32),
        ]
    )
    norm = model.get_layer("mid_norm")
    norm.set_weights([rng.uniform(0.5, 1.5, 8), rng.uniform(0.0, 0.5, 8)])
    return model


@pytest.fixture(scope="module")
def planted():
    keras.utils.set_random_seed(1)
    return _planted()


@pytest.fixture(scope="module")
def calibration():
    return _images(16, seed=2)


def test_quantized_layers_follow_the_int8_file():
    keras.utils.set_random_seed(0)
    model = with_colour_skip(resnet_generator(ngf=4, n_blocks=1, affine=True))
    names = quantization.quantized_layers(model)
    assert names[0] == model.layers[0].name  # the input is rounded once
    assert {"stem_conv", "stem_relu", "block1_norm2", "block1_add"} <= set(names)
    assert {"out_tanh", "colour_skip", "colour_skip_add", "colour_skip_clip"} <= set(
        names
    )
    # Norms feeding an activation are fused into it; copies keep their grid.
    assert "stem_norm" not in names
    assert not any("_pad" in name for name in names)


def test_activation_ranges_are_the_calibration_extremes(planted, calibration):
    ranges = quantization.activation_ranges(
        planted, calibration, ["outlier_conv", "mid_relu"], batch_size=5
    )
    probe = keras.Model(planted.inputs[0], planted.get_layer("outlier_conv").output)
    values = np.asarray(probe(calibration))
    assert ranges["outlier_conv"] == pytest.approx(
        (values.min(), max(values.max(), 0.0)), rel=1e-5
    )
    assert ranges["mid_relu"][0] == 0.0 and ranges["mid_relu"][1] > 0.0
    # The planted tail: far beyond the bulk of every channel.
    assert values.min() < -20.0 * np.median(np.abs(values))


def test_fake_quantized_copy_rounds_to_the_grid(planted, calibration):
    ranges = quantization.activation_ranges(planted, calibration)
    simulated = quantization.fake_quantized(planted, ranges)
    fakes = [layer for layer in simulated.layers if isinstance(layer, FakeQuant)]
    assert len(fakes) == len(ranges)
    low, high = ranges["out_tanh"]
    levels = np.unique(simulated.predict(calibration[:2], verbose=0))
    assert 10 < len(levels) <= 256
    steps = np.diff(levels) / ((high - low) / 255.0)
    np.testing.assert_allclose(steps, np.round(steps), atol=1e-2)
    assert {layer.name for layer in planted.layers} <= {
        layer.name for layer in simulated.layers
    }
    np.testing.assert_allclose(
        simulated.get_layer("outlier_conv").get_weights()[0],
        planted.get_layer("outlier_conv").get_weights()[0],
    )


def test_sensitivity_finds_the_planted_tensor_and_the_plan_keeps_it_float(
    planted, calibration
):
    plan = quantization.plan_int8(planted, calibration, samples=8)
    worst = min(plan.sensitivity, key=plan.sensitivity.get)
    print({k: round(v, 1) for k, v in plan.sensitivity.items()})
    assert worst == "outlier_conv"
    assert plan.sensitivity["outlier_conv"] < 40.0
    others = [v for k, v in plan.sensitivity.items() if k != "outlier_conv"]
    assert min(others) > plan.sensitivity["outlier_conv"] + 8.0
    assert plan.float_layers == ["outlier_conv"]
    assert plan.planned_psnr > plan.all_int8_psnr + 8.0


def test_export_keeps_the_planned_convolution_float(planted, calibration, tmp_path):
    held_out = _images(4, seed=3)
    expected = planted.predict(held_out, verbose=0)

    def agreement(name, **kwargs):
        path = export.to_litert(
            planted, tmp_path / name, "int8", calibration, (1, SIZE, SIZE, 3), **kwargs
        )
        actual = np.concatenate([export.run_litert(path, x[None]) for x in held_out])
        return path, _psnr(actual, expected)

    auto, auto_psnr = agreement("auto.tflite")
    _, none_psnr = agreement("none.tflite", float_layers=())
    print(f"int8 vs float: auto {auto_psnr:.1f} dB, no float convs {none_psnr:.1f}")
    assert auto_psnr > none_psnr + 6.0
    convs = [op for op in export.litert_graph(auto) if op.name == "CONV_2D"]
    assert sorted(op.output_dtypes[0] for op in convs) == [
        "float32",
        "int8",
        "int8",
        "int8",
    ]
    with pytest.raises(ValueError, match="not layers of"):
        export.to_litert(
            planted, tmp_path / "x.tflite", "int8", calibration, float_layers=["nope"]
        )


def test_a_float_convolution_keeps_its_relu_float(planted, calibration, tmp_path):
    # Norm frozen into the convolution: the outliers now meet a ReLU, and
    # the int8 rounding must come after it.
    folded = export.fold_instance_norms(planted, calibration)
    held_out = _images(4, seed=3)
    expected = folded.predict(held_out, verbose=0)
    agreement = {}
    for name, kept in (("auto", "auto"), ("none", ())):
        path = export.to_litert(
            folded,
            tmp_path / f"{name}.tflite",
            "int8",
            calibration,
            (1, SIZE, SIZE, 3),
            float_layers=kept,
        )
        actual = np.concatenate([export.run_litert(path, x[None]) for x in held_out])
        agreement[name] = _psnr(actual, expected)
    print(f"folded int8 vs float: {agreement}")
    assert export.litert_contract(tmp_path / "auto.tflite")["float32_convolutions"] == [
        "outlier_conv"
    ]
    graph = export.litert_graph(tmp_path / "auto.tflite")
    floats = [
        op.name
        for op in graph
        if op.output_dtypes == ("float32",) and op.name != "DEQUANTIZE"
    ]
    assert floats == ["CONV_2D"]  # the ReLU fused into it, rounding after
    assert agreement["auto"] > agreement["none"] + 6.0


@pytest.fixture(scope="module")
def generator():
    keras.utils.set_random_seed(0)
    return resnet_generator(ngf=8, n_blocks=2)


def test_a_whole_output_target_keeps_float_until_met(generator, calibration, tmp_path):
    # Random weights: every tensor alone costs > 40 dB, so the per-layer
    # plan keeps nothing float; together they end below the target.
    per_layer = quantization.plan_int8(generator, calibration, target_psnr=None)
    target = per_layer.planned_psnr + 3.0
    plan = quantization.plan_int8(generator, calibration, target_psnr=target)
    print(per_layer.float_layers, per_layer.planned_psnr, plan.float_layers, plan)
    assert per_layer.float_layers == []
    assert per_layer.planned_psnr < target <= plan.planned_psnr
    assert plan.target_psnr == target and plan.float_layers
    assert plan.all_int8_psnr == pytest.approx(per_layer.all_int8_psnr, abs=1e-6)
    with pytest.warns(UserWarning, match="short of target_psnr=99"):
        unreachable = quantization.plan_int8(generator, calibration, target_psnr=99.0)
    assert unreachable.float_layers == per_layer.float_layers

    held_out = _images(4, seed=3)
    expected = generator.predict(held_out, verbose=0)

    def file_psnr(name, target_psnr):
        path = export.to_litert(
            generator,
            tmp_path / name,
            "int8",
            calibration,
            (1, SIZE, SIZE, 3),
            int8_target_psnr=target_psnr,
        )
        actual = np.concatenate([export.run_litert(path, x[None]) for x in held_out])
        return path, _psnr(actual, expected)

    planned, planned_psnr = file_psnr("planned.tflite", target)
    _, per_layer_psnr = file_psnr("per_layer.tflite", None)
    print(f"file vs float: per-layer {per_layer_psnr:.1f}, target {planned_psnr:.1f}")
    # The file gains what the simulation promised, give or take a half
    # (its int8 weights and integer arithmetic are not simulated).
    assert planned_psnr - per_layer_psnr > 0.5 * (target - per_layer.planned_psnr)
    convolutions = [
        name
        for name in plan.float_layers
        if isinstance(
            generator.get_layer(name),
            keras.layers.Conv2D | keras.layers.Conv2DTranspose,
        )
    ]
    assert set(export.litert_contract(planned)["float32_convolutions"]) == set(
        convolutions
    )


def test_the_residual_stream_stays_float_as_one_candidate():
    # Random weights, six blocks at 64x64 (~40 dB with every tensor in
    # int8): one add kept float32 leaves the stream rounded by its int8
    # neighbours, so the single-layer greedy keeps convolutions and adds
    # one by one; all adds float32 together gain more per float32
    # operation, and the target costs less float32 work.
    size = 64
    images = _images(16, seed=2)
    images = np.repeat(np.repeat(images, 2, axis=1), 2, axis=2)
    keras.utils.set_random_seed(0)
    model = resnet_generator(ngf=8, n_blocks=6)
    adds = [f"block{b}_add" for b in range(1, 7)]
    target = 44.0
    plans = {
        stream: quantization.plan_int8(
            model, images, target_psnr=target, residual_stream=stream
        )
        for stream in (False, True)
    }
    work = {
        stream: sum(
            quantization.float_work(model, plan.float_layers, (size, size, 3)).values()
        )
        for stream, plan in plans.items()
    }
    print({s: (p.float_layers, p.steps, work[s]) for s, p in plans.items()})
    assert all(plan.steps[0][1] < target - 3.0 for plan in plans.values())
    assert all(plan.planned_psnr >= target for plan in plans.values())
    assert [added for added, _ in plans[True].steps[:2]] == [[], adds]
    assert all(len(added) <= 1 for added, _ in plans[False].steps)
    assert work[True] < work[False]
    with pytest.raises(ValueError, match="target_samples"):
        quantization.plan_int8(model, images, samples=8, target_samples=4)


@pytest.mark.parametrize("bad", [0.0, -5.0, 101.0, float("nan"), "35", True])
def test_a_bad_target_psnr_is_named(bad, generator, calibration, tmp_path):
    with pytest.raises(ValueError, match=r"target_psnr must be .* got"):
        quantization.plan_int8(generator, calibration, target_psnr=bad)
    with pytest.raises(ValueError, match=r"int8_target_psnr must be .* got"):
        export.to_litert(
            generator, tmp_path / "g.tflite", "int8", calibration, int8_target_psnr=bad
        )


def test_a_float_convolution_reads_a_float_norm_through_a_float_padding(
    planted, calibration, tmp_path
):
    # out_conv reads mid_norm's ReLU output through a reflection padding:
    # an int8 padding would round the tensor that out_conv kept float.
    path = export.to_litert(
        planted,
        tmp_path / "out.tflite",
        "int8",
        calibration,
        (1, SIZE, SIZE, 3),
        float_layers=["out_conv"],
    )
    graph = export.litert_graph(path)
    last_norm = max(i for i, op in enumerate(graph) if op.name == "MEAN")
    last_conv = max(i for i, op in enumerate(graph) if op.name == "CONV_2D")
    between = graph[last_norm + 1 : last_conv + 1]
    copies = [op for op in between if op.name in ("PAD", "MIRROR_PAD", "CONCATENATION")]
    print([(op.name, op.output_dtypes) for op in between])
    assert copies  # the padding is there, and runs in float32
    assert all(op.output_dtypes == ("float32",) for op in between)
