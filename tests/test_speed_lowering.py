"""The XNNPACK-friendly lowerings of InstanceNormalization/ReflectionPadding2D.

Same numbers as the reference formulas and the previous lowerings (float
rounding only); exported graphs without MIRROR_PAD/SQUARED_DIFFERENCE, in
one XNNPACK partition (fp32), every full-size op in XNNPACK (int8).
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
from keras import ops

from keras_layers import InstanceNormalization, ReflectionPadding2D
from tfgancompress import export, latency
from tfgancompress.models import resnet_generator

RNG = np.random.default_rng(7)
SIZE = 32


def _numpy_instance_norm(x, gamma, beta, eps=1e-5):
    x = x.astype(np.float64)
    mean = x.mean(axis=(1, 2), keepdims=True)
    variance = ((x - mean) ** 2).mean(axis=(1, 2), keepdims=True)
    y = (x - mean) / np.sqrt(variance + eps)
    if gamma is not None:
        y = y * gamma
    if beta is not None:
        y = y + beta
    return y


def _previous_instance_norm(x, gamma, beta, eps=1e-5):
    """The lowering before issue 3: five full-size passes."""
    mean = ops.mean(x, axis=(1, 2), keepdims=True)
    variance = ops.mean(ops.square(x - mean), axis=(1, 2), keepdims=True)
    y = (x - mean) * ops.rsqrt(variance + eps)
    if gamma is not None:
        y = y * gamma
    if beta is not None:
        y = y + beta
    return np.asarray(y)


@pytest.mark.parametrize("affine", [False, True])
def test_instance_norm_matches_reference_and_previous_lowering(affine):
    # Large means, small spreads and a constant channel: the hard cases.
    x = RNG.normal(size=(2, 16, 16, 6)).astype(np.float32)
    x = x * np.array([1, 0.1, 5, 1, 1, 1], np.float32)
    x = x + np.array([0, 3, -4, 0.5, 0, 0], np.float32)
    x[0, ..., 4] = 2.5
    layer = InstanceNormalization(center=affine, scale=affine)
    layer.build(x.shape)
    gamma = beta = None
    if affine:
        gamma = RNG.normal(size=6).astype(np.float32)
        beta = RNG.normal(size=6).astype(np.float32)
        layer.gamma.assign(gamma)
        layer.beta.assign(beta)
    y = np.asarray(layer(x))
    np.testing.assert_allclose(y, _numpy_instance_norm(x, gamma, beta), atol=1e-5)
    np.testing.assert_allclose(y, _previous_instance_norm(x, gamma, beta), atol=1e-5)
    np.testing.assert_allclose(y[0, ..., 4], 0.0 if beta is None else beta[4])


@pytest.mark.parametrize(
    "padding", [1, 3, ((2, 0), (0, 1)), ((5, 4), (1, 7)), ((0, 0), (0, 0))]
)
def test_reflection_padding_matches_numpy_and_mirror_pad(padding):
    x = RNG.normal(size=(2, 9, 10, 3)).astype(np.float32)
    layer = ReflectionPadding2D(padding)
    (top, bottom), (left, right) = layer.padding
    y = np.asarray(layer(x))
    pads = ((0, 0), (top, bottom), (left, right), (0, 0))
    np.testing.assert_array_equal(y, np.pad(x, pads, mode="reflect"))
    np.testing.assert_array_equal(y, np.asarray(ops.pad(x, pads, mode="reflect")))


def test_reflection_padding_in_a_model_of_unknown_size():
    inputs = keras.Input((None, None, 2))
    model = keras.Model(inputs, ReflectionPadding2D(((3, 1), (2, 2)))(inputs))
    for shape in [(1, 5, 7, 2), (2, 8, 4, 2)]:
        x = RNG.normal(size=shape).astype(np.float32)
        expected = np.pad(x, ((0, 0), (3, 1), (2, 2), (0, 0)), mode="reflect")
        np.testing.assert_array_equal(model.predict(x, verbose=0), expected)


@pytest.fixture(scope="module")
def generator():
    keras.utils.set_random_seed(3)
    model = resnet_generator(
        ngf=8, n_blocks=2, input_shape=(SIZE, SIZE, 3), affine=True
    )
    for layer in model.layers:
        if isinstance(layer, InstanceNormalization):
            layer.gamma.assign(RNG.uniform(0.5, 1.5, layer.gamma.shape))
            layer.beta.assign(RNG.normal(0, 0.2, layer.beta.shape))
    return model


def _images(count: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.uniform(-1, 1, (count, SIZE, SIZE, 3)).astype(np.float32)


def test_fp32_export_runs_in_one_xnnpack_partition(generator, tmp_path):
    path = export.to_litert(generator, tmp_path / "g.tflite")
    graph = export.litert_graph(path)
    names = {op.name for op in graph}
    assert "MIRROR_PAD" not in names
    assert "SQUARED_DIFFERENCE" not in names
    assert {"CONCATENATION", "STRIDED_SLICE", "CONV_2D", "MEAN"} <= names
    concat_inputs = [len(op.input_dtypes) for op in graph if op.name == "CONCATENATION"]
    assert max(concat_inputs) <= 3
    assert latency.delegate_partitions(path) == 1
    image = _images(1, seed=1)
    np.testing.assert_allclose(
        export.run_litert(path, image), generator.predict(image, verbose=0), atol=1e-4
    )


def test_int8_export_keeps_full_size_ops_in_xnnpack(generator, tmp_path):
    default = export.to_litert(
        generator,
        tmp_path / "g8_float_norms.tflite",
        quantization="int8",
        representative_data=_images(4, seed=2),
    )
    _, timings = latency.op_profile(default, runs=1, warmup=0)
    assert all(t.delegated for t in timings), [t for t in timings if not t.delegated]
    path = export.to_litert(
        generator,
        tmp_path / "g8.tflite",
        quantization="int8",
        representative_data=_images(4, seed=2),
        float_norms=False,
    )
    assert "SQUARED_DIFFERENCE" not in export.litert_ops(path)
    _, timings = latency.op_profile(path, runs=1, warmup=0)
    outside = [t for t in timings if not t.delegated]
    # Only the per-channel statistics ops (1x1 spatial) stay in LiteRT's
    # kernels: RSQRT and the `+ epsilon`.
    assert outside
    assert all(t.output_shape[1:3] == (1, 1) for t in outside), outside
    assert {t.op for t in outside} <= {"RSQRT", "ADD"}
