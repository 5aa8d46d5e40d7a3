"""The model zoo: sizes against PyTorch's layer shapes, gates, taps, saving."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from keras_layers import ChannelGate, SelectiveActivationConv2D
from tfgancompress.models import (
    TorchConv2DTranspose,
    mobile_resnet_generator,
    patchgan_discriminator,
    resnet_generator,
    tap_names,
    unet_generator,
    with_taps,
)


def conv_params(c_in, c_out, k, bias=True):
    return c_in * c_out * k * k + (c_out if bias else 0)


def resnet_params(ngf=64, n_blocks=9, mobile=False):
    """Parameter count of PyTorch's (Mobile)ResnetGenerator, instance norm."""
    width = 4 * ngf
    if mobile:
        separable = width * 9 + width + conv_params(width, width, 1)
        block = 2 * separable
    else:
        block = 2 * conv_params(width, width, 3)
    return (
        conv_params(3, ngf, 7)
        + conv_params(ngf, 2 * ngf, 3)
        + conv_params(2 * ngf, width, 3)
        + n_blocks * block
        + conv_params(width, 2 * ngf, 3)
        + conv_params(2 * ngf, ngf, 3)
        + conv_params(ngf, 3, 7)
    )


def unet_params(ngf=64, num_downs=8):
    """Trainable parameters of PyTorch's UnetGenerator with BatchNorm."""
    inner = [ngf * min(2**i, 8) for i in range(num_downs)]
    outer = [3] + inner[:-1]
    total = 0
    for i in range(num_downs):
        in_c = 3 if i == 0 else outer[i]
        total += conv_params(in_c, inner[i], 4, bias=False)
        if 0 < i < num_downs - 1:
            total += 2 * inner[i]
        up_in = inner[i] if i == num_downs - 1 else 2 * inner[i]
        total += conv_params(up_in, outer[i], 4, bias=i == 0)
        if i > 0:
            total += 2 * outer[i]
    return total


def patchgan_params(ndf=64, n_layers=3, in_c=3, norm="instance"):
    bias = norm == "instance"
    total = conv_params(in_c, ndf, 4)
    prev = ndf
    for n in range(1, n_layers + 1):
        width = ndf * min(2**n, 8)
        total += conv_params(prev, width, 4, bias=bias) + (0 if bias else 2 * width)
        prev = width
    return total + conv_params(prev, 1, 4)


def torchprofile_macs(model):
    """MACs counted like torchprofile: on each convolution's output grid."""
    total = 0
    for layer in model.layers:
        kernel = getattr(layer, "kernel", None)
        if kernel is None:
            continue
        outputs = int(np.prod(layer.output.shape[1:]))
        kh, kw, a, b = kernel.shape
        if isinstance(layer, keras.layers.DepthwiseConv2D):
            total += outputs * kh * kw
        elif isinstance(layer, keras.layers.Conv2DTranspose):
            total += outputs * b * kh * kw
        else:
            total += outputs * a * kh * kw
    return total


def trainable(model):
    return sum(int(np.prod(w.shape)) for w in model.trainable_weights)


def test_resnet_generator_size_and_macs():
    model = resnet_generator(input_shape=(256, 256, 3))
    assert resnet_params() == 11_378_179
    assert model.count_params() == 11_378_179
    assert torchprofile_macs(model) == 56_799_264_768
    assert round(torchprofile_macs(model) / 1e9, 1) == 56.8
    assert model.get_layer("up2_conv").output.shape == (None, 256, 256, 64)
    assert isinstance(model.get_layer("up1_conv"), TorchConv2DTranspose)


def test_mobile_unet_patchgan_sizes():
    assert mobile_resnet_generator().count_params() == resnet_params(mobile=True)
    assert resnet_params(mobile=True) == 1_987_075
    assert resnet_generator(ngf=16, n_blocks=6).count_params() == resnet_params(16, 6)
    unet = unet_generator()
    assert trainable(unet) == unet_params() == 54_413_955
    assert torchprofile_macs(unet) == 18_140_364_800
    assert trainable(unet_generator(ngf=8, num_downs=6, input_shape=None)) == (
        unet_params(8, 6)
    )
    assert patchgan_discriminator().count_params() == patchgan_params() == 2_764_737
    conditional = patchgan_discriminator(ndf=128, conditional=True, norm="batch")
    assert trainable(conditional) == patchgan_params(128, 3, 6, "batch")


def test_output_shapes():
    x = np.zeros((2, 64, 64, 3), np.float32)
    assert resnet_generator(ngf=8, n_blocks=2)(x).shape == (2, 64, 64, 3)
    mobile = mobile_resnet_generator(ngf=8, n_blocks=3, output_channels=1)
    assert mobile(x).shape == (2, 64, 64, 1)
    unet = unet_generator(ngf=8, num_downs=6, input_shape=(64, 64, 3))
    assert unet(x).shape == (2, 64, 64, 3)
    assert patchgan_discriminator(ndf=8)(x).shape == (2, 6, 6, 1)
    pair = np.zeros((2, 64, 64, 6), np.float32)
    assert patchgan_discriminator(ndf=8, conditional=True)(pair).shape == (2, 6, 6, 1)
    assert patchgan_discriminator(ndf=8, n_layers=2)(x).shape == (2, 14, 14, 1)


def test_bad_arguments():
    with pytest.raises(ValueError, match="norm must be one of"):
        resnet_generator(norm="group")
    with pytest.raises(ValueError, match="gated must be one of"):
        resnet_generator(gated="magnitude")
    with pytest.raises(ValueError, match=r"input_shape must be \(height, width, 3\)"):
        resnet_generator(input_shape=(64, 64, 1))
    with pytest.raises(ValueError, match="divisible by 256"):
        unet_generator(input_shape=(128, 128, 3))
    with pytest.raises(ValueError, match="num_downs must be >= 5"):
        unet_generator(num_downs=4)


def _randomize(model, rng):
    for weight in model.weights:
        if "gate" in weight.path:
            continue
        value = rng.normal(0, 0.2, weight.shape)
        if weight.name in ("gamma", "moving_variance"):
            value = rng.uniform(0.5, 1.5, weight.shape)
        weight.assign(value.astype(np.float32))


def _copy_weights(source, target):
    """Copies by layer name; a non-affine norm's gamma/beta go to its gate."""
    for layer in source.layers:
        if not layer.weights:
            continue
        other = target.get_layer(layer.name)
        if isinstance(other, SelectiveActivationConv2D):
            other.conv.set_weights(layer.get_weights())
        elif len(other.weights) == len(layer.weights):
            other.set_weights(layer.get_weights())
        else:
            gate = target.get_layer(layer.name.replace("_norm", "_gate"))
            gate.gamma.assign(layer.gamma)
            gate.beta.assign(layer.beta)


@pytest.mark.parametrize("mode", ["binary", "dmad", "scale", "gumbel"])
def test_open_gates_change_nothing_resnet(mode):
    rng = np.random.default_rng(0)
    plain = resnet_generator(ngf=4, n_blocks=2, affine=True)
    _randomize(plain, rng)
    gated = resnet_generator(ngf=4, n_blocks=2, affine=True, gated=mode)
    _copy_weights(plain, gated)
    gates = [layer.name for layer in gated.layers if isinstance(layer, ChannelGate)]
    if mode == "scale":
        assert "down2_gate" not in gates and "block1_gate2" not in gates
        assert len(gates) == 2 + 2 + 2
        assert gated.get_layer("stem_norm").scale is False
        assert gated.get_layer("down2_norm").scale is True
    else:
        assert len(gates) == 3 + 2 * 2 + 2
    x = rng.uniform(-1, 1, (1, 16, 16, 3)).astype(np.float32)
    np.testing.assert_allclose(gated(x), plain(x), atol=1e-5)


def test_gate_residual_off_and_mobile_unet_patchgan_gates():
    rng = np.random.default_rng(1)
    no_residual = resnet_generator(
        ngf=4, n_blocks=2, gated="binary", gate_residual=False
    )
    names = {layer.name for layer in no_residual.layers}
    assert {"down1_gate", "block2_gate1"} <= names
    assert not {"down2_gate", "block1_gate2"} & names

    x = rng.uniform(-1, 1, (1, 32, 32, 3)).astype(np.float32)
    pairs = [
        (
            mobile_resnet_generator(ngf=4, n_blocks=3),
            mobile_resnet_generator(ngf=4, n_blocks=3, gated="dmad"),
        ),
        (
            unet_generator(ngf=4, num_downs=5, input_shape=(32, 32, 3)),
            unet_generator(ngf=4, num_downs=5, input_shape=(32, 32, 3), gated="binary"),
        ),
        (patchgan_discriminator(ndf=4), patchgan_discriminator(ndf=4, gated=True)),
    ]
    for plain, gated in pairs:
        _randomize(plain, rng)
        _copy_weights(plain, gated)
        assert any(
            isinstance(layer, ChannelGate | SelectiveActivationConv2D)
            for layer in gated.layers
        )
        np.testing.assert_allclose(
            gated(x, training=False), plain(x, training=False), atol=1e-5
        )
    unet_gates = [
        layer.name for layer in pairs[1][1].layers if isinstance(layer, ChannelGate)
    ]
    assert unet_gates == ["down2_gate", "down3_gate", "down4_gate", "up5_gate",
                          "up4_gate", "up3_gate", "up2_gate"]  # fmt: skip


def test_gated_models_keras_round_trip(tmp_path):
    rng = np.random.default_rng(2)
    x = rng.uniform(-1, 1, (1, 16, 16, 3)).astype(np.float32)
    models = [
        resnet_generator(ngf=4, n_blocks=2, gated="dmad"),
        mobile_resnet_generator(ngf=4, n_blocks=1, gated="binary"),
        patchgan_discriminator(ndf=4, n_layers=2, gated=True),
    ]
    for model in models:
        _randomize(model, rng)
        gate = next(
            layer.gate if isinstance(layer, SelectiveActivationConv2D) else layer
            for layer in model.layers
            if isinstance(layer, ChannelGate | SelectiveActivationConv2D)
        )
        gate.gate_parameter.assign(np.where(np.arange(gate.channels) % 2, 1.0, -1.0))
        path = tmp_path / f"{model.name}.keras"
        model.save(path)
        restored = keras.saving.load_model(path)
        assert [layer.name for layer in restored.layers] == [
            layer.name for layer in model.layers
        ]
        np.testing.assert_allclose(restored(x), model(x), atol=1e-6)


def test_taps():
    resnet = resnet_generator(ngf=4, n_blocks=9)
    assert tap_names(resnet) == ["down2_relu", "block3_add", "block6_add", "block9_add"]
    image, *features = with_taps(resnet)(np.zeros((2, 32, 32, 3), np.float32))
    assert image.shape == (2, 32, 32, 3)
    assert [tuple(f.shape) for f in features] == [(2, 8, 8, 16)] * 4
    assert tap_names(mobile_resnet_generator(ngf=4, n_blocks=6)) == [
        "down2_relu", "block2_add", "block4_add", "block6_add"]  # fmt: skip

    unet = unet_generator(ngf=4, use_dropout=True, gated="binary", input_shape=None)
    assert tap_names(unet) == ["up5_dropout", "up4_gate", "up3_gate", "up2_gate"]
    _, *features = with_taps(unet)(np.zeros((1, 256, 256, 3), np.float32))
    assert [tuple(f.shape) for f in features] == [
        (1, 16, 16, 32), (1, 32, 32, 16), (1, 64, 64, 8), (1, 128, 128, 4)]  # fmt: skip

    discriminator = patchgan_discriminator(ndf=4)
    assert tap_names(discriminator) == ["layer2_lrelu", "layer3_lrelu"]
    custom = with_taps(discriminator, ["layer1_lrelu"])
    assert len(custom.outputs) == 2
    with pytest.raises(ValueError, match="no layer named"):
        with_taps(discriminator, ["block3_add"])
    plain = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    with pytest.raises(ValueError, match="no known distillation taps"):
        tap_names(plain)


def test_models_are_flat_with_unique_names():
    for model in (
        resnet_generator(ngf=4, n_blocks=2, gated="gumbel"),
        mobile_resnet_generator(ngf=4, n_blocks=2),
        unet_generator(ngf=4, num_downs=5, input_shape=None),
        patchgan_discriminator(ndf=4, gated=True),
    ):
        assert not any(isinstance(layer, keras.Model) for layer in model.layers)
        names = [layer.name for layer in model.layers]
        assert len(names) == len(set(names))
