"""Built-in colour photos that install offline, and crops of them as `tf.data`.

Sources (each photo carries its source; hold evaluation photos out **by
source**, never by crop, see `split_by_source`):

| source | folder | photos |
|---|---|---|
| `opencv-doc` | `/usr/share/doc/opencv-doc/examples/data` (Debian) | 28 |
| `scikit-image` | `skimage/data` | 9 |
| `scikit-learn` | `sklearn/datasets/images` (`load_sample_images`) | 2 |
| `matplotlib` | `mpl-data/sample_data` (`cbook.get_sample_data`) | 1 |

opencv-doc is used when present (the project's set-up installs it where
apt-get exists); the others come with the pip packages of the `data` extra.

The photos are chosen **by name** (the lists below): real colour camera
photographs only. Left out: grayscale files (opencv-doc's 28 calibration
chessboards `left01..14`/`right01..14`, `basketball*`, `box*`; skimage's
`camera`, `coins`, `moon`, ...), drawings, logos, charts and renders
(`HappyFish`, `*Logo*`, `ml`, `pic1..6`, `detect_blob`, `cards`,
`Blender_Suzanne*`, `blox`, `gradient`, skimage `color`/`logo`, matplotlib
`logo2`/`Minduka_Present_Blue_Pack`), text scans (`text_*`, `imageText*`,
`notes`, `sudoku`), a painting (`starry_night`), masks and ground truth
(`aloeGT`, `mask`, `templ`, `tmpl`), `pca_test1` (drawn shapes). Each kept
photo's Hasler-Suesstrunk colourfulness is >= 13 (a gray image scores 0).
Stereo/viewpoint pairs (`aloeL/R`, `left/right`, `leuvenA/B`, `graf1/3`,
`rubberwhale1/2`, `ela_original/modified`, skimage `motorcycle_left/right`)
are kept: they are different photographs of one scene, and a split by source
keeps both of a pair on the same side.

Default split: train on opencv-doc + scikit-learn + matplotlib (31 photos),
evaluate on the 9 scikit-image photos (astronaut, cat, coffee, rocket,
motorcycle stereo pair, and three scientific images: Hubble deep field,
immunohistochemistry, retina), which none of the training sources resemble
closely. Without opencv-doc only 3 training photos remain: install it
(`apt-get install opencv-doc`) for real training.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import tensorflow as tf
from absl import logging
from PIL import Image

from tfgancompress.data import pipeline

OPENCV_DOC_DIR = Path("/usr/share/doc/opencv-doc/examples/data")
SOURCES = ("opencv-doc", "scikit-image", "scikit-learn", "matplotlib")
DEFAULT_HOLDOUT = ("scikit-image",)

_PHOTOS = {
    "opencv-doc": (
        "aero1.jpg",
        "aero3.jpg",
        "aloeL.jpg",
        "aloeR.jpg",
        "apple.jpg",
        "baboon.jpg",
        "board.jpg",
        "building.jpg",
        "butterfly.jpg",
        "chicky_512.png",
        "ela_modified.jpg",
        "ela_original.jpg",
        "fruits.jpg",
        "graf1.png",
        "graf3.png",
        "home.jpg",
        "left.jpg",
        "leuvenA.jpg",
        "leuvenB.jpg",
        "licenseplate_motion.jpg",
        "messi5.jpg",
        "orange.jpg",
        "right.jpg",
        "rubberwhale1.png",
        "rubberwhale2.png",
        "smarties.png",
        "squirrel_cls.jpg",
        "stuff.jpg",
    ),
    "scikit-image": (
        "astronaut.png",
        "chelsea.png",
        "coffee.png",
        "hubble_deep_field.jpg",
        "ihc.png",
        "motorcycle_left.png",
        "motorcycle_right.png",
        "retina.jpg",
        "rocket.jpg",
    ),
    "scikit-learn": ("china.jpg", "flower.jpg"),
    "matplotlib": ("grace_hopper.jpg",),
}
# Folder of each pip source inside its installed package.
_PACKAGE_DIRS = {
    "scikit-image": ("skimage", "data"),
    "scikit-learn": ("sklearn", "datasets/images"),
    "matplotlib": ("matplotlib", "mpl-data/sample_data"),
}


@dataclasses.dataclass(frozen=True)
class Photo:
    """One built-in photo.

    Attributes:
        source: Where it comes from, one of `SOURCES`.
        name: File name without extension (`"astronaut"`).
        path: The image file.
    """

    source: str
    name: str
    path: Path

    def digest(self) -> str:
        """A short hash of the file's bytes (cache keys follow the content)."""
        return hashlib.sha1(self.path.read_bytes()).hexdigest()[:10]


def _source_dir(source: str, opencv_dir: str | os.PathLike) -> Path | None:
    """The folder holding a source's photos, or None if not installed."""
    if source == "opencv-doc":
        folder = Path(opencv_dir)
        return folder if folder.is_dir() else None
    package, sub = _PACKAGE_DIRS[source]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0]) / sub


def _check_sources(sources: Sequence[str]) -> None:
    unknown = sorted(set(sources) - set(SOURCES))
    if unknown:
        raise ValueError(f"Unknown photo source(s) {unknown}; known: {SOURCES}.")


def builtin_photos(
    sources: Sequence[str] | None = None,
    *,
    opencv_dir: str | os.PathLike = OPENCV_DOC_DIR,
) -> list[Photo]:
    """The built-in colour photos of the installed sources.

    A source that is not installed is left out (logged); so is a listed file
    missing from an installed source (logged with its path).

    Args:
        sources: Sources to include (default: all of `SOURCES`).
        opencv_dir: Where Debian's `opencv-doc` puts its example images.

    Returns:
        The photos, ordered by source (as in `SOURCES`) and name.

    Raises:
        ValueError: If a source name is unknown, or no photo is found.

    Example:

    >>> photos = builtin_photos()
    >>> sorted({p.source for p in photos})
    ['matplotlib', 'opencv-doc', 'scikit-image', 'scikit-learn']
    """
    sources = SOURCES if sources is None else tuple(sources)
    _check_sources(sources)
    photos = []
    for source in SOURCES:
        if source not in sources:
            continue
        folder = _source_dir(source, opencv_dir)
        if folder is None:
            logging.info("Photo source %s is not installed: left out.", source)
            continue
        for file_name in _PHOTOS[source]:
            path = folder / file_name
            if path.is_file():
                photos.append(Photo(source, path.stem, path))
            else:
                logging.warning("Built-in photo %s is missing: left out.", path)
    if not photos:
        raise ValueError(
            f"No built-in photos found for sources {sources}: install the data "
            "extra (`pip install tfgancompress[data]`) or Debian's opencv-doc."
        )
    return photos


def split_by_source(
    photos: Sequence[Photo], holdout: Sequence[str] = DEFAULT_HOLDOUT
) -> tuple[list[Photo], list[Photo]]:
    """Splits photos into training and evaluation sets by whole sources.

    Args:
        photos: Photos, e.g. `builtin_photos()`.
        holdout: Sources whose photos all go to evaluation.

    Returns:
        `(train, evaluation)` photo lists.

    Raises:
        ValueError: If a source name is unknown, or either side is empty.

    Example:

    >>> train, held_out = split_by_source(builtin_photos(), ("scikit-image",))
    >>> {p.source for p in held_out}
    {'scikit-image'}
    """
    holdout = (holdout,) if isinstance(holdout, str) else tuple(holdout)
    _check_sources(holdout)
    train = [p for p in photos if p.source not in holdout]
    held_out = [p for p in photos if p.source in holdout]
    present = sorted({p.source for p in photos})
    if not held_out:
        raise ValueError(
            f"No photo of the held-out sources {holdout}; present: {present}."
        )
    if not train:
        raise ValueError(
            f"Holding out {holdout} leaves no training photo; present: {present}."
        )
    return train, held_out


def select(
    split: str | Sequence[Photo],
    holdout: Sequence[str],
    opencv_dir: str | os.PathLike,
) -> list[Photo]:
    """Photos of a split name (`"train"`, `"eval"`, `"all"`) or an explicit list.

    Raises:
        ValueError: If the split name is unknown or the list is empty.
    """
    if not isinstance(split, str):
        photos = list(split)
        if not photos:
            raise ValueError("The photo list is empty.")
        return photos
    if split not in ("train", "eval", "all"):
        raise ValueError(
            f"split must be 'train', 'eval', 'all' or a list of Photo, got {split!r}."
        )
    photos = builtin_photos(opencv_dir=opencv_dir)
    if split == "all":
        return photos
    train, held_out = split_by_source(photos, holdout)
    return train if split == "train" else held_out


def fit_size(width: int, height: int, short_side: int) -> tuple[int, int]:
    """`(width, height)` with the short side `short_side`, both multiples of 4.

    Multiples of 4 keep the ResNet generators' two stride-2 stages exact.

    Raises:
        ValueError: If `short_side` is not a positive multiple of 4.
    """
    if short_side < 4 or short_side % 4:
        raise ValueError(f"size must be a positive multiple of 4, got {short_side}.")
    scale = short_side / min(width, height)
    return (
        max(4, round(width * scale / 4) * 4),
        max(4, round(height * scale / 4) * 4),
    )


def load_photo(photo: Photo | str | os.PathLike, short_side: int) -> np.ndarray:
    """An RGB `uint8 (H, W, 3)` photo resized so its short side is `short_side`.

    Args:
        photo: A `Photo` or an image path.
        short_side: Target short side (multiple of 4; both sides end up
            multiples of 4, see `fit_size`).

    Returns:
        The resized photo (Pillow, Lanczos).
    """
    path = photo.path if isinstance(photo, Photo) else Path(photo)
    with Image.open(path) as image:
        image = image.convert("RGB")
        size = fit_size(image.width, image.height, short_side)
        return np.asarray(image.resize(size, Image.Resampling.LANCZOS))


def crops_dataset(
    arrays: Sequence[np.ndarray],
    *,
    crop_size: int,
    crops_per_photo: int,
    batch_size: int,
    training: bool,
    seed: int | None,
    repeat: bool,
    drop_remainder: bool | None,
) -> tf.data.Dataset:
    """Zoom crops (`pipeline.zoom_crop`) of in-memory `uint8` images.

    Images with 3 channels give single images; 6 channels (input and target
    stacked) give `(input, target)` pairs cropped identically.

    Args:
        arrays: `uint8 (H, W, C)` images, short side >= `crop_size`.
        crop_size: Output side.
        crops_per_photo: Random crops per image per epoch (training).
        batch_size: Examples per batch.
        training: Random zoom crops + flips, shuffled; else one central crop
            per image, in order.
        seed: Seed of the shuffle and crops.
        repeat: Repeat forever.
        drop_remainder: Drop the last partial batch (default: `training`).

    Returns:
        The batched dataset, `float32` in [-1, 1].

    Raises:
        ValueError: If an image is smaller than `crop_size` or counts are bad.
    """
    if crops_per_photo < 1:
        raise ValueError(f"crops_per_photo must be >= 1, got {crops_per_photo}.")
    for array in arrays:
        if min(array.shape[:2]) < crop_size:
            raise ValueError(
                f"crop_size={crop_size} exceeds an image of "
                f"{array.shape[1]}x{array.shape[0]}: raise the size it is "
                "loaded at or lower crop_size."
            )
    drop_remainder = training if drop_remainder is None else drop_remainder
    channels = arrays[0].shape[-1]
    height = max(a.shape[0] for a in arrays)
    width = max(a.shape[1] for a in arrays)
    padded = np.zeros((len(arrays), height, width, channels), np.uint8)
    for i, array in enumerate(arrays):
        padded[i, : array.shape[0], : array.shape[1]] = array
    images = tf.constant(padded)
    shapes = tf.constant([a.shape[:2] for a in arrays], tf.int32)
    count = len(arrays) * (crops_per_photo if training else 1)
    indices = tf.data.Dataset.range(count)
    if training:
        indices = indices.shuffle(count, seed=seed, reshuffle_each_iteration=True)

    def crop(index, element_seed):
        i = tf.cast(index % len(arrays), tf.int32)
        image = images[i, : shapes[i, 0], : shapes[i, 1]]
        out = pipeline.zoom_crop(
            pipeline.to_float(image), element_seed, crop_size, training
        )
        if channels == 3:
            return out
        return out[..., :3], out[..., 3:]

    examples = pipeline.with_seeds(indices, seed).map(
        crop, num_parallel_calls=pipeline.AUTOTUNE
    )
    return pipeline.finish(examples, batch_size, drop_remainder, repeat, count)


def photos(
    split: str | Sequence[Photo] = "train",
    *,
    holdout: Sequence[str] = DEFAULT_HOLDOUT,
    crop_size: int = 256,
    load_size: int = 384,
    crops_per_photo: int = 8,
    batch_size: int = 1,
    training: bool | None = None,
    seed: int | None = None,
    repeat: bool = False,
    drop_remainder: bool | None = None,
    opencv_dir: str | os.PathLike = OPENCV_DOC_DIR,
) -> tf.data.Dataset:
    """Random crops of the built-in colour photos.

    Each photo is resized so its short side is `load_size`; a training crop
    is a square of random side between `crop_size` and `load_size` (a detail
    at full resolution up to the whole scene's height), resized to
    `crop_size` and flipped at random. Evaluation: the central square of the
    whole short side, resized, one per photo.

    Args:
        split: `"train"`, `"eval"` (the sources in `holdout`), `"all"`, or an
            explicit list of `Photo`.
        holdout: Sources held out for evaluation (`split_by_source`).
        crop_size: Side of the crops.
        load_size: Short side the photos are resized to first.
        crops_per_photo: Random crops per photo per epoch (training).
        batch_size: Crops per batch.
        training: Random crops, flips and shuffling (default: `split !=
            "eval"`).
        seed: Seed of the shuffle and crops (`None`: random).
        repeat: Repeat forever.
        drop_remainder: Drop the last partial batch (default: `training`).
        opencv_dir: Where Debian's `opencv-doc` keeps its example images.

    Returns:
        A `tf.data.Dataset` of `float32 (batch, crop_size, crop_size, 3)` in
        [-1, 1].

    Raises:
        ValueError: On an unknown split/source, an empty split, or
            `crop_size > load_size`.

    Example:

    >>> ds = photos("train", crop_size=128, batch_size=8, seed=0)
    >>> next(iter(ds)).shape
    TensorShape([8, 128, 128, 3])
    """
    if crop_size > load_size:
        raise ValueError(f"crop_size={crop_size} exceeds load_size={load_size}.")
    training = split != "eval" if training is None else training
    chosen = select(split, holdout, opencv_dir)
    arrays = [load_photo(photo, load_size) for photo in chosen]
    return crops_dataset(
        arrays,
        crop_size=crop_size,
        crops_per_photo=crops_per_photo,
        batch_size=batch_size,
        training=training,
        seed=seed,
        repeat=repeat,
        drop_remainder=drop_remainder,
    )
