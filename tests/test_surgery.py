"""slim(): gated models become plain, smaller models computing the same thing."""

import keras
import numpy as np
import pytest

import keras_layers
import tfgancompress as tgc
from tfgancompress.surgery import SurgeryError, l1_importance, live_channels, slim

RNG = np.random.default_rng(0)


def _images(shape=(2, 64, 64, 3)):
    return RNG.uniform(-1.0, 1.0, shape).astype("float32")


def _gates(model):
    gates = []
    for layer in model.layers:
        if isinstance(layer, keras_layers.ChannelGate):
            gates.append(layer)
        elif isinstance(layer, keras_layers.SelectiveActivationConv2D):
            gates.append(layer.gate)
    return gates


def _randomize_gates(model, keep=0.5, shift=False):
    """Random hard decisions on every gate; returns {gate name: keep mask}."""
    masks = {}
    for gate in _gates(model):
        channels = gate.channels
        alive = RNG.uniform(size=channels) < keep
        alive[RNG.integers(channels)] = True
        if gate.mode == "binary":
            gate.alpha.assign(np.where(alive, 0.9, 0.1))
        elif gate.mode == "dmad":
            gate.weight.assign(np.where(alive, 0.3, -0.3))
        elif gate.mode == "gumbel":
            gate.logits.assign(np.where(alive, 2.0, -2.0))
        else:
            gamma = RNG.uniform(0.5, 1.5, channels) * RNG.choice([-1, 1], channels)
            gate.gamma.assign(np.where(alive, gamma, 0.0))
            if shift:
                gate.beta.assign(RNG.normal(0.0, 0.5, channels))
        masks[gate.name] = alive
    return masks


def _randomize_norms(model):
    """Non-trivial affine and batch statistics so folding is really tested."""
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            channels = layer.gamma.shape[0]
            layer.moving_mean.assign(RNG.normal(0, 0.3, channels))
            layer.moving_variance.assign(RNG.uniform(0.5, 2.0, channels))
            layer.gamma.assign(RNG.uniform(0.5, 1.5, channels))
            layer.beta.assign(RNG.normal(0, 0.3, channels))
        elif isinstance(layer, keras_layers.InstanceNormalization) and layer.scale:
            layer.gamma.assign(RNG.uniform(0.5, 1.5, layer.gamma.shape[0]))
            layer.beta.assign(RNG.normal(0, 0.3, layer.beta.shape[0]))


def _assert_equivalent(model, small, x):
    expected = np.asarray(model(x, training=False))
    got = np.asarray(small(x, training=False))
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)


def _assert_plain(model):
    for layer in model.layers:
        assert not isinstance(
            layer,
            (
                keras_layers.ChannelGate,
                keras_layers.SelectiveActivationConv2D,
                keras_layers.SuperConv2D,
                keras_layers.SuperConv2DTranspose,
                keras_layers.SuperSeparableConv2D,
            ),
        ), layer.name


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
    masks = _randomize_gates(model, keep=0.5)
    small = slim(model)
    _assert_plain(small)
    _assert_equivalent(model, small, _images())

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
    for gate in _gates(model):
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
    _assert_equivalent(model, small, _images((1, 32, 32, 3)))


@pytest.mark.parametrize("mode", ["dmad", "gumbel"])
def test_other_hard_gates(mode):
    model = tgc.models.resnet_generator(ngf=8, n_blocks=2, gated=mode)
    _randomize_gates(model, keep=0.4)
    small = slim(model)
    _assert_plain(small)
    _assert_equivalent(model, small, _images((1, 32, 32, 3)))


def test_scale_gates_fold_constants_exactly():
    """GAN Slimming: gamma = 0 leaves beta, a constant that must be folded."""
    model = tgc.models.resnet_generator(ngf=8, n_blocks=3, gated="scale")
    masks = _randomize_gates(model, keep=0.5, shift=True)
    small = slim(model)
    _assert_plain(small)
    _assert_equivalent(model, small, _images())
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
    _randomize_gates(model, keep=0.5)
    small = slim(model)
    _assert_plain(small)
    _assert_equivalent(model, small, _images((1, 32, 32, 3)))
    full = tgc.profile(model, (32, 32, 3)).macs
    assert tgc.profile(small, (32, 32, 3)).macs < full


def test_all_gates_closed_but_one_per_layer():
    model = tgc.models.resnet_generator(ngf=8, n_blocks=2, gated="binary")
    for gate in _gates(model):
        alpha = np.zeros(gate.channels)
        alpha[0] = 1.0
        gate.alpha.assign(alpha)
    small = slim(model)
    _assert_equivalent(model, small, _images((1, 32, 32, 3)))
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
    _randomize_norms(model)
    masks = _randomize_gates(model, keep=0.5)
    small = slim(model)
    _assert_equivalent(model, small, _images((2, 32, 32, 3)))
    concat = [layer for layer in small.layers if "concatenate" in layer.name][0]
    up_gate = [m for n, m in masks.items() if n != _gates(model)[0].name][0]
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
    _randomize_gates(model, keep=0.5)
    small = slim(model)
    _assert_plain(small)
    _assert_equivalent(model, small, _images((2, 32, 32, 6)))
    kept = [c.kept for c in live_channels(model)]
    assert kept == [int(g.keep_mask().sum()) for g in _gates(model)] + [1]


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
    _assert_plain(small)
    _assert_equivalent(model, small, _images((1, 16, 16, 3)))
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
    _randomize_norms(model)
    _randomize_gates(model, keep=0.5)
    small = slim(model)
    _assert_plain(small)
    _assert_equivalent(model, small, _images((2, 64, 64, 3)))
    assert tgc.profile(small, (64, 64, 3)).macs < tgc.profile(model, (64, 64, 3)).macs


@pytest.mark.parametrize("conditional", [False, True])
def test_patchgan_discriminator(conditional):
    model = tgc.models.patchgan_discriminator(
        ndf=8, n_layers=3, conditional=conditional, gated=True
    )
    _randomize_gates(model, keep=0.5)
    small = slim(model)
    _assert_plain(small)
    channels = 6 if conditional else 3
    _assert_equivalent(model, small, _images((2, 64, 64, channels)))
    kept = [c.kept for c in live_channels(model)]
    assert kept == [int(g.keep_mask().sum()) for g in _gates(model)] + [1]


def test_slimmed_model_saves_and_loads(tmp_path):
    model = tgc.models.resnet_generator(ngf=8, n_blocks=2, gated="scale")
    _randomize_gates(model, keep=0.5, shift=True)
    small = slim(model)
    path = tmp_path / "small.keras"
    small.save(path)
    loaded = keras.models.load_model(path)
    _assert_equivalent(small, loaded, _images((1, 32, 32, 3)))


def test_l1_importance_shared_by_residual_group():
    model = tgc.models.resnet_generator(ngf=4, n_blocks=2, gated="binary")
    importance = l1_importance(model)
    stem = np.abs(model.get_layer("stem_conv").kernel.numpy()).sum((0, 1, 2))
    np.testing.assert_allclose(importance["stem_gate"], stem, rtol=1e-6)
    stream = sum(
        np.abs(model.get_layer(name).kernel.numpy()).sum((0, 1, 2))
        for name in ("down2_conv", "block1_conv2", "block2_conv2")
    )
    for gate in ("down2_gate", "block1_gate2", "block2_gate2"):
        np.testing.assert_allclose(importance[gate], stream, rtol=1e-6)
    up1 = np.abs(model.get_layer("up1_conv").kernel.numpy()).sum((0, 1, 3))
    np.testing.assert_allclose(importance["up1_gate"], up1, rtol=1e-6)


@pytest.mark.parametrize("mode", ["binary", "scale"])
def test_add_gates_copies_weights_and_prunes(mode):
    teacher = tgc.models.resnet_generator(ngf=8, n_blocks=2, affine=True)
    _randomize_norms(teacher)
    gated = tgc.surgery.add_gates(teacher, mode)
    gates = _gates(gated)
    norms = [
        layer
        for layer in teacher.layers
        if isinstance(layer, keras_layers.InstanceNormalization)
    ]
    assert sorted(g.name for g in gates) == sorted(f"{n.name}_gate" for n in norms)
    x = _images((1, 32, 32, 3))
    _assert_equivalent(teacher, gated, x)
    _randomize_gates(gated, keep=0.5, shift=False)
    _assert_equivalent(gated, slim(gated), x)


def test_l1_prune_keeps_top_filters():
    teacher = tgc.models.resnet_generator(ngf=8, n_blocks=2, affine=True)
    pruned = tgc.surgery.l1_prune(teacher, 0.5)
    _assert_plain(pruned)
    assert pruned.get_layer("stem_conv").filters == 4
    assert pruned.get_layer("block1_conv1").filters == 16
    stem = np.abs(teacher.get_layer("stem_conv").kernel.numpy()).sum((0, 1, 2))
    kept = np.sort(np.argsort(stem)[-4:])
    np.testing.assert_allclose(
        pruned.get_layer("stem_conv").kernel.numpy(),
        teacher.get_layer("stem_conv").kernel.numpy()[..., kept],
    )
    with pytest.raises(ValueError, match="keep_ratio"):
        tgc.surgery.l1_prune(teacher, 0.0)
