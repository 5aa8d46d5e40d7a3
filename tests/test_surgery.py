"""slim(): gated models become plain, smaller models computing the same thing."""

import keras
import numpy as np
import pytest
from gate_patterns import (
    assert_equivalent,
    assert_plain,
    gate_list,
    images,
    randomize_gates,
    randomize_norms,
)

import keras_layers
import tfgancompress as tgc
from tfgancompress.surgery import SurgeryError, live_channels, slim


def _resnet_macs(ngf, n_blocks, inner, stream, stem, down1, up1, up2, size):
    """torchprofile MACs of a ResNet generator with the given live widths."""
    h1, h2, h3 = size, size // 2, size // 4
    macs = h1 * h1 * stem * 3 * 49
    macs += h2 * h2 * down1 * stem * 9
    macs += h3 * h3 * stream * down1 * 9
    for width in inner:
        macs += 2 * h3 * h3 * stream * width * 9
    macs += h2 * h2 * up1 * stream * 9
    macs += h1 * h1 * up2 * up1 * 9
    macs += h1 * h1 * 3 * up2 * 49
    return macs


def test_binary_resnet_matches_and_counts_macs():
    model = tgc.models.resnet_generator(ngf=8, n_blocks=3, gated="binary")
    masks = randomize_gates(model, keep=0.5)
    small = slim(model)
    assert_plain(small)
    assert_equivalent(model, small, images())

    stream_names = ["down2_gate"] + [f"block{b}_gate2" for b in (1, 2, 3)]
    stream = int(np.any([masks[n] for n in stream_names], axis=0).sum())
    widths = {n: int(m.sum()) for n, m in masks.items()}
    expected = _resnet_macs(
        8,
        3,
        [widths[f"block{b}_gate1"] for b in (1, 2, 3)],
        stream,
        widths["stem_gate"],
        widths["down1_gate"],
        widths["up1_gate"],
        widths["up2_gate"],
        64,
    )
    assert tgc.profile(small, (64, 64, 3)).macs == expected
    assert tgc.profile(small, (64, 64, 3)).macs < tgc.profile(model, (64, 64, 3)).macs
    assert small.get_layer("block2_conv1").filters == widths["block2_gate1"]
    assert small.get_layer("down2_conv").filters == stream


def test_residual_channel_lives_if_any_member_lives():
    model = tgc.models.resnet_generator(ngf=4, n_blocks=2, gated="binary")
    for gate in gate_list(model):
        gate.alpha.assign(np.ones(gate.channels))
    alive = {"down2_gate": [1, 3], "block1_gate2": [], "block2_gate2": [7]}
    for name, channels in alive.items():
        alpha = np.zeros(16)
        alpha[channels] = 1.0
        model.get_layer(name).alpha.assign(alpha)
    small = slim(model)
    for layer in ("down2_conv", "block1_conv2", "block2_conv2"):
        assert small.get_layer(layer).filters == 3
    assert small.get_layer("block1_conv1").kernel.shape[2] == 3
    assert small.get_layer("up1_conv").kernel.shape[3] == 3
    assert_equivalent(model, small, images((1, 32, 32, 3)))


@pytest.mark.parametrize("mode", ["dmad", "gumbel"])
def test_other_hard_gates(mode):
    model = tgc.models.resnet_generator(ngf=8, n_blocks=2, gated=mode)
    randomize_gates(model, keep=0.4)
    small = slim(model)
    assert_plain(small)
    assert_equivalent(model, small, images((1, 32, 32, 3)))


def test_scale_gates_fold_constants_exactly():
    """GAN Slimming: gamma = 0 leaves beta, a constant that must be folded."""
    model = tgc.models.resnet_generator(ngf=8, n_blocks=3, gated="scale")
    masks = randomize_gates(model, keep=0.5, shift=True)
    small = slim(model)
    assert_plain(small)
    assert_equivalent(model, small, images())
    # Constants through reflection padding fold into biases: block inner
    # widths are exactly the live gammas. Zero-padded / transposed consumers
    # keep at most one carrier channel per layer.
    for block in (1, 2, 3):
        kept = small.get_layer(f"block{block}_conv1").filters
        assert kept == masks[f"block{block}_gate1"].sum()
    for layer, gate in (("stem_conv", "stem_gate"), ("up1_conv", "up1_gate")):
        kept = small.get_layer(layer).filters
        assert masks[gate].sum() <= kept <= masks[gate].sum() + 1


def test_mobile_resnet_separable_blocks():
    model = tgc.models.mobile_resnet_generator(ngf=8, n_blocks=2, gated="binary")
    randomize_gates(model, keep=0.5)
    small = slim(model)
    assert_plain(small)
    assert_equivalent(model, small, images((1, 32, 32, 3)))
    full = tgc.profile(model, (32, 32, 3)).macs
    assert tgc.profile(small, (32, 32, 3)).macs < full


def test_all_gates_closed_but_one_per_layer():
    model = tgc.models.resnet_generator(ngf=8, n_blocks=2, gated="binary")
    for gate in gate_list(model):
        alpha = np.zeros(gate.channels)
        alpha[0] = 1.0
        gate.alpha.assign(alpha)
    small = slim(model)
    assert_equivalent(model, small, images((1, 32, 32, 3)))
    counts = {c.name: c.kept for c in live_channels(model)}
    assert counts["stem_conv"] == 1
    assert counts["block1_conv1"] == 1
    assert counts["out_conv"] == 3


def test_concat_skip_and_batch_norm():
    """U-Net style: BatchNorm, LeakyReLU, skip concatenation, ConvTranspose."""
    inputs = keras.Input((32, 32, 3))
    down = keras.layers.ZeroPadding2D(1)(inputs)
    down = keras.layers.Conv2D(8, 4, strides=2, use_bias=False)(down)
    down = keras.layers.BatchNormalization()(down)
    down = keras_layers.ChannelGate(mode="binary")(down)
    down = keras.layers.LeakyReLU(0.2)(down)
    up = keras.layers.Conv2DTranspose(6, 4, strides=2, padding="same")(down)
    up = keras.layers.BatchNormalization()(up)
    up = keras_layers.ChannelGate(mode="binary")(up)
    up = keras.layers.ReLU()(up)
    merged = keras.layers.Concatenate()([inputs, up])
    outputs = keras.layers.Conv2D(3, 3, padding="same", activation="tanh")(merged)
    model = keras.Model(inputs, outputs)
    randomize_norms(model)
    masks = randomize_gates(model, keep=0.5)
    small = slim(model)
    assert_equivalent(model, small, images((2, 32, 32, 3)))
    concat = [layer for layer in small.layers if "concatenate" in layer.name][0]
    up_gate = [m for n, m in masks.items() if n != gate_list(model)[0].name][0]
    assert concat.output.shape[-1] == 3 + up_gate.sum()


def test_selective_activation_discriminator():
    inputs = keras.Input((32, 32, 6))
    x = keras.layers.ZeroPadding2D(1)(inputs)
    x = keras_layers.SelectiveActivationConv2D(8, 4, strides=2)(x)
    x = keras.layers.LeakyReLU(0.2)(x)
    x = keras.layers.ZeroPadding2D(1)(x)
    x = keras_layers.SelectiveActivationConv2D(16, 4, strides=2, norm="instance")(x)
    x = keras.layers.LeakyReLU(0.2)(x)
    x = keras.layers.ZeroPadding2D(1)(x)
    outputs = keras.layers.Conv2D(1, 4)(x)
    model = keras.Model(inputs, outputs)
    randomize_gates(model, keep=0.5)
    small = slim(model)
    assert_plain(small)
    assert_equivalent(model, small, images((2, 32, 32, 6)))
    kept = [c.kept for c in live_channels(model)]
    assert kept == [int(g.keep_mask().sum()) for g in gate_list(model)] + [1]


def test_super_layers_slice_to_active_width():
    inputs = keras.Input((16, 16, 3))
    x = keras_layers.SuperConv2D(8, 3, padding="same")(inputs)
    x = keras.layers.ReLU()(x)
    x = keras_layers.SuperSeparableConv2D(8, 3, padding="same")(x)
    x = keras.layers.ReLU()(x)
    x = keras_layers.SuperConv2DTranspose(6, 3, strides=2, padding="same")(x)
    x = keras.layers.ReLU()(x)
    outputs = keras.layers.Conv2D(3, 1)(x)
    model = keras.Model(inputs, outputs)
    widths = [3, 5, 2]
    supers = [layer for layer in model.layers if hasattr(layer, "active_filters")]
    for layer, width in zip(supers, widths, strict=True):
        layer.set_active_filters(width)
    small = slim(model)
    assert_plain(small)
    assert_equivalent(model, small, images((1, 16, 16, 3)))
    convs = [c for c in live_channels(model)]
    assert [c.kept for c in convs] == [*widths, 3]


def test_errors_are_specific():
    inputs = keras.Input((8, 8, 3))
    gated = keras_layers.ChannelGate(mode="binary", name="input_gate")(inputs)
    model = keras.Model(inputs, keras.layers.Conv2D(2, 1)(gated))
    with pytest.raises(SurgeryError, match="input_gate.*model input"):
        slim(model)

    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 1)(inputs)
    x = keras.layers.LayerNormalization(name="layer_norm")(x)
    model = keras.Model(inputs, x)
    with pytest.raises(SurgeryError, match="layer_norm.*LayerNormalization"):
        slim(model)

    inputs = keras.Input((8, 8, 3))
    conv = keras.layers.Conv2D(4, 1)(inputs)
    gated = keras_layers.ChannelGate(mode="binary", name="leaky_gate")(conv)
    model = keras.Model(inputs, [gated, conv])
    with pytest.raises(SurgeryError, match="leaky_gate.*also used"):
        slim(model)


@pytest.mark.parametrize("norm", ["batch", "instance"])
def test_unet_generator_skips(norm):
    model = tgc.models.unet_generator(
        ngf=8, num_downs=5, norm=norm, gated="binary", input_shape=(64, 64, 3)
    )
    randomize_norms(model)
    randomize_gates(model, keep=0.5)
    small = slim(model)
    assert_plain(small)
    assert_equivalent(model, small, images((2, 64, 64, 3)))
    assert tgc.profile(small, (64, 64, 3)).macs < tgc.profile(model, (64, 64, 3)).macs


@pytest.mark.parametrize("conditional", [False, True])
def test_patchgan_discriminator(conditional):
    model = tgc.models.patchgan_discriminator(
        ndf=8, n_layers=3, conditional=conditional, gated=True
    )
    randomize_gates(model, keep=0.5)
    small = slim(model)
    assert_plain(small)
    channels = 6 if conditional else 3
    assert_equivalent(model, small, images((2, 64, 64, channels)))
    kept = [c.kept for c in live_channels(model)]
    assert kept == [int(g.keep_mask().sum()) for g in gate_list(model)] + [1]


def test_slimmed_model_saves_and_loads(tmp_path):
    model = tgc.models.resnet_generator(ngf=8, n_blocks=2, gated="scale")
    randomize_gates(model, keep=0.5, shift=True)
    small = slim(model)
    path = tmp_path / "small.keras"
    small.save(path)
    loaded = keras.models.load_model(path)
    assert_equivalent(small, loaded, images((1, 32, 32, 3)))


@pytest.mark.parametrize(
    "build", [tgc.models.resnet_generator, tgc.models.mobile_resnet_generator]
)
def test_channel_groups_tie_the_residual_stream(build):
    model = build(ngf=4, n_blocks=3, gated="binary")
    groups = tgc.surgery.channel_groups(model)
    stream = ("down2_gate", "block1_gate2", "block2_gate2", "block3_gate2")
    assert groups.tied == (stream,)
    assert list(groups.ids) == list(tgc.surgery.gate_layers(model))
    for name in stream:
        np.testing.assert_array_equal(groups.ids[name], groups.ids["down2_gate"])
    untied = [ids for name, ids in groups.ids.items() if name not in stream]
    singles = np.concatenate(untied)
    assert len(set(singles)) == len(singles)
    assert not set(singles) & set(groups.ids["down2_gate"])
    assert groups.count == len(singles) + 16
    everything = np.concatenate(list(groups.ids.values()))
    assert set(everything) == set(range(groups.count))


def test_channel_groups_match_what_slim_keeps():
    """A stream channel survives iff one member of its group keeps it."""
    model = tgc.models.resnet_generator(ngf=4, n_blocks=3, gated="binary")
    masks = randomize_gates(model, keep=0.3)
    groups = tgc.surgery.channel_groups(model)
    alive = np.zeros(groups.count, bool)
    for name, ids in groups.ids.items():
        alive[ids[masks[name]]] = True
    kept = tgc.surgery.kept_channels(model)
    for name, layer in tgc.surgery.gate_producers(model).items():
        expected = np.flatnonzero(alive[groups.ids[name]])
        np.testing.assert_array_equal(kept[layer.name], expected)


def test_channel_groups_unet_skips_are_not_tied():
    model = tgc.models.unet_generator(
        ngf=4, num_downs=5, gated="binary", input_shape=(32, 32, 3)
    )
    groups = tgc.surgery.channel_groups(model)
    assert groups.tied == ()
    everything = np.concatenate(list(groups.ids.values()))
    assert sorted(everything) == list(range(groups.count))
    layers = tgc.surgery.gate_layers(model)
    assert {name: len(ids) for name, ids in groups.ids.items()} == {
        name: gate.channels for name, gate in layers.items()
    }


def test_gate_names_and_producers():
    model = tgc.models.patchgan_discriminator(ndf=4, gated=True)
    layers = tgc.surgery.gate_layers(model)
    assert list(layers) == [f"layer{i}_conv_gate" for i in (1, 2, 3, 4)]
    assert layers["layer2_conv_gate"] is model.get_layer("layer2_conv").gate
    producers = tgc.surgery.gate_producers(model)
    assert producers["layer3_conv_gate"] is model.get_layer("layer3_conv").conv
    resnet = tgc.models.resnet_generator(ngf=4, n_blocks=1, gated="binary")
    producers = tgc.surgery.gate_producers(resnet)
    assert producers["up1_gate"] is resnet.get_layer("up1_conv")
    assert producers["block1_gate2"] is resnet.get_layer("block1_conv2")
    mobile = tgc.models.mobile_resnet_generator(ngf=4, n_blocks=1, gated="binary")
    producers = tgc.surgery.gate_producers(mobile)
    assert producers["block1_gate1"] is mobile.get_layer("block1_pwconv1")
