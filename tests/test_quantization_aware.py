"""Quantization-aware training (GAN Slimming GS-8): FakeQuantWeights,
FakeQuantInstanceNormalization,
tgc.quantization.quantize_generator, its int8 LiteRT file and `slim` of it."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import tfgancompress as tgc
from keras_layers import (
    ChannelGate,
    FakeQuant,
    FakeQuantInstanceNormalization,
    FakeQuantWeights,
    InstanceNormalization,
    ReflectionPadding2D,
)
from tfgancompress import export, quantization
from tfgancompress.models.layers import TorchConv2DTranspose

SIZE = 32
SHAPE = (1, SIZE, SIZE, 3)
OUTPUT_STEP = 1.0 / 128  # the grid of LiteRT's int8 TANH output


def _images(count: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.uniform(-1.0, 1.0, (count, SIZE, SIZE, 3)).astype("float32")


def _randomize_gates(model: keras.Model, seed: int) -> keras.Model:
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, ChannelGate):
            layer.gamma.assign(rng.uniform(0.5, 1.5, layer.gamma.shape))
            layer.beta.assign(rng.uniform(-0.2, 0.2, layer.beta.shape))
    return model


def _conv_block(seed: int) -> keras.Model:
    """conv -> norm -> gate -> ReLU, twice, then a 1x1 conv and tanh."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((SIZE, SIZE, 3))
    x = inputs
    for i in (1, 2):
        x = ReflectionPadding2D(1)(x)
        x = keras.layers.Conv2D(8, 3, name=f"conv{i}")(x)
        x = InstanceNormalization(name=f"norm{i}")(x)
        x = ChannelGate(mode="scale", name=f"gate{i}")(x)
        x = keras.layers.ReLU(name=f"relu{i}")(x)
    x = keras.layers.Conv2D(3, 1, name="conv3")(x)
    outputs = keras.layers.Activation("tanh", name="tanh")(x)
    return keras.Model(inputs, outputs, name="conv_block")


@pytest.mark.parametrize(
    "layer",
    [
        keras.layers.Conv2D(4, 3),
        TorchConv2DTranspose(4, 3, strides=2, torch_padding=1, torch_output_padding=1),
        keras.layers.DepthwiseConv2D(3),
    ],
    ids=["conv", "transposed", "depthwise"],
)
def test_fake_quant_weights_rounds_the_kernel_per_tensor(layer, tmp_path):
    x = _images(2, seed=0)[:, :8, :8]
    inputs = keras.Input((8, 8, 3))
    wrapped = FakeQuantWeights(layer)
    model = keras.Model(inputs, wrapped(inputs))
    kernel = layer.kernel.numpy()
    step = np.abs(kernel).max() / 127
    quantized = wrapped.quantized_kernel()
    np.testing.assert_allclose(quantized, np.round(kernel / step) * step, atol=1e-7)
    plain = type(layer).from_config(layer.get_config())
    plain.build((None, 8, 8, 3))
    plain.set_weights([quantized, layer.bias.numpy()])
    np.testing.assert_allclose(model(x), plain(x), atol=1e-6)
    # Straight-through: the float kernel gets the gradient of the rounded one.
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(model(x, training=True))
    with tf.GradientTape() as plain_tape:
        plain_loss = tf.reduce_sum(plain(x))
    np.testing.assert_allclose(
        tape.gradient(loss, layer.kernel),
        plain_tape.gradient(plain_loss, plain.kernel),
        rtol=1e-5,
        atol=1e-5,
    )
    path = tmp_path / "wrapped.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_array_equal(loaded(x), model(x))


def test_weight_range_follows_training_and_stays_in_inference():
    wrapped = FakeQuantWeights(keras.layers.Conv2D(2, 1))
    x = np.ones((1, 2, 2, 3), np.float32)
    wrapped(x)
    wrapped.layer.kernel.assign(wrapped.layer.kernel * 3.0)
    before = float(wrapped.kernel_quant.max_range.numpy())
    wrapped(x, training=False)
    assert float(wrapped.kernel_quant.max_range.numpy()) == before
    wrapped(x, training=True)
    expected = np.abs(wrapped.layer.kernel.numpy()).max()
    np.testing.assert_allclose(wrapped.kernel_quant.max_range.numpy(), expected)


def test_fake_quant_weights_refuses_other_layers():
    with pytest.raises(ValueError, match="wraps a Conv2D.*got Dense"):
        FakeQuantWeights(keras.layers.Dense(3))


def test_fake_quant_instance_norm_rounds_its_mean_onto_the_input_grid(tmp_path):
    rng = np.random.default_rng(1)
    x = rng.normal(0.3, 1.0, (2, 8, 8, 4)).astype("float32")
    norm = FakeQuantInstanceNormalization(center=True, scale=True)
    norm(x, training=True)
    norm.gamma.assign(rng.uniform(0.5, 2.0, 4))
    norm.beta.assign(rng.uniform(-1.0, 1.0, 4))
    quantized = norm.input_quant(x).numpy()
    low = float(norm.input_quant.min_range.numpy())
    step = (float(norm.input_quant.max_range.numpy()) - low) / 255
    origin = round(-low / step) * -step  # 0 nudged onto the grid
    mean = quantized.mean(axis=(1, 2), keepdims=True)
    mean = np.round((mean - origin) / step) * step + origin
    centered = quantized - mean
    variance = (centered**2).mean(axis=(1, 2), keepdims=True)
    expected = centered / np.sqrt(variance + 1e-5) * norm.gamma.numpy()
    np.testing.assert_allclose(norm(x), expected + norm.beta.numpy(), atol=1e-4)
    inputs = keras.Input((8, 8, 4))
    model = keras.Model(inputs, norm(inputs))
    model.save(tmp_path / "norm.keras")
    loaded = keras.saving.load_model(tmp_path / "norm.keras")
    np.testing.assert_array_equal(loaded(x), model(x))


def test_quantize_generator_places_quantizers_where_litert_needs_them():
    generator = tgc.models.resnet_generator(ngf=8, n_blocks=2, gated="scale")
    quantized = quantization.quantize_generator(generator)
    layers = {layer.name: layer for layer in quantized.layers}
    kinds = [type(layer) for layer in layers.values()]
    assert kinds.count(FakeQuantWeights) == 10
    assert kinds.count(FakeQuantInstanceNormalization) == 9
    # ReLUs that feed convolutions: unsigned [0, 4]; the stream start feeds an
    # add too, so its convolution quantizes its own input.
    relu = layers["stem_relu_quant"]
    assert (relu.min_value, relu.max_value, relu.ranges) == (0.0, 4.0, "fixed")
    assert "down2_relu_quant" not in layers
    assert layers["block1_conv1_input_quant"].max_value == 4.0
    assert layers["block2_conv1_input_quant"].ranges == "moving"  # a signed sum
    assert "stem_conv_input_quant" not in layers  # the image is not quantized
    assert layers["out_tanh_quant"].max_value == 127 / 128
    assert generator.count_params() == sum(
        int(np.prod(w.shape)) for w in quantized.trainable_weights
    )


def test_quantized_generator_computes_the_generator_on_a_fine_grid():
    generator = _randomize_gates(
        tgc.models.resnet_generator(ngf=8, n_blocks=1, gated="scale"), seed=2
    )
    images = _images(4, seed=3)
    fine = quantization.quantize_generator(
        generator, activation_max=64.0, num_bits=16, calibration=images
    )
    # Centring the biases before the norms leaves the function unchanged.
    expected = generator.predict(images, verbose=0)
    error = np.abs(fine.predict(images, verbose=0) - expected)
    assert float(error.max()) < 2e-3, float(error.max())


def test_litert_int8_matches_the_fake_quant_model(tmp_path):
    model = _randomize_gates(_conv_block(seed=0), seed=4)
    images = _images(8, seed=5)
    quantized = quantization.quantize_generator(
        model, quantize_input=True, calibration=[images[:4], images[4:]]
    )
    path = export.to_litert(quantized, tmp_path / "q.tflite", "int8", input_shape=SHAPE)
    graph = export.litert_graph(path)
    convs = [op for op in graph if op.name == "CONV_2D"]
    assert len(convs) == 3
    assert all(op.input_dtypes[:2] == ("int8", "int8") for op in convs), convs
    errors = []
    for image in images[:2]:
        keras_output = quantized.predict(image[None], verbose=0)
        errors.append(np.abs(export.run_litert(path, image[None]) - keras_output))
    steps = np.concatenate(errors) / OUTPUT_STEP
    print(
        f"conv block int8 vs Keras: max {steps.max():.1f} steps, "
        f"{np.mean(steps > 1e-3):.4f} differ"
    )
    # Equal but for rare rounding ties (LiteRT's fixed-point rounding).
    assert np.mean(steps <= 1.001) >= 0.99
    assert np.mean(steps > 1e-3) <= 0.01


def test_litert_int8_of_a_quantized_generator_stays_close(tmp_path):
    generator = _randomize_gates(
        tgc.models.resnet_generator(ngf=8, n_blocks=1, gated="scale"), seed=6
    )
    images = _images(8, seed=7)
    quantized = quantization.quantize_generator(generator, calibration=images)
    path = export.to_litert(quantized, tmp_path / "g.tflite", "int8", input_shape=SHAPE)
    graph = export.litert_graph(path)
    kernels = [op for op in graph if op.name in ("CONV_2D", "TRANSPOSE_CONV")]
    # The first convolution reads the float image; every other one is int8.
    assert [op.output_dtypes for op in kernels[1:]] == [("int8",)] * (len(kernels) - 1)
    output = export.run_litert(path, images[:1])
    psnr = float(tgc.metrics.psnr(output, quantized.predict(images[:1], verbose=0))[0])
    print(f"generator int8 vs Keras: {psnr:.1f} dB")
    assert psnr > 38.0


def test_float_layers_stay_float32_in_the_int8_file(tmp_path):
    model = _randomize_gates(_conv_block(seed=12), seed=12)
    images = _images(8, seed=13)
    quantized = quantization.quantize_generator(
        model, quantize_input=True, calibration=images, float_layers=["conv2"]
    )
    layers = {layer.name: layer for layer in quantized.layers}
    assert "conv2_quant" not in layers and "conv1_quant" in layers
    assert type(layers["norm2"]) is InstanceNormalization  # a float input
    assert type(layers["norm1"]) is FakeQuantInstanceNormalization
    np.testing.assert_array_equal(  # the float layer keeps its weights
        layers["conv2"].get_weights()[0], model.get_layer("conv2").get_weights()[0]
    )
    path = export.to_litert(quantized, tmp_path / "q.tflite", "int8", input_shape=SHAPE)
    convs = [op for op in export.litert_graph(path) if op.name == "CONV_2D"]
    assert [op.input_dtypes[0] for op in convs] == ["int8", "float32", "int8"]
    psnr = tgc.metrics.psnr(
        export.run_litert(path, images[:1]), quantized.predict(images[:1], verbose=0)
    )
    assert float(psnr[0]) > 38.0, float(psnr[0])
    with pytest.raises(ValueError, match=r"float_layers \['norm1'\] are not conv"):
        quantization.quantize_generator(model, float_layers=["norm1"])


def _with_closed_gates(model: keras.Model, seed: int, beta_sign: float) -> keras.Model:
    rng = np.random.default_rng(seed)
    for gate in tgc.proximal.scale_gates(model):
        gamma = rng.uniform(0.5, 1.5, gate.channels)
        gamma[rng.random(gate.channels) < 0.5] = 0.0
        gate.gamma.assign(gamma)
        gate.beta.assign(beta_sign * rng.uniform(0.05, 0.5, gate.channels))
    return model


def test_slim_removes_closed_channels_of_a_quantized_model():
    keras.utils.set_random_seed(8)
    generator = _with_closed_gates(
        tgc.models.resnet_generator(ngf=8, n_blocks=2, gated="scale"), 8, -1.0
    )
    images = _images(4, seed=9)
    quantized = quantization.quantize_generator(generator, calibration=images)
    slim = tgc.slim(quantized)
    shape = (SIZE, SIZE, 3)
    macs = tgc.profile(slim, shape).macs
    assert macs == tgc.cost.gate_macs(quantized, shape)
    assert macs < 0.6 * tgc.profile(quantized, shape).macs
    kinds = {type(layer) for layer in slim.layers}
    assert {FakeQuant, FakeQuantWeights, FakeQuantInstanceNormalization} <= kinds
    assert ChannelGate not in kinds
    # Closed channels hold relu(beta) = 0: the same grids, the same outputs,
    # but for rare rounding ties (the smaller convolutions sum in another
    # order: a tie may round one grid step the other way).
    steps = (
        np.abs(slim.predict(images, verbose=0) - quantized.predict(images, verbose=0))
        / OUTPUT_STEP
    )
    assert np.mean(steps > 1e-3) <= 0.01, np.mean(steps > 1e-3)


def test_slim_folds_constant_channels_of_a_quantized_model_closely():
    generator = _with_closed_gates(
        tgc.models.resnet_generator(ngf=8, n_blocks=2, gated="scale"), 10, 1.0
    )
    images = _images(4, seed=11)
    quantized = quantization.quantize_generator(generator, calibration=images)
    slim = tgc.slim(quantized)
    # relu(beta) > 0 channels are folded into biases (float sums in another
    # order) or merged into a carrier's kernel (re-rounded onto its grid).
    expected = quantized.predict(images, verbose=0)
    psnr = tgc.metrics.psnr(slim.predict(images, verbose=0), expected)
    print(f"slimmed vs quantized: {float(np.mean(psnr)):.1f} dB")
    assert float(np.mean(psnr)) > 35.0
