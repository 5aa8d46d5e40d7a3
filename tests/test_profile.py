"""tgc.profile: torchprofile-rule MACs and parameter counts, derived by hand."""

from __future__ import annotations

import json
import time

import keras
import pytest

from keras_layers import (
    InstanceNormalization,
    ReflectionPadding2D,
    SuperConv2D,
    SuperConv2DTranspose,
    SuperSeparableConv2D,
)
from tfgancompress.models import (
    mobile_resnet_generator,
    patchgan_discriminator,
    resnet_generator,
    unet_generator,
)
from tfgancompress.profile import LayerProfile, ModelProfile, profile

# Hand counts at 256x256, from PyTorch's layer shapes. A conv's MACs are
# out_h * out_w * c_out * c_in * k * k (transposed convs on their output grid).
RESNET9_MACS = (
    256 * 256 * 64 * 3 * 49  # stem 7x7
    + 128 * 128 * 128 * 64 * 9  # down1
    + 64 * 64 * 256 * 128 * 9  # down2
    + 18 * 64 * 64 * 256 * 256 * 9  # 9 ResBlocks x 2 convs
    + 128 * 128 * 128 * 256 * 9  # up1 (transposed, output grid)
    + 256 * 256 * 64 * 128 * 9  # up2 (transposed, output grid)
    + 256 * 256 * 3 * 64 * 49  # out 7x7
)
RESNET9_PARAMS = (
    (3 * 49 * 64 + 64)
    + (64 * 9 * 128 + 128)
    + (128 * 9 * 256 + 256)
    + 18 * (256 * 9 * 256 + 256)
    + (256 * 9 * 128 + 128)
    + (128 * 9 * 64 + 64)
    + (64 * 49 * 3 + 3)
)
# Mobile: each ResBlock conv is depthwise 3x3 + pointwise 1x1, both with bias.
MOBILE_BLOCK_MACS = 64 * 64 * 256 * 9 + 64 * 64 * 256 * 256
MOBILE_MACS = RESNET9_MACS - 18 * 64 * 64 * 256 * 256 * 9 + 18 * MOBILE_BLOCK_MACS
MOBILE_PARAMS = (
    RESNET9_PARAMS - 18 * (256 * 9 * 256 + 256) + 18 * (256 * 9 + 256 + 256 * 256 + 256)
)


def unet256_counts() -> tuple[int, int]:
    """pix2pix unet_256 (ngf 64, BatchNorm): MACs and all weights.

    Down i: Conv4x4 s2 from c_{i-1} to c_i on a (256 / 2**i)^2 grid; up i:
    ConvT4x4 s2 on the (256 / 2**(i-1))^2 grid, input = skip concat (except
    the innermost), output c_{i-1}. No conv bias but the output conv's; each
    BatchNorm has gamma, beta, moving mean and variance.
    """
    widths = [3, 64, 128, 256, 512, 512, 512, 512, 512]
    macs = params = 0
    for i in range(1, 9):
        grid = (256 // 2**i) ** 2
        macs += grid * widths[i] * widths[i - 1] * 16
        params += widths[i - 1] * widths[i] * 16
    for i in range(8, 0, -1):
        grid = (256 // 2 ** (i - 1)) ** 2
        c_in = widths[i] if i == 8 else 2 * widths[i]
        c_out = widths[i - 1]
        macs += grid * c_out * c_in * 16
        params += c_in * c_out * 16 + (c_out if i == 1 else 0)
    norm_channels = sum(widths[2:8]) + sum(widths[1:8])  # downs 2..7, ups 2..8
    return macs, params + 4 * norm_channels


def patchgan_counts(gate_channels: int = 0) -> tuple[int, int]:
    """CycleGAN's 70x70 PatchGAN (ndf 64, non-affine instance norm) at 256."""
    layers = [  # (c_in, c_out, output side)
        (3, 64, 128),
        (64, 128, 64),
        (128, 256, 32),
        (256, 512, 31),
        (512, 1, 30),
    ]
    macs = sum(side * side * c_out * c_in * 16 for c_in, c_out, side in layers)
    params = sum(c_in * c_out * 16 + c_out for c_in, c_out, _ in layers)
    return macs, params + gate_channels


def plain_keras_resnet9(size=None) -> keras.Model:
    """CycleGAN resnet_9blocks from stock Keras layers, independent of the zoo."""

    def conv(x, filters, kernel, strides=1):
        return keras.layers.Conv2D(filters, kernel, strides=strides)(x)

    def norm_relu(x):
        return keras.layers.ReLU()(InstanceNormalization()(x))

    inputs = keras.Input((size, size, 3))
    x = norm_relu(conv(ReflectionPadding2D(3)(inputs), 64, 7))
    for filters in (128, 256):
        x = norm_relu(conv(keras.layers.ZeroPadding2D(1)(x), filters, 3, 2))
    for _ in range(9):
        y = norm_relu(conv(ReflectionPadding2D(1)(x), 256, 3))
        y = InstanceNormalization()(conv(ReflectionPadding2D(1)(y), 256, 3))
        x = keras.layers.Add()([x, y])
    for filters in (128, 64):
        x = keras.layers.Conv2DTranspose(
            filters, 3, strides=2, padding="same", output_padding=1
        )(x)
        x = norm_relu(x)
    x = conv(ReflectionPadding2D(3)(x), 3, 7)
    return keras.Model(inputs, keras.layers.Activation("tanh")(x))


def test_hand_counts_match_the_papers():
    assert RESNET9_MACS == 56_799_264_768
    assert RESNET9_PARAMS == 11_378_179
    assert unet256_counts() == (18_140_364_800, 54_413_955 + 2 * 4_928)


def test_plain_keras_resnet9_is_56_8_gmacs():
    result = profile(plain_keras_resnet9(), (256, 256, 3))
    assert abs(result.macs - 56.8e9) <= 0.05e9
    assert abs(result.params - 11.378e6) <= 2e3
    assert result.macs == RESNET9_MACS
    assert result.params == RESNET9_PARAMS


def test_zoo_resnet_generator():
    model = resnet_generator()
    result = profile(model, (256, 256, 3))
    assert abs(result.macs - 56.8e9) <= 0.05e9
    assert (result.macs, result.params) == (RESNET9_MACS, RESNET9_PARAMS)
    costs = {p.name: p.macs for p in result.per_layer}
    assert costs["up2_conv"] == 256 * 256 * 64 * 128 * 9
    assert costs["block5_norm1"] == costs["block5_add"] == costs["out_pad"] == 0
    with_batch = profile(model, (1, 256, 256, 3))
    assert with_batch.macs == RESNET9_MACS


def test_zoo_gated_resnet_costs_the_dense_macs():
    model = resnet_generator(ngf=16, n_blocks=2, gated="binary")
    dense = resnet_generator(ngf=16, n_blocks=2)
    gated, plain = profile(model, (64, 64, 3)), profile(dense, (64, 64, 3))
    assert gated.macs == plain.macs
    gate_params = sum(
        p.params for p in gated.per_layer if p.class_name == "ChannelGate"
    )
    assert gate_params > 0
    assert gated.params == plain.params + gate_params


def test_zoo_mobile_resnet_generator():
    result = profile(mobile_resnet_generator(), (256, 256, 3))
    assert (result.macs, result.params) == (MOBILE_MACS, MOBILE_PARAMS)
    assert (result.macs, result.params) == (18_314_428_416, 1_987_075)


def test_zoo_unet_generator():
    macs, params = unet256_counts()
    result = profile(unet_generator(), (256, 256, 3))
    assert (result.macs, result.params) == (macs, params)
    assert abs(result.params - 54.4e6) < 0.05e6


def test_zoo_patchgan_discriminator_plain_and_gated():
    macs, params = patchgan_counts()
    result = profile(patchgan_discriminator(), (256, 256, 3))
    assert (macs, params) == (3_146_809_344, 2_764_737)
    assert (result.macs, result.params) == (macs, params)
    gated = profile(patchgan_discriminator(gated=True), (256, 256, 3))
    assert (gated.macs, gated.params) == patchgan_counts(64 + 128 + 256 + 512)
    classes = {p.name: p.class_name for p in gated.per_layer}
    assert classes["layer2_conv"] == "SelectiveActivationConv2D"


def test_each_layer_rule_by_hand():
    inputs = keras.Input((None, None, 8))
    x = keras.layers.Conv2D(16, 3, padding="same", groups=4, name="grouped")(inputs)
    x = keras.layers.DepthwiseConv2D(3, depth_multiplier=2, name="dw")(x)
    x = keras.layers.SeparableConv2D(
        12, 3, strides=2, padding="same", depth_multiplier=2, name="sep"
    )(x)
    x = keras.layers.Conv2DTranspose(6, 4, strides=2, padding="same", name="up")(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    outputs = keras.layers.Dense(5, name="fc")(x)
    result = profile(keras.Model(inputs, outputs), (10, 10, 8))
    costs = {p.name: p.macs for p in result.per_layer}
    assert costs == {
        "grouped": 10 * 10 * 16 * (8 // 4) * 9,
        "dw": 8 * 8 * 32 * 9,
        "sep": 4 * 4 * 64 * 9 + 4 * 4 * 12 * 64,
        "up": 8 * 8 * 6 * 12 * 16,
        "pool": 0,
        "fc": 6 * 5,
    }
    assert result.macs == sum(costs.values())
    shapes = {p.name: p.output_shape for p in result.per_layer}
    assert shapes["sep"] == (1, 4, 4, 12) and shapes["fc"] == (1, 5)


def test_nested_and_shared_layers():
    shared = keras.layers.Conv2D(4, 1, name="shared")
    inner = keras.Sequential(
        [keras.Input((None, None, 4)), keras.layers.Conv2D(4, 3, padding="same")],
        name="inner",
    )
    inputs = keras.Input((None, None, 4))
    x = shared(shared(inputs))
    outputs = inner(x)
    result = profile(keras.Model(inputs, outputs), (6, 6, 4))
    names = [p.name for p in result.per_layer]
    assert names[:2] == ["shared", "shared"]
    assert names[2].startswith("inner/")
    assert [p.macs for p in result.per_layer] == [
        36 * 4 * 4,
        36 * 4 * 4,
        36 * 4 * 4 * 9,
    ]
    assert [p.params for p in result.per_layer] == [20, 0, 148]
    assert result.params == 20 + 148


def test_super_layers_count_active_outputs():
    inputs = keras.Input((8, 8, 3))
    a = SuperConv2D(16, 3, padding="same", name="a")
    x = a(inputs)
    x = SuperSeparableConv2D(10, 3, padding="same", name="b")(x, active_filters=4)
    t = SuperConv2DTranspose(6, 3, strides=2, padding="same", name="c")
    x = t(x)
    outputs = keras.layers.Conv2D(2, 1, name="d")(x)
    model = keras.Model(inputs, outputs)
    a.set_active_filters(5)
    t.set_active_filters(3)
    costs = {p.name: p.macs for p in profile(model, (8, 8, 3)).per_layer}
    assert costs == {
        "a": 64 * 5 * 3 * 9,
        "b": 64 * 16 * 9 + 64 * 4 * 16,
        "c": 256 * 3 * 10 * 9,
        "d": 256 * 2 * 6,
    }


def test_params_skip_integer_state():
    inputs = keras.Input((4, 4, 3))
    model = keras.Model(inputs, SuperConv2D(8, 3)(inputs))
    assert profile(model, (4, 4, 3)).params == 3 * 9 * 8 + 8


def test_profile_leaves_the_model_unchanged_and_is_fast():
    model = resnet_generator()
    start = time.perf_counter()
    profile(model, (256, 256, 3))
    assert time.perf_counter() - start < 5.0
    assert model.get_layer("stem_conv").output.shape == (None, None, None, 64)
    assert tuple(model.input.shape) == (None, None, None, 3)


def test_summary_and_to_dict():
    result = profile(resnet_generator(ngf=8, n_blocks=1), (32, 32, 3))
    assert isinstance(result, ModelProfile)
    assert all(isinstance(p, LayerProfile) for p in result.per_layer)
    text = result.summary()
    assert "stem_conv" in text and "TorchConv2DTranspose" in text
    assert f"{result.macs:,}" in text and f"{result.params:,}" in text
    assert str(result) == text
    data = json.loads(json.dumps(result.to_dict()))
    assert data["macs"] == result.macs and data["params"] == result.params
    assert data["input_shape"] == [32, 32, 3]
    assert sum(p["macs"] for p in data["per_layer"]) == result.macs
    assert sum(p["params"] for p in data["per_layer"]) == result.params
    assert data["per_layer"][1]["output_shape"] == [1, 32, 32, 8]


def test_multi_input_model():
    x = keras.Input((None, None, 3))
    y = keras.Input((None, None, 3))
    both = keras.layers.Concatenate()([x, y])
    model = keras.Model([x, y], keras.layers.Conv2D(2, 1)(both))
    result = profile(model, [(4, 4, 3), (4, 4, 3)])
    assert result.macs == 16 * 2 * 6
    assert result.input_shape == ((4, 4, 3), (4, 4, 3))


@pytest.mark.parametrize(
    "shape, message",
    [
        ((256, 256), "without the batch dim"),
        ((256, 256, 4), "does not match"),
        ((0, 256, 3), "positive ints"),
        ((256, 256.0, 3), "positive ints"),
        ((8, 256, 256, 3), "batch dim"),
        (256, "tuple of ints"),
        ([(8, 8, 3), (8, 8, 3)], "one shape per input"),
    ],
)
def test_bad_input_shape(shape, message):
    with pytest.raises(ValueError, match=message):
        profile(resnet_generator(ngf=4, n_blocks=1), shape)


def test_unsupported_layer_with_a_kernel_is_named():
    class Mystery(keras.layers.Layer):
        def build(self, input_shape):
            self.kernel = self.add_weight(shape=(input_shape[-1], 2), name="kernel")

        def call(self, inputs):
            return keras.ops.matmul(inputs, self.kernel)

    inputs = keras.Input((4,))
    model = keras.Model(inputs, Mystery(name="mystery")(inputs))
    with pytest.raises(ValueError, match="'mystery' of class Mystery"):
        profile(model, (4,))


def test_unsupported_models():
    class Subclassed(keras.Model):
        def call(self, inputs):
            return inputs

    with pytest.raises(ValueError, match="subclassed"):
        profile(Subclassed(), (4, 4, 3))
    with pytest.raises(TypeError, match="keras.Model"):
        profile(keras.layers.Conv2D(2, 1), (4, 4, 3))
