"""Image-quality and distribution metrics for compressed generators.

Per-image metrics on float32 NHWC batches in [-1, 1] (written with
`keras.ops`: they run eagerly, in `tf.function` and under XLA):

- `psnr(a, b)`: peak signal-to-noise ratio in dB, peak-to-peak range 2
  (`data_range`), so it equals the PSNR of the same images mapped to
  [0, 1] (range 1) or [0, 255] (range 255). Identical images give `inf`.
- `ssim(a, b)`: structural similarity of Wang et al. 2004 with the standard
  11x11 Gaussian window (sigma 1.5), K1 = 0.01, K2 = 0.03, data range 2,
  computed on the "valid" part of the image (no padding) and averaged over
  pixels and channels: the numbers of `tf.image.ssim(a, b, max_val=2)` and
  of `skimage.metrics.structural_similarity(a, b, data_range=2,
  channel_axis=-1, gaussian_weights=True, sigma=1.5,
  use_sample_covariance=False)`.
- `l1(a, b)`: mean absolute difference (the "L1 to the teacher").
- `detail_psnr(a, b)`: the PSNR once each image's mean colour difference
  (its *tone* error) is removed; its gap to `psnr` is how much of the error
  one colour offset per image accounts for.

Each returns one value per image, shape `(N,)`. `PSNR`, `SSIM` and `L1` are
their streaming means as Keras metrics (`update_state(target, output)`,
`result()`, `reset_state()`), usable in `compile(metrics=...)`.
`paired_comparison(scores, baseline)` compares two models image by image
(mean difference, bootstrap interval, exact sign-flip p-value).

Distribution metrics on features of a pluggable network (`feature_fn`: any
callable from an image batch to `(N, D)` features; default
`tfgancompress.features.efficientnet_lite0()`, 1280-d; for paper-comparable
FID pass `tfgancompress.features.inception_v3_fid(path)`):

- `FrechetDistance`: ||mu_r - mu_f||^2 + Tr(S_r + S_f - 2 (S_r S_f)^(1/2))
  from streaming statistics (`FeatureStatistics`: count, float64 mean and
  centred scatter matrix, merged batch by batch with Chan et al.'s
  parallel update, so no feature is kept and no precision is lost to the
  `sum(x x^T) - n mu mu^T` cancellation). The matrix square-root trace is
  taken from the eigenvalues of S_r^(1/2) S_f S_r^(1/2) (symmetric, so
  NumPy's `eigh` suffices; no SciPy needed).
- `KernelInceptionDistance`: the unbiased MMD^2 of Binkowski et al. 2018
  with the cubic polynomial kernel k(x, y) = (x.y / D + 1)^3. It needs the
  features themselves: each side keeps a uniform reservoir sample of at
  most `max_samples` feature vectors (Vitter's algorithm R, seeded). If
  both sides hold at most `subset_size` samples, the result is the
  estimator on all of them; otherwise it is the mean (and `std()`) over
  `num_subsets` random subsets of `subset_size` per side, as in the
  reference implementations.

Compute features once and feed both: `feats = compute_features(images)`,
then `fd.update_features(real=feats)` and `kid.update_features(real=feats)`.
"""

from __future__ import annotations

import abc
import functools
import weakref
from collections.abc import Callable

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from tfgancompress import features as feature_networks

SSIM_FILTER_SIZE = 11
SSIM_SIGMA = 1.5
SSIM_K1 = 0.01
SSIM_K2 = 0.03
DATA_RANGE = 2.0
_RANGE_TOLERANCE = 1e-3


def _pair(a, b, name: str):
    a = ops.convert_to_tensor(a, "float32")
    b = ops.convert_to_tensor(b, "float32")
    if len(a.shape) != 4 or tuple(a.shape) != tuple(b.shape):
        raise ValueError(
            f"{name} needs two image batches of the same shape (N, H, W, C); got "
            f"{tuple(a.shape)} and {tuple(b.shape)}."
        )
    return a, b


def psnr(a, b, data_range: float = DATA_RANGE):
    """Per-image PSNR in dB.

    Args:
        a: Images `(N, H, W, C)`, float, in [-1, 1].
        b: Images of the same shape.
        data_range: Peak-to-peak range of the pixel values (2 for [-1, 1]).

    Returns:
        A float32 tensor `(N,)`: `10 log10(data_range^2 / MSE)`; `inf` where
        the images are identical.

    Raises:
        ValueError: If the shapes differ or are not rank 4.

    Example:

    >>> a = np.zeros((1, 8, 8, 3), "float32")
    >>> round(float(psnr(a, a + 0.1)[0]), 2)  # 10 log10(4 / 0.01)
    26.02
    """
    a, b = _pair(a, b, "psnr")
    mse = ops.mean(ops.square(a - b), axis=(1, 2, 3))
    return 10.0 * ops.log10(data_range**2 / mse)


def detail_psnr(a, b, data_range: float = DATA_RANGE):
    """Per-image PSNR in dB once each image's mean colour difference is removed.

    The squared error of an image splits exactly into its *tone* part, the
    square of the mean difference of each channel (one colour offset per
    image), and its *detail* part, the variance of the difference. This is
    the PSNR of the detail part alone: `psnr(a, b) <= detail_psnr(a, b)`,
    and the gap says how much of the error a single colour offset per image
    would remove (on the vintage task, most of a compressed student's).

    Args:
        a: Images `(N, H, W, C)`, float, in [-1, 1].
        b: Images of the same shape.
        data_range: Peak-to-peak range of the pixel values (2 for [-1, 1]).

    Returns:
        A float32 tensor `(N,)`; `inf` (or, from float rounding, over 100
        dB) where the images differ by a constant colour only.

    Raises:
        ValueError: If the shapes differ or are not rank 4.

    Example:

    >>> a = np.zeros((1, 8, 8, 3), "float32")
    >>> float(detail_psnr(a, a + 0.25)[0])  # a pure offset: no detail error
    inf
    """
    a, b = _pair(a, b, "detail_psnr")
    difference = a - b
    offset = ops.mean(difference, axis=(1, 2), keepdims=True)
    mse = ops.mean(ops.square(difference - offset), axis=(1, 2, 3))
    return 10.0 * ops.log10(data_range**2 / mse)


def l1(a, b):
    """Per-image mean absolute difference.

    Args:
        a: Images `(N, H, W, C)`.
        b: Images of the same shape.

    Returns:
        A float32 tensor `(N,)`.

    Raises:
        ValueError: If the shapes differ or are not rank 4.

    Example:

    >>> a = np.zeros((2, 8, 8, 3), "float32")
    >>> l1(a, a + 0.5).shape
    TensorShape([2])
    """
    a, b = _pair(a, b, "l1")
    return ops.mean(ops.abs(a - b), axis=(1, 2, 3))


def _gaussian_window(size: int, sigma: float, channels: int) -> np.ndarray:
    taps = np.arange(size, dtype=np.float64) - (size - 1) / 2.0
    line = np.exp(-(taps**2) / (2.0 * sigma**2))
    window = np.outer(line, line)
    window /= window.sum()
    return np.tile(window[:, :, None, None], (1, 1, channels, 1)).astype(np.float32)


def ssim(
    a,
    b,
    data_range: float = DATA_RANGE,
    filter_size: int = SSIM_FILTER_SIZE,
    sigma: float = SSIM_SIGMA,
    k1: float = SSIM_K1,
    k2: float = SSIM_K2,
):
    """Per-image SSIM with a Gaussian window (Wang et al. 2004).

    Local means, variances and covariance are Gaussian-weighted over the
    positions where the whole window fits (no padding); the SSIM map is
    averaged over those positions and the channels.

    Args:
        a: Images `(N, H, W, C)`, float, in [-1, 1]; H and W at least
            `filter_size`.
        b: Images of the same shape.
        data_range: Peak-to-peak range of the pixel values (2 for [-1, 1]).
        filter_size: Window size.
        sigma: Gaussian standard deviation of the window.
        k1: Luminance stabiliser, C1 = (k1 * data_range)^2.
        k2: Contrast stabiliser, C2 = (k2 * data_range)^2.

    Returns:
        A float32 tensor `(N,)`, 1 for identical images.

    Raises:
        ValueError: If the shapes differ, are not rank 4, or an image side
            is smaller than `filter_size`.

    Example:

    >>> a = np.random.uniform(-1, 1, (2, 32, 32, 3)).astype("float32")
    >>> np.asarray(ssim(a, a)).round(4).tolist()
    [1.0, 1.0]
    """
    a, b = _pair(a, b, "ssim")
    height, width, channels = a.shape[1:]
    if min(height, width) < filter_size:
        raise ValueError(
            f"ssim needs images of at least {filter_size}x{filter_size} (the "
            f"window size), got {height}x{width}."
        )
    window = _gaussian_window(filter_size, sigma, 5 * channels)
    stacked = ops.concatenate([a, b, a * a, b * b, a * b], axis=-1)
    local = ops.depthwise_conv(stacked, window, padding="valid")
    mu_a, mu_b, aa, bb, ab = ops.split(local, 5, axis=-1)
    var_a = aa - mu_a * mu_a
    var_b = bb - mu_b * mu_b
    cov = ab - mu_a * mu_b
    c1 = (k1 * data_range) ** 2
    c2 = (k2 * data_range) ** 2
    numerator = (2.0 * mu_a * mu_b + c1) * (2.0 * cov + c2)
    denominator = (mu_a * mu_a + mu_b * mu_b + c1) * (var_a + var_b + c2)
    return ops.mean(numerator / denominator, axis=(1, 2, 3))


class _MeanOfPerImage(keras.metrics.MeanMetricWrapper):
    """Streaming mean of a per-image metric over every image seen."""

    def __init__(self, fn, name: str, dtype=None, **kwargs):
        super().__init__(fn=fn, name=name, dtype=dtype, **kwargs)
        self._fn_kwargs = kwargs

    def get_config(self):
        return {"name": self.name, "dtype": self.dtype, **self._fn_kwargs}


@keras.saving.register_keras_serializable(package="tfgancompress")
class PSNR(_MeanOfPerImage):
    """Streaming mean PSNR (dB) over all images seen (see `psnr`).

    Args:
        data_range: Peak-to-peak range of the pixel values (2 for [-1, 1]).
        name: Metric name.
        dtype: Metric dtype.

    Example:

    >>> metric = PSNR()
    >>> metric.update_state(teacher_images, student_images)
    >>> float(metric.result())
    """

    def __init__(self, data_range: float = DATA_RANGE, name: str = "psnr", dtype=None):
        super().__init__(psnr, name, dtype, data_range=data_range)


@keras.saving.register_keras_serializable(package="tfgancompress")
class SSIM(_MeanOfPerImage):
    """Streaming mean SSIM over all images seen (see `ssim`).

    Args:
        data_range: Peak-to-peak range of the pixel values (2 for [-1, 1]).
        name: Metric name.
        dtype: Metric dtype.

    Example:

    >>> metric = SSIM()
    >>> metric.update_state(teacher_images, student_images)
    >>> float(metric.result())
    """

    def __init__(self, data_range: float = DATA_RANGE, name: str = "ssim", dtype=None):
        super().__init__(ssim, name, dtype, data_range=data_range)


@keras.saving.register_keras_serializable(package="tfgancompress")
class L1(_MeanOfPerImage):
    """Streaming mean absolute difference over all images seen (see `l1`).

    Args:
        name: Metric name.
        dtype: Metric dtype.

    Example:

    >>> metric = L1()
    >>> metric.update_state(teacher_images, student_images)
    >>> float(metric.result())
    """

    def __init__(self, name: str = "l1", dtype=None):
        super().__init__(l1, name, dtype)


@functools.cache
def default_feature_network() -> keras.Model:
    """The shared default feature network: EfficientNet-Lite0, 1280-d.

    Built once per process (see `tfgancompress.features.efficientnet_lite0`).

    Returns:
        The Keras model from [-1, 1] images to `(N, 1280)` features.

    Example:

    >>> default_feature_network().output_shape
    (None, 1280)
    """
    return feature_networks.efficientnet_lite0()


def _check_images(images) -> np.ndarray:
    images = np.asarray(images, np.float32)
    if images.ndim != 4:
        raise ValueError(
            f"expected an image batch (N, H, W, C), got shape {images.shape}."
        )
    if images.size:
        low, high = float(images.min()), float(images.max())
        if low < -1 - _RANGE_TOLERANCE or high > 1 + _RANGE_TOLERANCE:
            raise ValueError(
                f"images must be in [-1, 1], got values in [{low:.3g}, {high:.3g}] "
                "(map uint8 images with x / 127.5 - 1)."
            )
    return images


def _check_features(features, dim: int | None = None) -> np.ndarray:
    features = np.asarray(features, np.float64)
    if features.ndim != 2:
        raise ValueError(
            f"features must have shape (N, D), got {features.shape}; a feature "
            "network must return one vector per image."
        )
    if dim is not None and features.shape[1] != dim:
        raise ValueError(
            f"features have dimension {features.shape[1]}, earlier ones had {dim}."
        )
    if not np.all(np.isfinite(features)):
        raise ValueError("features contain NaN or inf.")
    return features


_COMPILED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _inference(model: keras.Model) -> Callable:
    """`model` in inference mode as one graph for every batch and image size."""
    if model not in _COMPILED:
        _COMPILED[model] = tf.function(
            lambda images: model(images, training=False),
            input_signature=[tf.TensorSpec([None] * 4, tf.float32)],
        )
    return _COMPILED[model]


def compute_features(
    images,
    feature_fn: Callable | None = None,
    batch_size: int = 16,
) -> np.ndarray:
    """Features of an image batch, computed `batch_size` images at a time.

    Args:
        images: `(N, H, W, 3)` images in [-1, 1].
        feature_fn: Callable from an image batch to `(n, D)` features; a
            `keras.Model` runs in inference mode, traced once into a
            `tf.function` for all batch and image sizes. `None`: the default
            EfficientNet-Lite0.
        batch_size: Images per call of `feature_fn`.

    Returns:
        A float32 array `(N, D)`.

    Raises:
        ValueError: If the images are not a rank-4 batch in [-1, 1] or the
            network's output is not `(n, D)`.

    Example:

    >>> compute_features(np.zeros((4, 64, 64, 3), "float32")).shape
    (4, 1280)
    """
    images = _check_images(images)
    feature_fn = default_feature_network() if feature_fn is None else feature_fn
    chunks = []
    for start in range(0, len(images), batch_size):
        batch = images[start : start + batch_size]
        if isinstance(feature_fn, keras.Model):
            output = _inference(feature_fn)(batch)
        else:
            output = feature_fn(batch)
        output = _check_features(keras.ops.convert_to_numpy(output))
        if len(output) != len(batch):
            raise ValueError(
                f"the feature network returned {len(output)} vectors for "
                f"{len(batch)} images."
            )
        chunks.append(output.astype(np.float32))
    if not chunks:
        raise ValueError("compute_features got an empty image batch.")
    return np.concatenate(chunks)


class FeatureStatistics:
    """Streaming count, mean and covariance of feature vectors (float64).

    Batches are merged with the parallel update of Chan et al.: with the
    running mean m, centred scatter M (n samples) and a batch's mean m_b,
    scatter M_b (n_b samples), delta = m_b - m:
    m <- m + delta n_b / (n + n_b), M <- M + M_b + delta delta^T n n_b / (n + n_b).

    Example:

    >>> stats = FeatureStatistics()
    >>> stats.update(np.random.normal(size=(100, 8)))
    >>> stats.covariance.shape
    (8, 8)
    """

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        """Forgets every sample."""
        self.count = 0
        self._mean = None
        self._scatter = None

    def update(self, features) -> None:
        """Adds a batch of feature vectors.

        Args:
            features: `(N, D)` array.

        Raises:
            ValueError: If the shape is not `(N, D)`, D differs from earlier
                batches, or values are not finite.
        """
        dim = None if self._mean is None else self._mean.shape[0]
        features = _check_features(features, dim)
        n_b = len(features)
        if n_b == 0:
            return
        mean_b = features.mean(axis=0)
        centred = features - mean_b
        scatter_b = centred.T @ centred
        if self._mean is None:
            self.count, self._mean, self._scatter = n_b, mean_b, scatter_b
            return
        total = self.count + n_b
        delta = mean_b - self._mean
        self._mean = self._mean + delta * (n_b / total)
        self._scatter += scatter_b + np.outer(delta, delta) * (self.count * n_b / total)
        self.count = total

    def _require(self, minimum: int, what: str) -> None:
        if self.count < minimum:
            raise ValueError(
                f"{what} needs at least {minimum} feature vectors, got {self.count}."
            )

    @property
    def mean(self) -> np.ndarray:
        """Mean feature vector `(D,)`."""
        self._require(1, "the mean")
        return self._mean

    @property
    def covariance(self) -> np.ndarray:
        """Unbiased covariance `(D, D)` (divides by count - 1, like `np.cov`)."""
        self._require(2, "the covariance")
        return self._scatter / (self.count - 1)


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    values, vectors = np.linalg.eigh(matrix)
    return (vectors * np.sqrt(np.clip(values, 0.0, None))) @ vectors.T


def frechet_distance(mean1, cov1, mean2, cov2) -> float:
    """Fréchet distance between two Gaussians N(mean1, cov1), N(mean2, cov2).

    ||mean1 - mean2||^2 + Tr(cov1) + Tr(cov2) - 2 Tr((cov1 cov2)^(1/2)); the
    last trace is the sum of square roots of the eigenvalues of
    cov1^(1/2) cov2 cov1^(1/2), which has the eigenvalues of cov1 cov2 and
    is symmetric positive semi-definite (negative round-off is clipped).

    Args:
        mean1: `(D,)` mean.
        cov1: `(D, D)` covariance.
        mean2: `(D,)` mean.
        cov2: `(D, D)` covariance.

    Returns:
        The distance (>= 0 up to round-off), as a Python float.

    Raises:
        ValueError: If the shapes disagree.

    Example:

    >>> frechet_distance(np.zeros(2), np.eye(2), np.ones(2), 4 * np.eye(2))
    4.0
    """
    mean1, mean2 = np.asarray(mean1, np.float64), np.asarray(mean2, np.float64)
    cov1, cov2 = np.asarray(cov1, np.float64), np.asarray(cov2, np.float64)
    dim = mean1.shape[0]
    if mean1.shape != (dim,) or mean2.shape != (dim,):
        raise ValueError(
            f"means must be vectors of one length, got {mean1.shape}, {mean2.shape}."
        )
    if cov1.shape != (dim, dim) or cov2.shape != (dim, dim):
        raise ValueError(
            f"covariances must be ({dim}, {dim}), got {cov1.shape}, {cov2.shape}."
        )
    root1 = _psd_sqrt((cov1 + cov1.T) / 2.0)
    product = root1 @ cov2 @ root1
    eigenvalues = np.linalg.eigvalsh((product + product.T) / 2.0)
    trace_root = np.sqrt(np.clip(eigenvalues, 0.0, None)).sum()
    diff = mean1 - mean2
    return float(diff @ diff + np.trace(cov1) + np.trace(cov2) - 2.0 * trace_root)


def polynomial_mmd(real, fake, degree: int = 3, coef0: float = 1.0) -> float:
    """Unbiased MMD^2 with the kernel k(x, y) = (x.y / D + coef0)^degree.

    mean_{i!=j} k(r_i, r_j) + mean_{i!=j} k(f_i, f_j) - 2 mean_{i,j} k(r_i, f_j).

    Args:
        real: `(m, D)` features, m >= 2.
        fake: `(n, D)` features, n >= 2.
        degree: Polynomial degree (3 for KID).
        coef0: Kernel offset (1 for KID).

    Returns:
        The estimate (may be slightly negative when the sets match).

    Raises:
        ValueError: If either set has fewer than 2 vectors or D differs.

    Example:

    >>> x = np.random.normal(size=(50, 4))
    >>> polynomial_mmd(x, x + 3.0) > polynomial_mmd(x[:25], x[25:])
    True
    """
    real = _check_features(real)
    fake = _check_features(fake, real.shape[1])
    m, n = len(real), len(fake)
    if min(m, n) < 2:
        raise ValueError(f"polynomial_mmd needs >= 2 vectors per set, got {m}, {n}.")
    dim = real.shape[1]

    def kernel(x, y):
        return (x @ y.T / dim + coef0) ** degree

    k_rr, k_ff, k_rf = kernel(real, real), kernel(fake, fake), kernel(real, fake)
    within_real = (k_rr.sum() - np.trace(k_rr)) / (m * (m - 1))
    within_fake = (k_ff.sum() - np.trace(k_ff)) / (n * (n - 1))
    return float(within_real + within_fake - 2.0 * k_rf.mean())


class _Reservoir:
    """A uniform random sample of at most `capacity` rows (algorithm R)."""

    def __init__(self, capacity: int, seed: int):
        self.capacity = capacity
        self._rng = np.random.default_rng(seed)
        self.seen = 0
        self._rows = None
        self._filled = 0

    def add(self, features: np.ndarray) -> None:
        if self._rows is None:
            self._rows = np.empty((self.capacity, features.shape[1]), np.float32)
        elif features.shape[1] != self._rows.shape[1]:
            raise ValueError(
                f"features have dimension {features.shape[1]}, earlier ones had "
                f"{self._rows.shape[1]}."
            )
        for row in features:
            if self._filled < self.capacity:
                self._rows[self._filled] = row
                self._filled += 1
            else:
                slot = int(self._rng.integers(0, self.seen + 1))
                if slot < self.capacity:
                    self._rows[slot] = row
            self.seen += 1

    @property
    def rows(self) -> np.ndarray:
        if self._rows is None:
            return np.empty((0, 0), np.float32)
        return self._rows[: self._filled]


class _DistributionMetric(abc.ABC):
    """Shared `update`/`update_features` plumbing of FD and KID."""

    def __init__(self, feature_fn: Callable | None, batch_size: int):
        self.feature_fn = feature_fn
        self.batch_size = int(batch_size)

    def update(self, real=None, fake=None) -> None:
        """Adds image batches of either or both sides.

        Args:
            real: `(N, H, W, 3)` reference images in [-1, 1] (e.g. the
                teacher's outputs or real photos), or `None`.
            fake: `(M, H, W, 3)` generated images in [-1, 1], or `None`.

        Raises:
            ValueError: If images are not rank 4 in [-1, 1] or the feature
                network's output is not `(N, D)`.
        """
        self.update_features(
            real=None if real is None else self._features(real),
            fake=None if fake is None else self._features(fake),
        )

    def _features(self, images) -> np.ndarray:
        return compute_features(images, self.feature_fn, self.batch_size)

    @abc.abstractmethod
    def update_features(self, real=None, fake=None) -> None:
        """Adds precomputed feature batches `(N, D)` of either or both sides."""


class FrechetDistance(_DistributionMetric):
    """Streaming Fréchet distance between real and fake image features.

    With `tfgancompress.features.inception_v3_fid(path)` as `feature_fn`
    this is FID; with the default EfficientNet-Lite0 it is a Fréchet
    distance on 1280-d features (values are on another scale than FID).

    Args:
        feature_fn: Callable from `(n, H, W, 3)` images in [-1, 1] to
            `(n, D)` features, or `None` for `default_feature_network()`.
        batch_size: Images per feature-network call.

    Example:

    >>> fd = FrechetDistance()
    >>> for inputs in batches:
    ...     fd.update(real=teacher(inputs), fake=student(inputs))
    >>> fd.result()
    """

    def __init__(self, feature_fn: Callable | None = None, batch_size: int = 16):
        super().__init__(feature_fn, batch_size)
        self.real = FeatureStatistics()
        self.fake = FeatureStatistics()

    def update_features(self, real=None, fake=None) -> None:
        """Adds precomputed feature batches `(N, D)` of either or both sides."""
        if real is not None:
            self.real.update(real)
        if fake is not None:
            self.fake.update(fake)

    def result(self) -> float:
        """The Fréchet distance of the statistics accumulated so far.

        Raises:
            ValueError: If a side has fewer than 2 samples or the feature
                dimensions differ.
        """
        if min(self.real.count, self.fake.count) < 2:
            raise ValueError(
                "FrechetDistance needs >= 2 samples per side, got "
                f"{self.real.count} real and {self.fake.count} fake."
            )
        return frechet_distance(
            self.real.mean, self.real.covariance, self.fake.mean, self.fake.covariance
        )

    def reset(self, keep_real: bool = False) -> None:
        """Forgets the fake statistics, and the real ones unless `keep_real`."""
        if not keep_real:
            self.real.reset()
        self.fake.reset()


class KernelInceptionDistance(_DistributionMetric):
    """Streaming KID: unbiased polynomial-kernel MMD^2 between feature sets.

    Args:
        feature_fn: Callable from `(n, H, W, 3)` images in [-1, 1] to
            `(n, D)` features, or `None` for `default_feature_network()`.
        subset_size: Samples per side in each subset estimate.
        num_subsets: Number of subset estimates averaged when a side holds
            more than `subset_size` samples.
        max_samples: Reservoir size per side (memory: `max_samples * D * 4`
            bytes per side).
        seed: Seed of the reservoirs and of the subset draws.
        batch_size: Images per feature-network call.

    Raises:
        ValueError: If a size is not positive or `max_samples < 2`.

    Example:

    >>> kid = KernelInceptionDistance()
    >>> kid.update(real=teacher_images, fake=student_images)
    >>> kid.result(), kid.std()
    """

    def __init__(
        self,
        feature_fn: Callable | None = None,
        subset_size: int = 1000,
        num_subsets: int = 100,
        max_samples: int = 10_000,
        seed: int = 0,
        batch_size: int = 16,
    ):
        super().__init__(feature_fn, batch_size)
        if subset_size < 2 or num_subsets < 1 or max_samples < 2:
            raise ValueError(
                "need subset_size >= 2, num_subsets >= 1 and max_samples >= 2, got "
                f"{subset_size}, {num_subsets}, {max_samples}."
            )
        self.subset_size = int(subset_size)
        self.num_subsets = int(num_subsets)
        self.max_samples = int(max_samples)
        self.seed = int(seed)
        self.reset()

    def reset(self, keep_real: bool = False) -> None:
        """Forgets the fake features, and the real ones unless `keep_real`."""
        if not keep_real:
            self._real = _Reservoir(self.max_samples, self.seed)
        self._fake = _Reservoir(self.max_samples, self.seed + 1)
        self._cached = None

    def update_features(self, real=None, fake=None) -> None:
        """Adds precomputed feature batches `(N, D)` of either or both sides."""
        for reservoir, features in ((self._real, real), (self._fake, fake)):
            if features is not None:
                reservoir.add(_check_features(features))
                self._cached = None

    def _estimates(self) -> np.ndarray:
        if self._cached is None:
            self._cached = self._compute_estimates()
        return self._cached

    def _compute_estimates(self) -> np.ndarray:
        real, fake = self._real.rows, self._fake.rows
        if len(real) < 2 or len(fake) < 2:
            raise ValueError(
                f"KID needs >= 2 samples per side, got {len(real)} real and "
                f"{len(fake)} fake."
            )
        if max(len(real), len(fake)) <= self.subset_size:
            return np.array([polynomial_mmd(real, fake)])
        size = min(self.subset_size, len(real), len(fake))
        rng = np.random.default_rng(self.seed)
        return np.array(
            [
                polynomial_mmd(
                    real[rng.choice(len(real), size, replace=False)],
                    fake[rng.choice(len(fake), size, replace=False)],
                )
                for _ in range(self.num_subsets)
            ]
        )

    def result(self) -> float:
        """KID: the mean of the subset estimates (or the full estimate).

        Raises:
            ValueError: If a side has fewer than 2 samples.
        """
        return float(self._estimates().mean())

    def std(self) -> float:
        """Standard deviation of the subset estimates (0 for one estimate)."""
        return float(self._estimates().std())


def paired_comparison(
    scores, baseline, resamples: int = 10_000, confidence: float = 0.95, seed: int = 0
) -> dict:
    """How far one model's per-image scores are from a baseline's, and how sure.

    On a few test images (the vintage task holds out 9) a mean difference of
    a few tenths of a dB can come from one image. This pairs the images:

    - `mean`: the mean of `scores - baseline`;
    - `low`, `high`: the percentile bootstrap interval of that mean
      (`resamples` draws of the images with replacement, seeded);
    - `p_value`: the exact two-sided sign-flip (paired permutation) test of
      "no difference": the share of the `2**n` sign patterns of the
      differences whose mean is at least as far from 0 (for `n <= 16`;
      above, `resamples` random patterns, counting the observed one);
    - `wins`: images where `scores` is higher; `n`: images.

    Args:
        scores: Per-image scores `(n,)` of the model (e.g. PSNR dB).
        baseline: The baseline's scores on the same images, same order.
        resamples: Bootstrap draws (and random sign patterns for n > 16).
        confidence: Coverage of the interval, in (0, 1).
        seed: Seed of the draws.

    Returns:
        A dict with `mean`, `low`, `high`, `p_value`, `wins`, `n`.

    Raises:
        ValueError: If the shapes differ, fewer than 2 images are given, a
            score is not finite, or `confidence` is outside (0, 1).

    Example:

    >>> out = paired_comparison([25.0, 24.0, 26.0], [24.0, 23.5, 25.0])
    >>> round(out["mean"], 3), out["wins"], out["p_value"]
    (0.833, 3, 0.25)
    """
    scores = np.asarray(scores, np.float64)
    baseline = np.asarray(baseline, np.float64)
    if scores.shape != baseline.shape or scores.ndim != 1:
        raise ValueError(
            f"paired_comparison needs two 1-D score arrays of one shape, got "
            f"{scores.shape} and {baseline.shape}."
        )
    if len(scores) < 2:
        raise ValueError(f"paired_comparison needs >= 2 images, got {len(scores)}.")
    if not (np.isfinite(scores).all() and np.isfinite(baseline).all()):
        raise ValueError("paired_comparison got a score that is not finite.")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}.")
    differences = scores - baseline
    n = len(differences)
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n, size=(resamples, n))
    means = differences[draws].mean(axis=1)
    tail = 50.0 * (1.0 - confidence)
    low, high = np.percentile(means, [tail, 100.0 - tail])
    if n <= 16:
        patterns = (np.arange(2**n)[:, None] >> np.arange(n)) & 1
    else:
        patterns = rng.integers(0, 2, size=(resamples, n))
    flipped = np.abs(((1 - 2 * patterns) * differences).mean(axis=1))
    extreme = np.sum(flipped >= abs(differences.mean()) - 1e-12)
    # All patterns: the exact share. Random ones: the observed counts too.
    p_value = extreme / len(patterns) if n <= 16 else (extreme + 1) / (resamples + 1)
    return {
        "mean": float(differences.mean()),
        "low": float(low),
        "high": float(high),
        "p_value": float(p_value),
        "wins": int(np.sum(differences > 0)),
        "n": n,
    }
