"""Tests of tfgancompress.export: LiteRT/ONNX/SavedModel parity and op lists."""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_layers import (
    ChannelGate,
    FakeQuant,
    InstanceNormalization,
    ReflectionPadding2D,
)
from tfgancompress import export
from tfgancompress.models import resnet_generator

SIZE = 64
SHAPE = (1, SIZE, SIZE, 3)
BUILTINS = set(export._BUILTIN_NAMES.values()) - {"CUSTOM", "DELEGATE"}
KERNEL_OPS = ("CONV_2D", "TRANSPOSE_CONV", "DEPTHWISE_CONV_2D")


def _mini_generator(ngf: int = 8, quantized: bool = False) -> keras.Model:
    """Stem, one down, one residual unit, one up, output: the generator ops.

    With `quantized`, FakeQuant layers sit on every convolution's input and
    output (GAN Slimming's [0, 4] clamp after the norms).
    """

    def quant(x, **kwargs):
        return FakeQuant(**kwargs)(x) if quantized else x

    def conv_out(x):
        return quant(x, ranges="moving")

    inputs = keras.Input((None, None, 3))
    x = quant(inputs, signed=True, max_value=1.0)
    x = ReflectionPadding2D(3)(x)
    x = conv_out(keras.layers.Conv2D(ngf, 7)(x))
    x = InstanceNormalization()(x)
    x = ChannelGate(mode="scale")(x)
    x = keras.layers.ReLU()(x)
    x = quant(x, max_value=4.0)
    x = keras.layers.ZeroPadding2D(1)(x)
    x = conv_out(keras.layers.Conv2D(2 * ngf, 3, strides=2)(x))
    x = InstanceNormalization(center=True, scale=True)(x)
    x = keras.layers.ReLU()(x)
    x = quant(x, max_value=4.0)
    residual = ReflectionPadding2D(1)(x)
    residual = conv_out(keras.layers.Conv2D(2 * ngf, 3)(residual))
    residual = InstanceNormalization()(residual)
    x = keras.layers.Add()([x, residual])
    x = quant(x, ranges="moving")
    x = keras.layers.Conv2DTranspose(
        ngf, 3, strides=2, padding="same", output_padding=1
    )(x)
    x = conv_out(x)
    x = InstanceNormalization()(x)
    x = keras.layers.ReLU()(x)
    x = quant(x, max_value=4.0)
    x = ReflectionPadding2D(3)(x)
    x = conv_out(keras.layers.Conv2D(3, 7)(x))
    outputs = keras.layers.Activation("tanh")(x)
    return keras.Model(inputs, outputs, name="mini_generator")


def _randomize(model: keras.Model, seed: int) -> keras.Model:
    """Non-trivial biases and gate/norm affines, so that folding is exercised."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        affine = isinstance(layer, ChannelGate) or (
            isinstance(layer, InstanceNormalization) and layer.scale
        )
        if affine:
            layer.gamma.assign(rng.uniform(0.5, 1.5, layer.gamma.shape))
            layer.beta.assign(rng.uniform(-0.2, 0.2, layer.beta.shape))
        elif getattr(layer, "bias", None) is not None:
            layer.bias.assign(rng.normal(0.0, 0.1, layer.bias.shape))
    return model


def _images(count: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.uniform(-1.0, 1.0, (count, SIZE, SIZE, 3)).astype("float32")


@pytest.fixture(scope="module", params=["mini", "resnet"])
def generator(request):
    if request.param == "mini":
        model = _mini_generator()
    else:
        model = resnet_generator(ngf=8, n_blocks=2)
    return _randomize(model, seed=1)


@pytest.fixture(scope="module")
def image():
    return _images(1, seed=2)


def _errors(actual, expected) -> tuple[float, float]:
    difference = np.abs(np.asarray(actual) - np.asarray(expected))
    return float(difference.max()), float(difference.mean())


def _assert_builtin_only(path) -> list:
    names = export.litert_ops(path)
    assert not [n for n in names if n.lower().startswith("flex")], names
    assert set(names) <= BUILTINS, set(names) - BUILTINS
    return names


# Measured max/mean abs error against Keras on the two 64x64 ngf-8 generators:
# fp16 ~2e-3 max; dynamic ~0.07/0.008 (int8 weights, inputs quantized on the
# fly per op); int8 ~0.2/0.03 (8 random calibration images).
TOLERANCES = {
    None: (1e-4, 1e-5),
    "fp16": (1e-2, 1e-3),
    "dynamic": (0.2, 0.02),
    "int8": (0.5, 0.06),
}


@pytest.mark.parametrize("quantization", [None, "fp16", "dynamic", "int8"])
def test_litert_matches_keras(generator, image, tmp_path, quantization):
    expected = generator.predict(image, verbose=0)
    path = export.to_litert(
        generator,
        tmp_path / "g.tflite",
        quantization=quantization,
        representative_data=_images(8, seed=3),
        input_shape=SHAPE[1:],
    )
    max_error, mean_error = _errors(export.run_litert(path, image), expected)
    print(f"{generator.name} {quantization}: max {max_error:.2e} mean {mean_error:.2e}")
    max_tolerance, mean_tolerance = TOLERANCES[quantization]
    assert max_error <= max_tolerance
    assert mean_error <= mean_tolerance
    names = _assert_builtin_only(path)
    assert {"CONV_2D", "DEPTH_TO_SPACE", "CONCATENATION", "MEAN"} <= set(names)
    # Transposed convolutions lower to sub-pixel ones (tfgancompress.lowering).
    assert "TRANSPOSE_CONV" not in names
    # Reflection padding lowers to slices + concatenations: MIRROR_PAD falls
    # out of XNNPACK and used to split the graph into many partitions.
    assert "MIRROR_PAD" not in names
    kernels = [op for op in export.litert_graph(path) if op.name in KERNEL_OPS]
    weight_dtype = {None: "float32", "fp16": "float32", "dynamic": "int8"}
    for op in kernels:
        weights = op.input_dtypes[1]
        if quantization == "int8":
            activations = op.input_dtypes[2 if op.name == "TRANSPOSE_CONV" else 0]
            assert (activations, weights) == ("int8", "int8"), op
        else:
            assert weights == weight_dtype[quantization], op
    if quantization == "fp16":
        dequantized = {op.input_dtypes for op in export.litert_graph(path)}
        assert ("float16",) in dequantized


def test_onnx_matches_keras_at_any_size(generator, image, tmp_path):
    path = export.to_onnx(generator, tmp_path / "g.onnx")
    max_error, _ = _errors(
        export.run_onnx(path, image), generator.predict(image, verbose=0)
    )
    assert max_error <= 1e-4
    other = _images(2, seed=4)[:, :32, :48]
    max_error, _ = _errors(
        export.run_onnx(path, other), generator.predict(other, verbose=0)
    )
    assert max_error <= 1e-4


def test_saved_model_reload_equals_keras(tmp_path, image):
    model = _randomize(_mini_generator(), seed=5)
    loaded = tf.saved_model.load(export.to_saved_model(model, tmp_path / "sm"))
    np.testing.assert_allclose(
        loaded.serve(image).numpy(), model.predict(image, verbose=0), atol=1e-6
    )


@pytest.fixture(scope="module")
def quantized_generator():
    model = _randomize(_mini_generator(quantized=True), seed=6)
    calibration = _images(8, seed=7)
    for start in range(0, len(calibration), 2):
        model(calibration[start : start + 2], training=True)
    return model


def test_fake_quant_model_exports_int8_kernels_without_data(
    quantized_generator, image, tmp_path
):
    path = export.to_litert(
        quantized_generator, tmp_path / "q.tflite", "int8", input_shape=SHAPE
    )
    _assert_builtin_only(path)
    graph = export.litert_graph(path)
    kernels = [op for op in graph if op.name in KERNEL_OPS]
    assert len(kernels) == 5
    for op in kernels:
        assert "float32" not in op.input_dtypes, op
        assert op.output_dtypes == ("int8",), op
    # Instance-norm statistics have no FakeQuant: they stay float32.
    assert "float32" in {op.output_dtypes[0] for op in graph if op.name == "RSQRT"}
    expected = quantized_generator.predict(image, verbose=0)
    max_error, mean_error = _errors(export.run_litert(path, image), expected)
    print(f"FakeQuant int8 (no data): max {max_error:.2e} mean {mean_error:.2e}")
    assert max_error <= 0.3
    assert mean_error <= 0.04


def test_fake_quant_model_with_data_keeps_norms_in_float(
    quantized_generator, image, tmp_path
):
    batches = ((x[None], x[None]) for x in _images(8, seed=8))
    path = export.to_litert(
        quantized_generator, tmp_path / "q.tflite", "int8", batches, SHAPE
    )
    _assert_builtin_only(path)
    graph = export.litert_graph(path)
    kernels = [op for op in graph if op.name in KERNEL_OPS]
    assert kernels and all(op.output_dtypes == ("int8",) for op in kernels)
    assert {op.output_dtypes[0] for op in graph if op.name == "RSQRT"} == {"float32"}
    assert graph[0].input_dtypes == ("float32",)
    assert graph[-1].output_dtypes == ("float32",)
    expected = quantized_generator.predict(image, verbose=0)
    max_error, mean_error = _errors(export.run_litert(path, image), expected)
    print(f"FakeQuant int8 (calibrated): max {max_error:.2e} mean {mean_error:.2e}")
    assert max_error <= 0.5
    assert mean_error <= 0.06


def test_fake_quant_model_with_data_runs_fully_int8_on_request(
    quantized_generator, tmp_path
):
    batches = [x[None] for x in _images(16, seed=8)]
    path = export.to_litert(
        quantized_generator,
        tmp_path / "q.tflite",
        "int8",
        batches,
        SHAPE,
        float_norms=False,
    )
    graph = export.litert_graph(path)
    inner = [op for op in graph if op.name not in ("QUANTIZE", "DEQUANTIZE")]
    assert all(op.output_dtypes == ("int8",) for op in inner), inner


class BesselLayer(keras.layers.Layer):
    def call(self, inputs):
        return tf.math.bessel_i0e(inputs)


def test_flex_ops_are_named(tmp_path):
    inputs = keras.Input((8, 8, 3))
    model = keras.Model(inputs, BesselLayer()(keras.layers.Conv2D(3, 1)(inputs)))
    with pytest.raises(ValueError, match="no builtin kernel for: BesselI0e"):
        export.to_litert(model, tmp_path / "flex.tflite")
    assert not (tmp_path / "flex.tflite").exists()


def test_bad_arguments_are_refused(tmp_path):
    model = _mini_generator()
    with pytest.raises(ValueError, match=r"one of \(None, 'fp16', 'dynamic', 'int8'\)"):
        export.to_litert(model, tmp_path / "g.tflite", quantization="int4")
    with pytest.raises(ValueError, match="needs representative_data"):
        export.to_litert(model, tmp_path / "g.tflite", quantization="int8")
    with pytest.raises(ValueError, match=r"\(None, None, None, 3\): pass input_shape"):
        export.to_litert(model, tmp_path / "g.tflite")
    with pytest.raises(ValueError, match="does not fit"):
        export.to_litert(model, tmp_path / "g.tflite", input_shape=(1, 64, 64, 4))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        export.to_litert(model, tmp_path / "missing" / "g.tflite", input_shape=SHAPE)
    (tmp_path / "file").write_text("")
    with pytest.raises(NotADirectoryError, match="is a file"):
        export.to_onnx(model, tmp_path / "file" / "g.onnx")
    with pytest.raises(ValueError, match="is a directory"):
        export.to_litert(model, tmp_path, input_shape=SHAPE)


def test_int8_calibration_shape_is_checked(tmp_path):
    model = _mini_generator()
    with pytest.raises(ValueError, match=r"representative_data batches must have"):
        export.to_litert(
            model,
            tmp_path / "g.tflite",
            "int8",
            representative_data=np.zeros((4, 32, 32, 3), np.float32),
            input_shape=SHAPE,
        )


def test_run_litert_checks_the_input_shape(tmp_path):
    path = export.to_litert(_mini_generator(), tmp_path / "g.tflite", input_shape=SHAPE)
    with pytest.raises(ValueError, match=r"exported for input shape \(1, 64, 64, 3\)"):
        export.run_litert(path, _images(2, seed=0))


class QuantizedKernelConv(keras.layers.Layer):
    """A 3x3 convolution whose kernel goes through a per-channel FakeQuant."""

    def __init__(self, filters: int, **kwargs):
        super().__init__(**kwargs)
        self.filters = filters
        self.kernel_quant = FakeQuant(signed=True, per_channel=True, ranges="moving")

    def build(self, input_shape):
        shape = (3, 3, input_shape[-1], self.filters)
        self.kernel = self.add_weight(shape=shape, initializer="glorot_uniform")
        self.kernel_quant.build(shape)

    def call(self, inputs, training=None):
        kernel = self.kernel_quant(self.kernel, training=training)
        return tf.nn.conv2d(inputs, kernel, 1, "SAME")


def test_fake_quant_kernel_ranges_reach_the_int8_file(tmp_path):
    inputs = keras.Input((16, 16, 3))
    x = FakeQuant(signed=True, max_value=1.0)(inputs)
    x = QuantizedKernelConv(8)(x)
    output_quant = FakeQuant(ranges="moving")
    model = keras.Model(inputs, output_quant(x))
    data = _images(2, seed=9)[:, :16, :16]
    model(data, training=True)
    path = export.to_litert(model, tmp_path / "k.tflite", "int8")
    (conv,) = [op for op in export.litert_graph(path) if op.name == "CONV_2D"]
    assert conv.input_dtypes == ("int8", "int8", "int32")
    expected = model.predict(data[:1], verbose=0)
    error = np.abs(export.run_litert(path, data[:1]) - expected)
    # Equal but for rare rounding ties, off by one output step at most.
    step = float(np.max(output_quant.max_range) - np.min(output_quant.min_range)) / 255
    assert np.mean(error > 1e-5) < 0.01, np.mean(error > 1e-5)
    assert float(error.max()) <= step * 1.01, (float(error.max()), step)


def test_export_leaves_absl_log_level_alone(tmp_path):
    import logging

    logger = logging.getLogger("absl")
    logger.setLevel(logging.INFO)
    export.to_litert(
        resnet_generator(ngf=4, n_blocks=1),
        tmp_path / "g.tflite",
        input_shape=(32, 32, 3),
    )
    assert logger.level == logging.INFO


def test_files_carry_their_input_output_contract(tmp_path):
    model = resnet_generator(ngf=4, n_blocks=1, input_shape=(32, 32, 3))
    images = np.random.default_rng(2).uniform(-1, 1, (16, 32, 32, 3))
    for quantization in (None, "int8"):
        path = export.to_litert(
            model,
            tmp_path / f"{quantization}.tflite",
            quantization,
            images.astype("float32") if quantization else None,
            float_layers=(),
        )
        contract = export.litert_contract(path)
        with open(tmp_path / f"{quantization}.json", encoding="utf-8") as file:
            assert json.load(file) == contract
        (source,) = contract["inputs"]
        assert source["shape"] == [1, 32, 32, 3]
        assert source["dtype"] == "float32"
        assert source["layout"] == "NHWC" and source["range"] == [-1.0, 1.0]
        assert contract["quantization"] == (quantization or "float32")
        if quantization:
            # The first QUANTIZE op's grid: [-1, 1] on 256 levels.
            grid = source["int8_grid"]
            assert abs(grid["scale"] - 2.0 / 255.0) < 1e-4
            assert contract["outputs"][0]["int8_grid"]["scale"] > 0
        else:
            assert "int8_grid" not in source
        # The metadata leaves the file runnable.
        assert export.run_litert(path, images[:1]).shape == (1, 32, 32, 3)
    with pytest.raises(ValueError, match="no 'tfgancompress.io' metadata"):
        bare = tmp_path / "bare.tflite"
        bare.write_bytes(tf.lite.TFLiteConverter.from_keras_model(model).convert())
        export.litert_contract(bare)
