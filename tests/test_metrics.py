"""Tests for tfgancompress.metrics and tfgancompress.features.

References: scikit-image's PSNR/SSIM, tf.image.ssim, NumPy/SciPy statistics,
closed-form Fréchet distances of known Gaussians, a direct double-loop MMD,
and ImageNet classification of scikit-image photos by EfficientNet-Lite0.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
import scipy.linalg
import skimage.data
import skimage.filters
import tensorflow as tf
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from tfgancompress import features, metrics
from tfgancompress.models import CheckpointError

CAT_CLASSES = set(range(281, 286))  # tabby, tiger cat, Persian, Siamese, Egyptian
COFFEE_CLASSES = {967, 968}  # espresso, cup


def _to_unit(image: np.ndarray) -> np.ndarray:
    return image[..., :3].astype(np.float32) / 127.5 - 1.0


def _pairs() -> tuple[np.ndarray, np.ndarray]:
    """Random and structured 64x64 images with noisy/blurred counterparts."""
    rng = np.random.default_rng(0)
    photos = [
        skimage.data.astronaut()[100:164, 180:244],
        skimage.data.coffee()[150:214, 200:264],
        skimage.data.chelsea()[80:144, 120:184],
    ]
    clean = [_to_unit(p) for p in photos]
    clean.append(rng.uniform(-1, 1, (64, 64, 3)).astype(np.float32))
    clean.append(np.tile(np.linspace(-1, 1, 64, dtype=np.float32), (64, 1))[..., None])
    clean[-1] = np.repeat(clean[-1], 3, axis=-1)
    degraded = [
        np.clip(clean[0] + rng.normal(0, 0.1, clean[0].shape), -1, 1),
        skimage.filters.gaussian(clean[1], sigma=1.5, channel_axis=-1),
        clean[2] * 0.8 + 0.1,
        np.clip(clean[3] + rng.normal(0, 0.3, clean[3].shape), -1, 1),
        clean[4][:, ::-1],
    ]
    return np.stack(clean), np.stack(degraded).astype(np.float32)


def _skimage_ssim(a: np.ndarray, b: np.ndarray) -> float:
    return structural_similarity(
        a.astype(np.float64),
        b.astype(np.float64),
        data_range=2.0,
        channel_axis=-1,
        gaussian_weights=True,
        sigma=1.5,
        use_sample_covariance=False,
    )


def test_psnr_ssim_l1_match_references():
    a, b = _pairs()
    want_psnr = [
        peak_signal_noise_ratio(x, y, data_range=2.0) for x, y in zip(a, b, strict=True)
    ]
    want_ssim = [_skimage_ssim(x, y) for x, y in zip(a, b, strict=True)]
    np.testing.assert_allclose(metrics.psnr(a, b), want_psnr, rtol=1e-5)
    np.testing.assert_allclose(metrics.ssim(a, b), want_ssim, atol=2e-5)
    np.testing.assert_allclose(
        metrics.ssim(a, b), tf.image.ssim(a, b, max_val=2.0), atol=1e-5
    )
    np.testing.assert_allclose(
        metrics.l1(a, b), np.abs(a - b).mean(axis=(1, 2, 3)), rtol=1e-5
    )
    # The cases really differ (the SSIM values span a wide range).
    assert min(want_ssim) < 0.5 < max(want_ssim) < 1.0
    np.testing.assert_allclose(metrics.ssim(a, a), 1.0, atol=1e-5)
    assert np.all(np.isinf(metrics.psnr(a, a)))
    # PSNR with range 2 on [-1, 1] = PSNR with range 1 on [0, 1].
    np.testing.assert_allclose(
        metrics.psnr(a, b), metrics.psnr((a + 1) / 2, (b + 1) / 2, 1.0), rtol=1e-5
    )


def test_detail_psnr_removes_exactly_each_images_mean_colour_difference():
    a, b = _pairs()
    offset = np.array([0.2, -0.1, 0.05], "float32")
    shifted = np.clip(b + offset, -1.0, 1.0)
    difference = a - shifted
    residual = difference - difference.mean(axis=(1, 2), keepdims=True)
    want = 10 * np.log10(4.0 / np.square(residual).mean(axis=(1, 2, 3)))
    np.testing.assert_allclose(metrics.detail_psnr(a, shifted), want, rtol=1e-5)
    # The squared error splits into tone + detail: the detail PSNR is never lower.
    assert np.all(metrics.detail_psnr(a, shifted) >= metrics.psnr(a, shifted))
    tone = np.square(difference.mean(axis=(1, 2))).mean(axis=1)
    np.testing.assert_allclose(
        10 ** (-np.asarray(metrics.psnr(a, shifted)) / 10) * 4.0,
        tone + np.square(residual).mean(axis=(1, 2, 3)),
        rtol=1e-4,
    )
    # A pure colour offset is all tone: no detail error (up to float rounding).
    assert np.all(np.asarray(metrics.detail_psnr(b, b + offset)) > 100.0)
    assert np.all(np.asarray(metrics.psnr(b, b + offset)) < 30.0)
    with pytest.raises(ValueError, match="detail_psnr.*same shape"):
        metrics.detail_psnr(a, b[:, :8])


def test_image_metrics_run_under_xla():
    a, b = _pairs()
    compiled = tf.function(lambda x, y: metrics.ssim(x, y), jit_compile=True)
    np.testing.assert_allclose(compiled(a, b), metrics.ssim(a, b), atol=2e-5)


def test_streaming_image_metrics_average_every_image():
    a, b = _pairs()
    for metric, fn in (
        (metrics.PSNR(), metrics.psnr),
        (metrics.SSIM(), metrics.ssim),
        (metrics.L1(), metrics.l1),
    ):
        metric.update_state(a[:3], b[:3])
        metric.update_state(a[3:], b[3:])
        np.testing.assert_allclose(float(metric.result()), np.mean(fn(a, b)), rtol=1e-5)
        clone = type(metric).from_config(metric.get_config())
        assert clone.name == metric.name
        metric.reset_state()
        assert float(metric.result()) == 0.0


def test_image_metrics_reject_bad_shapes():
    a = np.zeros((2, 16, 16, 3), np.float32)
    with pytest.raises(
        ValueError, match=r"same shape.*\(2, 16, 16, 3\).*\(2, 16, 8, 3\)"
    ):
        metrics.psnr(a, a[:, :, :8])
    with pytest.raises(ValueError, match="at least 11x11"):
        metrics.ssim(a[:, :8, :8], a[:, :8, :8])
    with pytest.raises(ValueError, match="same shape"):
        metrics.l1(a[0], a[0])


def test_feature_statistics_stream_like_numpy():
    rng = np.random.default_rng(1)
    # A large common offset: the naive sum-of-outer-products formula would
    # lose most digits in float32; the merged float64 statistics must not.
    x = rng.normal(size=(501, 6)) @ rng.normal(size=(6, 6)) + 1e4
    stats = metrics.FeatureStatistics()
    for chunk in np.array_split(x, [1, 2, 100, 350]):
        stats.update(chunk.astype(np.float32))
    x32 = x.astype(np.float32).astype(np.float64)
    assert stats.count == 501
    np.testing.assert_allclose(stats.mean, x32.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(stats.covariance, np.cov(x32, rowvar=False), atol=1e-8)
    with pytest.raises(ValueError, match="dimension 5, earlier ones had 6"):
        stats.update(np.zeros((3, 5)))
    stats.reset()
    with pytest.raises(ValueError, match="at least 2"):
        stats.update(np.zeros((1, 6)))
        _ = stats.covariance


def _scipy_frechet(mu1, s1, mu2, s2) -> float:
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def test_frechet_distance_closed_form_and_scipy():
    # Diagonal Gaussians: ||dmu||^2 + sum (sqrt(a) - sqrt(b))^2.
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    a, b = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 1.0])
    want = 5.0 + (1 - 2) ** 2 + (2 - 1) ** 2 + (3 - 1) ** 2
    got = metrics.frechet_distance(mu1, np.diag(a), mu2, np.diag(b))
    assert got == pytest.approx(want, abs=1e-10)
    # Full covariances: the SciPy sqrtm formula of pytorch-fid.
    rng = np.random.default_rng(2)
    for dim in (2, 16, 64):
        f1, f2 = rng.normal(size=(dim, dim)), rng.normal(size=(dim, dim))
        s1, s2 = f1 @ f1.T / dim, f2 @ f2.T / dim + 0.1 * np.eye(dim)
        m1, m2 = rng.normal(size=dim), rng.normal(size=dim)
        assert metrics.frechet_distance(m1, s1, m2, s2) == pytest.approx(
            _scipy_frechet(m1, s1, m2, s2), rel=1e-7
        )
        assert metrics.frechet_distance(m1, s1, m1, s1) == pytest.approx(0, abs=1e-8)
    with pytest.raises(ValueError, match=r"covariances must be \(2, 2\)"):
        metrics.frechet_distance(mu1[:2], np.eye(3), mu2[:2], np.eye(2))


def test_frechet_distance_streams_samples_of_known_gaussians():
    rng = np.random.default_rng(3)
    dim, n = 4, 40_000
    cov_real = np.diag([1.0, 2.0, 0.5, 1.0])
    mixing = rng.normal(size=(dim, dim))
    cov_fake = mixing @ mixing.T / dim
    mu_fake = np.array([0.5, -0.5, 0.0, 1.0])
    real = rng.multivariate_normal(np.zeros(dim), cov_real, size=n)
    fake = rng.multivariate_normal(mu_fake, cov_fake, size=n)
    exact = _scipy_frechet(np.zeros(dim), cov_real, mu_fake, cov_fake)

    one_pass = metrics.FrechetDistance(feature_fn=lambda x: x)
    one_pass.update_features(real=real, fake=fake)
    chunked = metrics.FrechetDistance(feature_fn=lambda x: x)
    for r, f in zip(np.array_split(real, 7), np.array_split(fake, 13)[:7], strict=True):
        chunked.update_features(real=r, fake=f)
    chunked.update_features(fake=np.concatenate(np.array_split(fake, 13)[7:]))

    assert chunked.result() == pytest.approx(one_pass.result(), rel=1e-10)
    assert one_pass.result() == pytest.approx(
        _scipy_frechet(
            real.mean(0),
            np.cov(real, rowvar=False),
            fake.mean(0),
            np.cov(fake, rowvar=False),
        ),
        rel=1e-8,
    )
    assert one_pass.result() == pytest.approx(exact, rel=0.03)
    one_pass.reset(keep_real=True)
    assert one_pass.real.count == n and one_pass.fake.count == 0


def _loop_mmd(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD^2 with (x.y / d + 1)^3, written as explicit sums."""
    d = x.shape[1]

    def k(u, v):
        return (float(np.dot(u, v)) / d + 1.0) ** 3

    m, n = len(x), len(y)
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j)
    yy = sum(k(y[i], y[j]) for i in range(n) for j in range(n) if i != j)
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(n))
    return xx / (m * (m - 1)) + yy / (n * (n - 1)) - 2 * xy / (m * n)


def test_polynomial_mmd_matches_direct_sums():
    rng = np.random.default_rng(4)
    x, y = rng.normal(size=(20, 5)), rng.normal(0.5, 1.2, size=(15, 5))
    assert metrics.polynomial_mmd(x, y) == pytest.approx(_loop_mmd(x, y), rel=1e-10)
    with pytest.raises(ValueError, match=">= 2 vectors"):
        metrics.polynomial_mmd(x[:1], y)


def test_kid_streams_and_subsets():
    rng = np.random.default_rng(5)
    real = rng.normal(size=(300, 8))
    same = rng.normal(size=(300, 8))
    shifted = rng.normal(0.7, 1.0, size=(300, 8))

    kid = metrics.KernelInceptionDistance(feature_fn=lambda x: x, subset_size=400)
    for chunk in np.array_split(real, 4):
        kid.update_features(real=chunk)
    kid.update_features(fake=shifted[:100])
    kid.update_features(fake=shifted[100:])
    assert kid.result() == pytest.approx(
        metrics.polynomial_mmd(real.astype(np.float32), shifted.astype(np.float32)),
        rel=1e-6,
    )
    assert kid.std() == 0.0
    kid.reset(keep_real=True)
    kid.update_features(fake=same)
    assert abs(kid.result()) < 0.02 < metrics.polynomial_mmd(real, shifted)

    # More samples than subset_size: mean of subset estimates, reproducible.
    sub = metrics.KernelInceptionDistance(
        feature_fn=lambda x: x, subset_size=100, num_subsets=20, seed=7
    )
    sub.update_features(real=real, fake=shifted)
    draws = np.random.default_rng(7)
    r32, f32 = real.astype(np.float32), shifted.astype(np.float32)
    estimates = [
        metrics.polynomial_mmd(
            r32[draws.choice(300, 100, replace=False)],
            f32[draws.choice(300, 100, replace=False)],
        )
        for _ in range(20)
    ]
    assert sub.result() == pytest.approx(np.mean(estimates), rel=1e-9)
    assert sub.std() == pytest.approx(np.std(estimates), rel=1e-9)
    assert sub.result() == pytest.approx(metrics.polynomial_mmd(real, shifted), rel=0.2)


def test_kid_reservoir_keeps_a_uniform_bounded_sample():
    kid = metrics.KernelInceptionDistance(
        feature_fn=lambda x: x, max_samples=100, subset_size=50, num_subsets=5
    )
    index = np.arange(2000, dtype=np.float64)[:, None] * np.ones((1, 3))
    for chunk in np.array_split(index, 9):
        kid.update_features(real=chunk, fake=chunk)
    kept = kid._real.rows[:, 0]
    assert kid._real.seen == 2000 and len(kept) == 100
    assert len(np.unique(kept)) == 100 and np.all(np.isin(kept, index[:, 0]))
    # A uniform sample of 0..1999: mean ~1000 (std of the mean ~58).
    assert 800 < kept.mean() < 1200
    assert np.isfinite(kid.result())


def _channel_stats(images):
    images = np.asarray(images)
    return np.concatenate([images.mean(axis=(1, 2)), images.std(axis=(1, 2))], axis=1)


def test_distribution_metrics_on_images_use_the_feature_fn():
    rng = np.random.default_rng(6)
    real = rng.uniform(-1, 1, (12, 16, 16, 3)).astype(np.float32)
    fake = (real * 0.5).astype(np.float32)
    fd = metrics.FrechetDistance(_channel_stats, batch_size=5)
    fd.update(real=real[:7], fake=fake[:4])
    fd.update(real=real[7:], fake=fake[4:])
    direct = metrics.FrechetDistance(_channel_stats)
    direct.update_features(real=_channel_stats(real), fake=_channel_stats(fake))
    assert fd.result() == pytest.approx(direct.result(), rel=1e-6)
    kid = metrics.KernelInceptionDistance(_channel_stats)
    kid.update(real=real, fake=fake)
    assert kid.result() == pytest.approx(
        metrics.polynomial_mmd(_channel_stats(real), _channel_stats(fake)), rel=1e-5
    )
    with pytest.raises(
        ValueError, match=r"must be in \[-1, 1\], got values in \[0, 255\]"
    ):
        fd.update(real=np.linspace(0, 255, 2 * 16 * 16 * 3).reshape(2, 16, 16, 3))
    with pytest.raises(ValueError, match=r"features must have shape \(N, D\)"):
        metrics.FrechetDistance(lambda x: x).update(real=real)
    with pytest.raises(ValueError, match=">= 2 samples per side, got 0 real and 0"):
        metrics.FrechetDistance(_channel_stats).result()


@pytest.fixture(scope="module")
def classifier():
    return features.efficientnet_lite0(include_top=True)


def _top5(model, image: np.ndarray) -> list[int]:
    logits = np.asarray(model(_to_unit(image)[None], training=False))[0]
    return [int(i) for i in np.argsort(-logits)[:5]]


def test_efficientnet_lite0_classifies_photos(classifier):
    chelsea = _top5(classifier, skimage.data.chelsea())
    coffee = _top5(classifier, skimage.data.coffee())
    assert chelsea[0] in CAT_CLASSES and len(CAT_CLASSES & set(chelsea)) >= 3
    assert coffee[0] in COFFEE_CLASSES and set(coffee) >= COFFEE_CLASSES
    # Inference mode by default (Keras' Resizing layer would otherwise put
    # batch norm into training mode when `training` is not given).
    x = _to_unit(skimage.data.chelsea())[None]
    np.testing.assert_allclose(classifier(x), classifier(x, training=False), atol=1e-4)


def test_efficientnet_lite0_features(classifier):
    network = metrics.default_feature_network()
    assert network is metrics.default_feature_network()
    images = np.stack(
        [
            _to_unit(skimage.data.chelsea()[:256, :256]),
            _to_unit(skimage.data.astronaut()[:256, :256]),
        ]
    )
    feats = metrics.compute_features(images, batch_size=1)
    assert feats.shape == (2, 1280) and feats.dtype == np.float32
    assert np.all(feats >= 0) and np.all(feats <= 6)  # pooled ReLU6
    pooled = keras.Model(classifier.input, classifier.get_layer("avg_pool").output)
    np.testing.assert_allclose(feats, pooled(images, training=False), atol=1e-4)
    small = metrics.compute_features(np.zeros((3, 64, 64, 3), np.float32))
    assert small.shape == (3, 1280)


# torchvision Inception3 modules (name, in, out, kernel) for pytorch-fid's
# FID network, transcribed from torchvision/models/inception.py.
def _inception_a(name, cin, pool):
    return [
        (f"{name}.branch1x1", cin, 64, (1, 1)),
        (f"{name}.branch5x5_1", cin, 48, (1, 1)),
        (f"{name}.branch5x5_2", 48, 64, (5, 5)),
        (f"{name}.branch3x3dbl_1", cin, 64, (1, 1)),
        (f"{name}.branch3x3dbl_2", 64, 96, (3, 3)),
        (f"{name}.branch3x3dbl_3", 96, 96, (3, 3)),
        (f"{name}.branch_pool", cin, pool, (1, 1)),
    ]


def _inception_c(name, c7):
    return [
        (f"{name}.branch1x1", 768, 192, (1, 1)),
        (f"{name}.branch7x7_1", 768, c7, (1, 1)),
        (f"{name}.branch7x7_2", c7, c7, (1, 7)),
        (f"{name}.branch7x7_3", c7, 192, (7, 1)),
        (f"{name}.branch7x7dbl_1", 768, c7, (1, 1)),
        (f"{name}.branch7x7dbl_2", c7, c7, (7, 1)),
        (f"{name}.branch7x7dbl_3", c7, c7, (1, 7)),
        (f"{name}.branch7x7dbl_4", c7, c7, (7, 1)),
        (f"{name}.branch7x7dbl_5", c7, 192, (1, 7)),
        (f"{name}.branch_pool", 768, 192, (1, 1)),
    ]


def _inception_e(name, cin):
    return [
        (f"{name}.branch1x1", cin, 320, (1, 1)),
        (f"{name}.branch3x3_1", cin, 384, (1, 1)),
        (f"{name}.branch3x3_2a", 384, 384, (1, 3)),
        (f"{name}.branch3x3_2b", 384, 384, (3, 1)),
        (f"{name}.branch3x3dbl_1", cin, 448, (1, 1)),
        (f"{name}.branch3x3dbl_2", 448, 384, (3, 3)),
        (f"{name}.branch3x3dbl_3a", 384, 384, (1, 3)),
        (f"{name}.branch3x3dbl_3b", 384, 384, (3, 1)),
        (f"{name}.branch_pool", cin, 192, (1, 1)),
    ]


def _fid_inception_modules():
    return [
        ("Conv2d_1a_3x3", 3, 32, (3, 3)),
        ("Conv2d_2a_3x3", 32, 32, (3, 3)),
        ("Conv2d_2b_3x3", 32, 64, (3, 3)),
        ("Conv2d_3b_1x1", 64, 80, (1, 1)),
        ("Conv2d_4a_3x3", 80, 192, (3, 3)),
        *_inception_a("Mixed_5b", 192, 32),
        *_inception_a("Mixed_5c", 256, 64),
        *_inception_a("Mixed_5d", 288, 64),
        ("Mixed_6a.branch3x3", 288, 384, (3, 3)),
        ("Mixed_6a.branch3x3dbl_1", 288, 64, (1, 1)),
        ("Mixed_6a.branch3x3dbl_2", 64, 96, (3, 3)),
        ("Mixed_6a.branch3x3dbl_3", 96, 96, (3, 3)),
        *_inception_c("Mixed_6b", 128),
        *_inception_c("Mixed_6c", 160),
        *_inception_c("Mixed_6d", 160),
        *_inception_c("Mixed_6e", 192),
        ("Mixed_7a.branch3x3_1", 768, 192, (1, 1)),
        ("Mixed_7a.branch3x3_2", 192, 320, (3, 3)),
        ("Mixed_7a.branch7x7x3_1", 768, 192, (1, 1)),
        ("Mixed_7a.branch7x7x3_2", 192, 192, (1, 7)),
        ("Mixed_7a.branch7x7x3_3", 192, 192, (7, 1)),
        ("Mixed_7a.branch7x7x3_4", 192, 192, (3, 3)),
        *_inception_e("Mixed_7b", 1280),
        *_inception_e("Mixed_7c", 2048),
    ]


def _synthetic_fid_state(rng) -> dict[str, np.ndarray]:
    state = {}
    for name, cin, cout, kernel in _fid_inception_modules():
        state[f"{name}.conv.weight"] = rng.normal(
            0, (cin * kernel[0] * kernel[1]) ** -0.5, (cout, cin, *kernel)
        ).astype(np.float32)
        state[f"{name}.bn.weight"] = rng.uniform(0.5, 1.5, cout).astype(np.float32)
        state[f"{name}.bn.bias"] = rng.normal(0, 0.1, cout).astype(np.float32)
        state[f"{name}.bn.running_mean"] = rng.normal(0, 0.1, cout).astype(np.float32)
        state[f"{name}.bn.running_var"] = rng.uniform(0.5, 2, cout).astype(np.float32)
        state[f"{name}.bn.num_batches_tracked"] = np.array(0, np.int64)
    state["fc.weight"] = np.zeros((1008, 2048), np.float32)
    state["fc.bias"] = np.zeros(1008, np.float32)
    return state


def test_inception_v3_fid_structure_and_state_dict():
    model = features.inception_v3_fid(None)
    rng = np.random.default_rng(8)
    state = _synthetic_fid_state(rng)
    # The torchvision body without AuxLogits and fc: 21,785,568 parameters
    # (27,161,264 of inception_v3 minus 3,326,696 aux and 2,049,000 fc).
    body = sum(
        v.size
        for k, v in state.items()
        if k.endswith((".conv.weight", "bn.weight", "bn.bias"))
    )
    assert body == 21_785_568
    keras_body = sum(
        int(np.prod(w.shape))
        for layer in model.layers
        for w in layer.weights
        if "moving" not in w.path
    )
    assert keras_body == body

    features.load_torch_weights(model, state, ignore=["fc"])
    kernel = model.get_layer("Mixed_6b_branch7x7_2_conv").kernel
    np.testing.assert_array_equal(
        kernel, state["Mixed_6b.branch7x7_2.conv.weight"].transpose(2, 3, 1, 0)
    )
    np.testing.assert_array_equal(
        model.get_layer("Mixed_7c_branch3x3dbl_3b_bn").moving_variance,
        state["Mixed_7c.branch3x3dbl_3b.bn.running_var"],
    )
    x = rng.uniform(-1, 1, (1, 75, 75, 3)).astype(np.float32)
    out = np.asarray(model(x, training=False))
    assert out.shape == (1, 2048) and np.all(np.isfinite(out)) and np.all(out >= 0)

    with pytest.raises(CheckpointError, match="has no layer 'fc'"):
        features.load_torch_weights(model, {"fc.weight": state["fc.weight"]})
    missing = {k: v for k, v in state.items() if not k.startswith("Mixed_7c.")}
    with pytest.raises(CheckpointError, match="no weights for 18 layers"):
        features.load_torch_weights(model, missing, ignore=["fc"])
    wrong = dict(state)
    wrong["Mixed_5b.branch5x5_2.conv.weight"] = np.zeros((64, 48, 3, 3), np.float32)
    with pytest.raises(CheckpointError, match=r"expects shape \(5, 5, 48, 64\)"):
        features.load_torch_weights(model, wrong, ignore=["fc"])
    with pytest.raises(FileNotFoundError, match="pt_inception"):
        features.inception_v3_fid("/nonexistent/pt_inception-2015-12-05-6726825d.pth")
