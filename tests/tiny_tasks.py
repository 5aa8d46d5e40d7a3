"""Tiny teachers, photo folders and settings for the task, train and bench tests."""

from __future__ import annotations

import numpy as np
from PIL import Image
from pth_files import random_resnet_state, write_zip

from training.tasks import Views

# Views small enough for a test: one 32-pixel view per photo.
VIEWS = Views(
    photo_size=40,
    crop_size=32,
    crops_per_photo=1,
    colour_jitter=0.5,
    eval_size=32,
    reference_photos=4,
    validation_photos=2,
)
# Training settings of `training.train.run` for a run of a few seconds.
TRAINING = {
    "steps": 2,
    "match_steps": 2,
    "steps_per_epoch": 1,
    "batch_size": 2,
    "ndf": 8,
    "latency_runs": 2,
    "jit_compile": False,
    "progress": 0,
    "reconstruction_views": 4,
}
VIEW_SETTINGS = {
    "photo_size": VIEWS.photo_size,
    "crop_size": VIEWS.crop_size,
    "crops_per_photo": VIEWS.crops_per_photo,
    "eval_size": VIEWS.eval_size,
    "reference_photos": VIEWS.reference_photos,
    "validation_photos": VIEWS.validation_photos,
}


def write_pth_teacher(path, seed: int = 0) -> None:
    """A PyTorch CycleGAN ResNet generator checkpoint (ngf 8, one block)."""
    state = random_resnet_state(np.random.default_rng(seed), ngf=8, n_blocks=1)
    write_zip(path, state, prefix=path.stem)


def photo(rng: np.random.Generator, height: int = 48, width: int = 56) -> np.ndarray:
    """A smooth random colour image (gradients and blobs), `uint8`."""
    y, x = np.mgrid[0:height, 0:width] / max(height, width)
    channels = []
    for _ in range(3):
        a, b, c, d = rng.uniform(-3, 3, 4)
        channels.append(np.sin(a * x + b * y + c) * np.cos(d * x * y))
    image = (np.stack(channels, -1) + 1.0) * 127.5
    image += rng.normal(0, 8, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def write_photos(folder, count: int, seed: int = 0, prefix: str = "photo") -> list:
    """`count` PNG photos in `folder` (created); returns their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for index in range(count):
        path = folder / f"{prefix}{index:02d}.png"
        Image.fromarray(photo(rng)).save(path)
        paths.append(path)
    return paths


def write_pairs(folder, count: int, seed: int = 0) -> list:
    """`count` AB images whose right half B is the negative of the left half A."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for index in range(count):
        a = photo(rng)
        path = folder / f"pair{index:02d}.png"
        Image.fromarray(np.concatenate([a, 255 - a], axis=1)).save(path)
        paths.append(path)
    return paths
