"""Cheaper instance norms at export: one-pass statistics and subsampled ones.

`InstanceNormalization(one_pass=True)` (what `tfgancompress.lowering`
exports) computes the same function as the default two-pass norm;
`statistics_stride=k` takes the statistics on every k-th pixel (opt-in,
approximate, still per image). Both export to builtin ops in one XNNPACK
partition.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
from gate_patterns import randomize_norms

from keras_layers import InstanceNormalization
from tfgancompress import export, latency, lowering
from tfgancompress.models import resnet_generator

RNG = np.random.default_rng(17)
SIZE = 36


def _reference(x, gamma, beta, eps=1e-5):
    x = x.astype(np.float64)
    mean = x.mean(axis=(1, 2), keepdims=True)
    variance = x.var(axis=(1, 2), keepdims=True)
    return (x - mean) / np.sqrt(variance + eps) * gamma + beta


def _norm(**options) -> tuple[InstanceNormalization, np.ndarray, np.ndarray]:
    layer = InstanceNormalization(center=True, scale=True, **options)
    layer.build((None, None, None, 6))
    gamma = RNG.uniform(0.5, 1.5, 6).astype("float32")
    beta = RNG.normal(0.0, 0.3, 6).astype("float32")
    layer.gamma.assign(gamma)
    layer.beta.assign(beta)
    return layer, gamma, beta


def test_one_pass_norm_equals_the_reference(tmp_path):
    # Means up to 5 standard deviations (what convolutions feed a norm); the
    # one-pass variance cancels digits as mean**2 / variance grows.
    x = RNG.normal(size=(2, 16, 16, 6)).astype("float32")
    x = x * np.array([1, 0.1, 5, 1, 2, 1], "float32")
    x = x + np.array([0, 0.5, -20, 3, 0, -1], "float32")
    layer, gamma, beta = _norm(one_pass=True)
    y = np.asarray(layer(x))
    np.testing.assert_allclose(y, _reference(x, gamma, beta), atol=1e-4)
    two_pass, *_ = _norm()
    two_pass.set_weights(layer.get_weights())
    np.testing.assert_allclose(y, np.asarray(two_pass(x)), atol=1e-4)
    # A constant channel normalizes to its offset (variance clamped at 0).
    x[0, ..., 3] = 2.5
    np.testing.assert_allclose(np.asarray(layer(x))[0, ..., 3], beta[3], atol=1e-4)
    inputs = keras.Input((16, 16, 6))
    model = keras.Model(inputs, layer(inputs))
    model.save(tmp_path / "norm.keras")
    loaded = keras.saving.load_model(tmp_path / "norm.keras")
    restored = loaded.layers[1]
    assert (restored.one_pass, restored.statistics_stride) == (True, 1)
    expected = model.predict(x, verbose=0)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), expected)


@pytest.mark.parametrize("stride", [3, 5])
def test_strided_statistics_are_exact_on_block_constant_images(stride):
    # Each pixel repeated in stride x stride blocks: every k-th pixel has
    # exactly the statistics of the whole image.
    blocks = RNG.normal(1.0, 2.0, (2, 6, 5, 6)).astype("float32")
    x = np.repeat(np.repeat(blocks, stride, axis=1), stride, axis=2)
    layer, gamma, beta = _norm(statistics_stride=stride)
    np.testing.assert_allclose(
        np.asarray(layer(x)), _reference(x, gamma, beta), atol=2e-5
    )


def test_strided_statistics_error_is_bounded_on_smooth_images():
    # A smooth field plus noise, 48x48: stride-3 statistics see 256 pixels.
    rows, cols = np.meshgrid(np.linspace(0, 3, 48), np.linspace(0, 2, 48))
    field = np.sin(rows + np.arange(6)[:, None, None]) * np.cos(cols)
    x = field.transpose(1, 2, 0)[None] + RNG.normal(0, 0.3, (1, 48, 48, 6))
    x = x.astype("float32")
    layer, gamma, beta = _norm(statistics_stride=3)
    exact = _reference(x, gamma, beta)
    error = np.abs(np.asarray(layer(x)) - exact)
    print(f"stride 3: max abs error {error.max():.4f}, mean {error.mean():.4f}")
    # Statistics of 256 of 2304 pixels: a few % error in each channel's
    # scale; wrong statistics (another channel's, or none) would be ~1.
    assert error.mean() < 0.1
    assert error.max() < 0.5
    assert error.max() > 1e-4  # approximate: not the exact statistics


def test_bad_statistics_stride_is_rejected(tmp_path):
    for stride in (0, 2, 1.5):
        with pytest.raises(ValueError, match="statistics_stride must be a positive"):
            InstanceNormalization(statistics_stride=stride)
    model = resnet_generator(ngf=4, n_blocks=1, input_shape=(16, 16, 3))
    with pytest.raises(ValueError, match="needs lowering=True"):
        export.to_litert(
            model, tmp_path / "g.tflite", norm_statistics_stride=3, lowering=False
        )


@pytest.fixture(scope="module")
def generator():
    keras.utils.set_random_seed(5)
    model = resnet_generator(
        ngf=8, n_blocks=1, input_shape=(SIZE, SIZE, 3), affine=True
    )
    randomize_norms(model)
    return model


def _norm_options(model: keras.Model) -> set:
    return {
        (layer.one_pass, layer.statistics_stride)
        for layer in model.layers
        if isinstance(layer, InstanceNormalization)
    }


def test_lowered_file_with_one_pass_norms_equals_the_keras_model(generator, tmp_path):
    shape = (1, SIZE, SIZE, 3)
    assert _norm_options(lowering.lower_for_litert(generator, shape)) == {(True, 1)}
    path = export.to_litert(generator, tmp_path / "g.tflite", input_shape=shape)
    builtin = {"ADD", "CONCATENATION", "CONV_2D", "DEPTH_TO_SPACE", "MAXIMUM"}
    builtin |= {"MEAN", "MUL", "NEG", "PAD", "RSQRT", "SPACE_TO_DEPTH"}
    builtin |= {"STRIDED_SLICE", "SUB", "TANH"}
    assert set(export.litert_ops(path)) <= builtin
    assert latency.delegate_partitions(path) == 1
    x = RNG.uniform(-1, 1, shape).astype("float32")
    expected = generator.predict(x, verbose=0)
    assert np.abs(export.run_litert(path, x) - expected).max() < 1e-4


def test_strided_statistics_file_is_close_and_fully_delegated(generator, tmp_path):
    shape = (1, SIZE, SIZE, 3)
    lowered = lowering.lower_for_litert(generator, shape, norm_statistics_stride=3)
    assert _norm_options(lowered) == {(True, 3)}
    path = export.to_litert(
        generator, tmp_path / "g3.tflite", input_shape=shape, norm_statistics_stride=3
    )
    assert "DEPTHWISE_CONV_2D" in export.litert_ops(path)
    assert latency.delegate_partitions(path) == 1
    x = RNG.uniform(-1, 1, (2, *shape[1:])).astype("float32")
    own = lowered.predict(x, verbose=0)
    exact = generator.predict(x, verbose=0)
    file = np.concatenate([export.run_litert(path, image[None]) for image in x])
    assert np.abs(file - own).max() < 1e-4
    error = np.abs(own - exact)
    print(f"stride 3: max abs error {error.max():.4f}, mean {error.mean():.4f}")
    # Random weights and noise images, and a 9x9 grid at the deepest level
    # (stride 3 sees 9 pixels): a hard case. Unrelated statistics would
    # give errors of ~0.5-1 (outputs in [-1, 1]).
    assert 1e-5 < error.mean() < 0.2
    calibration = RNG.uniform(-1, 1, (16, *shape[1:])).astype("float32")
    int8 = export.to_litert(
        generator,
        tmp_path / "g3_int8.tflite",
        "int8",
        calibration,
        input_shape=shape,
        float_layers=(),
        norm_statistics_stride=3,
    )
    _, timings = latency.op_profile(int8, runs=1, warmup=0)
    assert all(t.delegated for t in timings)
    int8_out = np.concatenate([export.run_litert(int8, image[None]) for image in x])
    assert np.abs(int8_out - own).mean() < 0.06
