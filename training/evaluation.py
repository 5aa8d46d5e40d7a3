"""Quality of a student against its teacher, and the references it must beat.

Everything here compares images in [-1, 1] with the teacher's outputs on
photos held out by source: PSNR, SSIM and L1 per image, and Fréchet distance
and KID on EfficientNet-Lite0 features (`tgc.metrics`). The two references
every real student must beat are the identity (output = input) and the best
global colour map (3x3 matrix + bias, least squares on training pairs).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

import tfgancompress as tgc


def as_arrays(dataset) -> tuple[np.ndarray, np.ndarray]:
    """Concatenates a finite dataset of `(input, target)` batches."""
    inputs, targets = [], []
    for x, y in dataset:
        inputs.append(np.asarray(x))
        targets.append(np.asarray(y))
    if not inputs:
        raise ValueError("The dataset is empty.")
    return np.concatenate(inputs), np.concatenate(targets)


def litert_outputs(path: str, inputs: np.ndarray) -> np.ndarray:
    """A LiteRT file's outputs on `inputs`, one image at a time, in [-1, 1].

    The outputs are clipped to the images' range: an int8 file's output grid
    need not contain -1 and 1 exactly, and a generator clipped to [-1, 1]
    can come out one quantization step beyond them.
    """
    outputs = [tgc.export.run_litert(path, image[None]) for image in inputs]
    return np.clip(np.concatenate(outputs), -1.0, 1.0)


def colour_map_reference(
    pairs: tuple[np.ndarray, np.ndarray], samples: int = 20000, seed: int = 0
) -> Callable[[np.ndarray], np.ndarray]:
    """Fits `y ~ x @ W + b` (3x3 + bias) on training pairs by least squares.

    Args:
        pairs: `(inputs, targets)` training images, `(N, H, W, 3)`.
        samples: Pixels drawn at random for the fit.
        seed: Seed of the draw.

    Returns:
        A function mapping images to the colour-mapped images, clipped to
        [-1, 1].
    """
    matrix, bias = tgc.models.fit_colour_map(*pairs, samples=samples, seed=seed)

    def apply(images: np.ndarray) -> np.ndarray:
        flat = images.reshape(-1, 3) @ matrix + bias
        return np.clip(flat, -1.0, 1.0).reshape(images.shape).astype(np.float32)

    return apply


class TeacherComparison:
    """Scores outputs against fixed teacher outputs; teacher features cached.

    Args:
        targets: The teacher's outputs on the held-out inputs.
        feature_fn: Feature network for FD/KID (default EfficientNet-Lite0).
    """

    def __init__(self, targets: np.ndarray, feature_fn=None):
        self.targets = np.asarray(targets, np.float32)
        self.feature_fn = feature_fn
        self.target_features = tgc.metrics.compute_features(self.targets, feature_fn)

    def score(self, outputs: np.ndarray) -> dict[str, float]:
        """PSNR (dB), SSIM, L1, FD and KID of `outputs` vs the teacher."""
        outputs = np.asarray(outputs, np.float32)
        features = tgc.metrics.compute_features(outputs, self.feature_fn)
        frechet = tgc.metrics.FrechetDistance()
        frechet.update_features(real=self.target_features, fake=features)
        kid = tgc.metrics.KernelInceptionDistance()
        kid.update_features(real=self.target_features, fake=features)
        return {
            "psnr": float(np.mean(tgc.metrics.psnr(self.targets, outputs))),
            "ssim": float(np.mean(tgc.metrics.ssim(self.targets, outputs))),
            "l1": float(np.mean(tgc.metrics.l1(self.targets, outputs))),
            # A distance: round-off can make it a hair below 0 on equal sets.
            "fd": max(0.0, float(frechet.result())),
            "kid": float(kid.result()),
        }
