"""int8 LiteRT export of instance-norm generators: agreement with float32.

The model imitates what trained generators show before their instance norms
(channel ranges a hundredfold apart, large per-channel offsets), which is
what made the all-int8 recipe lose quality on real students: the all-int8
file must clearly fail where the default recipe (float norms, equalised
convolutions) passes.
"""

import keras
import numpy as np
import pytest
import skimage.data

from keras_layers import InstanceNormalization
from tfgancompress import export
from tfgancompress.models import resnet_generator

SIZE = 64


def _psnr(a, b) -> float:
    mse = np.mean((np.asarray(a, np.float64) - b) ** 2, axis=(1, 2, 3))
    return float(np.mean(10.0 * np.log10(4.0 / mse)))


def _photo_crops(count: int, seed: int) -> np.ndarray:
    photos = [skimage.data.astronaut(), skimage.data.coffee(), skimage.data.chelsea()]
    rng = np.random.default_rng(seed)
    crops = []
    for i in range(count):
        photo = photos[i % len(photos)]
        top = rng.integers(0, photo.shape[0] - 2 * SIZE)
        left = rng.integers(0, photo.shape[1] - 2 * SIZE)
        crops.append(photo[top : top + 2 * SIZE : 2, left : left + 2 * SIZE : 2])
    return np.asarray(crops, np.float32) / 127.5 - 1.0


def _trained_like(model: keras.Model, seed: int) -> keras.Model:
    """Pre-norm channel scales 10^U(-2, 0) and offsets, spread affines."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, InstanceNormalization) and layer.scale:
            layer.gamma.assign(rng.uniform(0.3, 2.0, layer.gamma.shape))
            layer.beta.assign(rng.uniform(-0.5, 0.5, layer.beta.shape))
        elif isinstance(layer, keras.layers.Conv2D | keras.layers.Conv2DTranspose):
            kernel, bias = layer.get_weights()
            channels = bias.shape[0]
            factors = 10.0 ** rng.uniform(-2.0, 0.0, channels)
            axis = -2 if isinstance(layer, keras.layers.Conv2DTranspose) else -1
            shape = [1] * kernel.ndim
            shape[axis] = channels
            offsets = rng.normal(0.0, 2.0, channels) * factors
            if channels == 3:  # the output convolution feeds tanh, no norm
                factors, offsets = np.ones(3), np.zeros(3)
            layer.set_weights(
                [kernel * factors.reshape(shape), bias * factors + offsets]
            )
    return model


@pytest.fixture(scope="module")
def generator():
    keras.utils.set_random_seed(3)
    model = resnet_generator(ngf=8, n_blocks=2, affine=True)
    return _trained_like(model, seed=4)


@pytest.fixture(scope="module")
def calibration():
    return _photo_crops(16, seed=5)


@pytest.fixture(scope="module")
def held_out():
    return _photo_crops(4, seed=6)


def _int8_psnr(generator, calibration, held_out, path, **kwargs) -> float:
    export.to_litert(generator, path, "int8", calibration, (SIZE, SIZE, 3), **kwargs)
    expected = generator.predict(held_out, verbose=0)
    actual = np.concatenate([export.run_litert(path, x[None]) for x in held_out])
    return _psnr(actual, expected)


def test_int8_recipe_agrees_with_float32(generator, calibration, held_out, tmp_path):
    recipe = _int8_psnr(generator, calibration, held_out, tmp_path / "g.tflite")
    all_int8 = _int8_psnr(
        generator, calibration, held_out, tmp_path / "all.tflite", float_norms=False
    )
    print(f"int8 vs float32 PSNR: recipe {recipe:.1f} dB, all-int8 {all_int8:.1f} dB")
    assert recipe >= 30.0
    assert all_int8 <= recipe - 8.0
    graph = export.litert_graph(tmp_path / "g.tflite")
    kernels = [op for op in graph if op.name in ("CONV_2D", "TRANSPOSE_CONV")]
    assert kernels and all(op.output_dtypes == ("int8",) for op in kernels)
    assert {op.output_dtypes[0] for op in graph if op.name == "RSQRT"} == {"float32"}
    assert graph[0].input_dtypes == ("float32",)
    assert graph[-1].output_dtypes == ("float32",)


def test_equalized_copy_computes_the_same_function(generator, calibration):
    twin = export.equalize_for_int8(generator, calibration)
    assert twin is not generator
    images = calibration[:2]
    np.testing.assert_allclose(
        twin.predict(images, verbose=0),
        generator.predict(images, verbose=0),
        atol=2e-4,
    )
    conv = twin.get_layer(generator.layers[2].name)
    assert isinstance(conv, keras.layers.Conv2D)
    outputs = np.asarray(keras.Model(twin.inputs[0], conv.output)(calibration))
    spread = np.abs(outputs - outputs.mean(axis=(0, 1, 2))).max(axis=(0, 1, 2))
    # One factor per channel stretches each to the widest: within rounding
    # of the per-batch means, every channel now spans the same range.
    assert spread.min() >= 0.8 * spread.max()
    norm = twin.get_layer(generator.layers[3].name)
    assert isinstance(norm.epsilon, list) and len(norm.epsilon) == 8
    assert min(norm.epsilon) == pytest.approx(1e-5)


def test_equalization_leaves_models_without_conv_norm_pairs(calibration):
    inputs = keras.Input((SIZE, SIZE, 3))
    model = keras.Model(inputs, keras.layers.Conv2D(3, 3, padding="same")(inputs))
    assert export.equalize_for_int8(model, calibration) is model


def test_few_calibration_samples_warn(generator, calibration, tmp_path):
    with pytest.warns(UserWarning, match="calibration on 4 samples"):
        export.to_litert(
            generator,
            tmp_path / "few.tflite",
            "int8",
            calibration[:4],
            (SIZE, SIZE, 3),
            float_norms=False,
        )


def _float32_full_size_ops(path) -> list[str]:
    """Ops with a float32 output larger than 1x1 pixels, but the last one
    (the DEQUANTIZE to the float32 output)."""
    from ai_edge_litert import schema_py_generated as schema

    with open(path, "rb") as file:
        model = schema.ModelT.InitFromPackedBuf(file.read(), 0)
    graph = model.subgraphs[0]
    names = [op.name for op in export.litert_graph(path)]
    found = []
    for name, operator in zip(names[:-1], graph.operators[:-1], strict=True):
        tensor = graph.tensors[operator.outputs[0]]
        if tensor.type == schema.TensorType.FLOAT32 and max(tensor.shape[1:3]) > 1:
            found.append(name)
    return found


def test_int8_norms_run_full_size_passes_in_int8(
    generator, calibration, held_out, tmp_path
):
    from tfgancompress import latency

    path = tmp_path / "int8_norms.tflite"
    psnr = _int8_psnr(
        generator, calibration, held_out, path, float_layers=(), int8_norms=True
    )
    print(f"int8 norms vs float32 PSNR: {psnr:.1f} dB")
    assert psnr >= 28.0
    assert _float32_full_size_ops(path) == []
    graph = export.litert_graph(path)
    # The per-channel statistics stay float32: variance, rsqrt, scale, shift.
    assert {op.output_dtypes[0] for op in graph if op.name == "RSQRT"} == {"float32"}
    assert {op.output_dtypes[0] for op in graph if op.name == "MEAN"} == {"int8"}
    assert latency.delegate_partitions(path) == 1
    # Today's recipe computes the norms' full-size passes in float32.
    recipe = tmp_path / "recipe.tflite"
    export.to_litert(
        generator, recipe, "int8", calibration, (SIZE, SIZE, 3), float_layers=()
    )
    assert {"MUL", "ADD", "DEQUANTIZE"} <= set(_float32_full_size_ops(recipe))


def test_int8_norms_keep_norms_after_float32_convolutions(
    generator, calibration, tmp_path
):
    conv, norm = generator.layers[2], generator.layers[3]
    assert isinstance(conv, keras.layers.Conv2D)
    assert isinstance(norm, InstanceNormalization)
    path = tmp_path / "kept.tflite"
    export.to_litert(
        generator,
        path,
        "int8",
        calibration,
        (SIZE, SIZE, 3),
        float_layers=[conv.name],
        int8_norms=True,
    )
    # The kept convolution and its norm (MEANs, MULs, ADD) stay float32;
    # every other norm's full-size passes are int8.
    full_size = _float32_full_size_ops(path)
    assert full_size.count("CONV_2D") == 1
    assert 1 <= full_size.count("MUL") <= 3
    graph = export.litert_graph(path)
    means = [op.output_dtypes[0] for op in graph if op.name == "MEAN"]
    assert means.count("float32") == 2  # E[x] and E[x**2] of the kept norm
    assert means.count("int8") == len(means) - 2
    assert export.litert_contract(path)["float32_convolutions"] == [conv.name]
