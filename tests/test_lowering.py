"""Export-time lowering: sub-pixel convolutions compute the same function.

`tfgancompress.lowering.lower_for_litert` rewrites transposed convolutions
(and few-channel convolutions) into `keras_layers.SubPixelConv2D`; the
rewritten model, and its `.tflite` file, must give the original's numbers.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest

from keras_layers import SubPixelConv2D
from tfgancompress import export, lowering
from tfgancompress.models import TorchConv2DTranspose, resnet_generator, unet_generator

RNG = np.random.default_rng(11)


def _randomized(model: keras.Model) -> keras.Model:
    """Every weight random, biases included (zeros would hide a misplaced bias)."""
    for weight in model.weights:
        weight.assign(RNG.normal(0.0, 0.3, weight.shape).astype("float32"))
    return model


def _one_layer_model(layer, shape) -> keras.Model:
    inputs = keras.Input(shape)
    return _randomized(keras.Model(inputs, layer(inputs)))


def _max_error(a, b) -> float:
    return float(np.abs(np.asarray(a) - np.asarray(b)).max())


def _litert_mean_error(path, images, expected) -> float:
    """Mean abs error of a batch-1 `.tflite` file over `images`."""
    outputs = np.concatenate([export.run_litert(path, image[None]) for image in images])
    return float(np.abs(outputs - expected).mean())


TRANSPOSED = {
    # PyTorch ConvTranspose2d(k3, s2, padding=1, output_padding=1): ResNet.
    "torch_k3_p1_op1": lambda: TorchConv2DTranspose(
        5, 3, strides=2, torch_padding=1, torch_output_padding=1
    ),
    # PyTorch ConvTranspose2d(k4, s2, padding=1): U-Net.
    "torch_k4_p1": lambda: TorchConv2DTranspose(5, 4, strides=2, torch_padding=1),
    "same_k4": lambda: keras.layers.Conv2DTranspose(5, 4, strides=2, padding="same"),
    "same_k3": lambda: keras.layers.Conv2DTranspose(5, 3, strides=2, padding="same"),
    "same_k3_op1": lambda: keras.layers.Conv2DTranspose(
        5, 3, strides=2, padding="same", output_padding=1
    ),
    "same_k1": lambda: keras.layers.Conv2DTranspose(5, 1, strides=2, padding="same"),
    "same_k5_s3_relu": lambda: keras.layers.Conv2DTranspose(
        5, 5, strides=3, padding="same", activation="relu"
    ),
    "same_k3x4_no_bias": lambda: keras.layers.Conv2DTranspose(
        5, (3, 4), strides=2, padding="same", use_bias=False
    ),
    "valid_k2": lambda: keras.layers.Conv2DTranspose(5, 2, strides=2),
}


@pytest.mark.parametrize("case", sorted(TRANSPOSED))
def test_transposed_convolution_becomes_an_equal_subpixel_convolution(case):
    model = _one_layer_model(TRANSPOSED[case](), (7, 9, 4))  # odd sizes
    lowered = lowering.lower_for_litert(model)
    layer = lowered.layers[1]
    assert type(layer) is SubPixelConv2D
    assert layer.name == model.layers[1].name
    x = RNG.normal(size=(2, 7, 9, 4)).astype("float32")
    expected = model.predict(x, verbose=0)
    actual = lowered.predict(x, verbose=0)
    assert actual.shape == expected.shape
    assert _max_error(actual, expected) < 1e-5 * max(1.0, np.abs(expected).max())


@pytest.mark.parametrize(
    "make",
    [
        lambda: keras.layers.Conv2DTranspose(5, 3, strides=2),  # 2H + 1 rows
        lambda: keras.layers.Conv2DTranspose(5, 3, strides=(2, 1), padding="same"),
        lambda: keras.layers.Conv2DTranspose(
            5, 3, strides=2, padding="same", output_padding=0
        ),  # 2H - 1 rows
        lambda: keras.layers.Conv2DTranspose(5, 3, strides=1, dilation_rate=2),
        lambda: TorchConv2DTranspose(5, 3, strides=2, torch_padding=1),
    ],
    ids=["valid_k3", "unequal_strides", "same_op0", "dilated", "torch_k3_p1"],
)
def test_transposed_convolutions_that_do_not_fit_are_kept(make):
    model = _one_layer_model(make(), (7, 9, 4))
    assert lowering.subpixel_weights(model.layers[1]) is None
    assert lowering.lower_for_litert(model) is model


@pytest.mark.parametrize(
    "make, shape",
    [
        (lambda: keras.layers.Conv2D(3, 7), (14, 18, 5)),  # the generators' last
        (lambda: keras.layers.Conv2D(3, 3, padding="same"), (8, 12, 5)),
        (
            lambda: keras.layers.Conv2D(2, (3, 4), padding="same", use_bias=False),
            (6, 8, 5),
        ),
    ],
    ids=["valid_k7", "same_k3", "same_k3x4"],
)
def test_few_channel_convolution_runs_on_a_coarser_grid(make, shape):
    model = _one_layer_model(make(), shape)
    lowered = lowering.lower_for_litert(model)
    layer = lowered.layers[1]
    assert (type(layer), layer.input_block_size) == (SubPixelConv2D, 2)
    x = RNG.normal(size=(2, *shape)).astype("float32")
    expected = model.predict(x, verbose=0)
    assert _max_error(lowered.predict(x, verbose=0), expected) < 1e-5 * max(
        1.0, np.abs(expected).max()
    )


def test_few_channel_convolution_with_odd_output_is_kept():
    model = _one_layer_model(keras.layers.Conv2D(3, 3), (9, 12, 5))  # 7 rows out
    assert lowering.lower_for_litert(model) is model
    wide = _one_layer_model(keras.layers.Conv2D(8, 3), (8, 12, 5))
    assert lowering.lower_for_litert(wide) is wide


@pytest.mark.parametrize("name", ["resnet", "unet"])
def test_lowered_generator_file_equals_the_keras_model(name, tmp_path):
    if name == "resnet":
        model = resnet_generator(ngf=8, n_blocks=1, input_shape=(36, 28, 3))
        shape = (1, 36, 28, 3)
    else:
        model = unet_generator(
            ngf=4, num_downs=5, norm="instance", input_shape=(32, 64, 3)
        )
        shape = (1, 32, 64, 3)
    model = _randomized(model)
    lowered = lowering.lower_for_litert(model, shape)
    kinds = {type(layer).__name__ for layer in lowered.layers}
    assert "SubPixelConv2D" in kinds
    assert not kinds & {"Conv2DTranspose", "TorchConv2DTranspose"}
    x = RNG.uniform(-1.0, 1.0, shape).astype("float32")
    expected = model.predict(x, verbose=0)
    assert _max_error(lowered.predict(x, verbose=0), expected) < 1e-4
    path = export.to_litert(model, tmp_path / f"{name}.tflite", input_shape=shape)
    names = export.litert_ops(path)
    assert "DEPTH_TO_SPACE" in names and "TRANSPOSE_CONV" not in names
    assert _max_error(export.run_litert(path, x), expected) < 1e-4
    plain = export.to_litert(
        model, tmp_path / "plain.tflite", input_shape=shape, lowering=False
    )
    assert "TRANSPOSE_CONV" in export.litert_ops(plain)


def test_int8_keeps_the_planned_layers_float_after_lowering(tmp_path):
    model = _randomized(resnet_generator(ngf=8, n_blocks=1, input_shape=(32, 32, 3)))
    calibration = RNG.uniform(-1.0, 1.0, (16, 32, 32, 3)).astype("float32")
    path = export.to_litert(
        model, tmp_path / "g.tflite", "int8", calibration, float_layers=["up1_conv"]
    )
    assert export.litert_contract(path)["float32_convolutions"] == ["up1_conv"]
    graph = export.litert_graph(path)
    names = [op.name for op in graph]
    assert "TRANSPOSE_CONV" not in names and "DEPTH_TO_SPACE" in names
    float_kernels = [
        op for op in graph if op.name == "CONV_2D" and op.input_dtypes[0] == "float32"
    ]
    assert len(float_kernels) == 1  # up1_conv only; up2_conv runs in int8
    int8_kernels = [
        op for op in graph if op.name == "CONV_2D" and op.input_dtypes[0] == "int8"
    ]
    assert len(int8_kernels) == names.count("CONV_2D") - 1
    plain = export.to_litert(
        model,
        tmp_path / "plain.tflite",
        "int8",
        calibration,
        float_layers=["up1_conv"],
        lowering=False,
    )
    x = RNG.uniform(-1.0, 1.0, (4, 32, 32, 3)).astype("float32")
    expected = model.predict(x, verbose=0)
    errors = {
        name: _litert_mean_error(file, x, expected)
        for name, file in (("lowered", path), ("plain", plain))
    }
    print(f"int8 mean abs error against Keras: {errors}")
    assert errors["lowered"] < 0.06
    assert errors["lowered"] < 1.5 * errors["plain"]


def test_subpixel_layer_round_trips_through_a_keras_file(tmp_path):
    layer = SubPixelConv2D(
        4,
        (2, 3),
        block_size=2,
        padding=((0, 2), (1, 1)),
        input_block_size=2,
        activation="relu",
        name="sub",
    )
    inputs = keras.Input((6, 8, 3))
    model = _randomized(keras.Model(inputs, layer(inputs)))
    config = layer.get_config()
    assert config["padding"] == ((0, 2), (1, 1))
    assert (config["input_block_size"], config["activation"]) == (2, "relu")
    assert model.output.shape == (None, 6, 6, 4)  # (8/2 - 1, 10/2 - 2) x 2
    x = RNG.normal(size=(2, 6, 8, 3)).astype("float32")
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    assert type(loaded.layers[1]) is SubPixelConv2D
    np.testing.assert_array_equal(
        loaded.predict(x, verbose=0), model.predict(x, verbose=0)
    )


def test_subpixel_layer_rejects_bad_arguments():
    with pytest.raises(ValueError, match="block_size"):
        SubPixelConv2D(4, 3, block_size=0)
    with pytest.raises(ValueError, match="padding"):
        SubPixelConv2D(4, 3, padding=-1)
    with pytest.raises(ValueError, match=r"divisible.*\(None, 7, 8, 3\)"):
        SubPixelConv2D(4, 3, input_block_size=2)(keras.Input((7, 8, 3)))
