"""Photo tasks: a teacher run on views of photos (the built-in ones or yours).

The targets are the teacher's own outputs on each view (pseudo-pairs, the
unpaired setting of GAN Compression and GAN Slimming): any image-to-image
generator can be compressed on any photos this way. A teacher with
instance norms computes per-image statistics, so the teacher runs on each
view itself, never on a whole photo that is cropped afterwards (see
`tgc.data.pairs`); its outputs are cached on disk under a key naming the
teacher's weights, so a second run with the same teacher and photos reads
them back.

    task = photo_task(*load_teacher("G.pth"), photos="my_photos/")
    task = builtin_task(teacher, "my_teacher_v1")   # the built-in photos
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Sequence
from pathlib import Path

import keras
import numpy as np

import tfgancompress as tgc
from training.tasks.base import TaskData, Views, assemble, teacher_views, to_float

DEFAULT_HELD_OUT_FRACTION = 0.1
TEACHER_FORMATS = (".pth", ".keras")


def load_teacher(path: str | os.PathLike) -> tuple[keras.Model, str]:
    """A generator from a `.pth` (PyTorch, read without torch) or `.keras` file.

    Args:
        path: The file. `.pth`: a pix2pix/CycleGAN ResNet, mobile ResNet or
            U-Net generator (`tgc.models.load_pytorch_generator`); `.keras`:
            any single-input Keras generator using this project's layers.

    Returns:
        `(model, key)`: the key (`teacher-<hash of the file>`) names the
        teacher's outputs in the view cache.

    Raises:
        FileNotFoundError: If there is no such file.
        ValueError: If the extension is neither `.pth` nor `.keras`.
        tgc.models.CheckpointError: If a `.pth` holds no supported generator.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Teacher file {path} does not exist.")
    suffix = path.suffix.lower()
    if suffix not in TEACHER_FORMATS:
        raise ValueError(
            f"Teacher file {path}: expected one of {', '.join(TEACHER_FORMATS)}, "
            f"got {suffix or 'no extension'!r}."
        )
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:12]
    if suffix == ".pth":
        model = tgc.models.load_pytorch_generator(path)
    else:
        model = keras.models.load_model(path, compile=False)
    return model, f"teacher-{digest}"


def _file_photo(path: Path, root: Path) -> tgc.data.Photo:
    relative = path.relative_to(root).with_suffix("")
    name = re.sub(r"[^\w.-]", "_", str(relative))
    return tgc.data.Photo("folder", name, path)


def folder_photos(folder: str | os.PathLike) -> list[tgc.data.Photo]:
    """The usable images of a folder (recursively), as photos, in name order.

    Unusable files are skipped with a warning naming them
    (`tgc.data.scan_images`).

    Raises:
        FileNotFoundError: If the folder does not exist.
        ValueError: If it holds no usable image.
    """
    root = Path(folder)
    scan = tgc.data.scan_images(root)
    return [_file_photo(Path(info.path), root) for info in scan.images]


def held_out_by_fraction(photos: list, fraction: float, seed: int) -> tuple[list, list]:
    """Splits photos into (train, held-out) by file: a seeded fraction held out.

    At least one photo goes to each side.

    Raises:
        ValueError: If `fraction` is not in (0, 1) or there are fewer than
            two photos.
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"held_out_fraction must be in (0, 1), got {fraction}.")
    if len(photos) < 2:
        raise ValueError(
            f"Holding out a fraction needs at least 2 photos, got {len(photos)}: "
            "give a held-out folder instead."
        )
    count = min(len(photos) - 1, max(1, round(fraction * len(photos))))
    # Its own stream: the validation split draws from the seed separately.
    rng = np.random.default_rng([seed, 1])
    chosen = set(rng.permutation(len(photos))[:count].tolist())
    held_out = [p for i, p in enumerate(photos) if i in chosen]
    train = [p for i, p in enumerate(photos) if i not in chosen]
    return train, held_out


def split_held_out(
    photos: list,
    held_out: str | os.PathLike | None,
    fraction: float,
    seed: int,
    what: str = "photos",
) -> tuple[list, list, str]:
    """Training and held-out photos: a held-out folder, or a fraction of `photos`.

    Returns:
        `(train, held_out, where)`: `where` says how they were split.
    """
    if held_out is None:
        train, held = held_out_by_fraction(photos, fraction, seed)
        return train, held, f"{len(held)} of its {what} held out at random"
    return photos, folder_photos(held_out), f"held out: {held_out}"


def views_task(
    name: str,
    description: str,
    teacher: keras.Model,
    key: str,
    train_photos: list,
    held_out_photos: list,
    views: Views,
    seed: int,
    cache_dir=None,
    sources: bool = False,
    extra_train: Sequence = (),
) -> TaskData:
    """A photo task: the teacher's views of training and held-out photos.

    Args:
        name: Short task name (result files).
        description: One line for reports.
        teacher: The generator.
        key: Names the teacher in the view cache.
        train_photos: Photos to train on (validation and reference photos
            are drawn from them).
        held_out_photos: Photos for the final score only.
        views: How to cut the views.
        seed: Seed of the splits.
        cache_dir: View cache root (default `tgc.data.default_cache_dir()`).
        sources: Count each split's photos by built-in source.
        extra_train: Photos added to the training split only (`assemble`).

    Returns:
        The loaded `TaskData`.
    """

    def training_views(photos):
        return teacher_views(photos, teacher, key, views, True, cache_dir)

    def central_views(photos):
        inputs, outputs = teacher_views(photos, teacher, key, views, False, cache_dir)
        return to_float(inputs), to_float(outputs)

    return assemble(
        name,
        description,
        teacher,
        key,
        train_photos,
        held_out_photos,
        views,
        seed,
        training_views=training_views,
        central_views=central_views,
        sources=sources,
        extra_train=extra_train,
    )


def builtin_set(photo_set: str) -> list[tgc.data.Photo]:
    """The built-in photos of a named set (`tgc.data.PHOTO_SETS`).

    Raises:
        ValueError: On an unknown set name, or a set whose extra sources
            are all missing (the message says how to unpack them).
    """
    sources = tgc.data.photo_set(photo_set)
    photos = tgc.data.builtin_photos(sources)
    extra = set(sources) - set(tgc.data.SOURCES)
    if extra and not {photo.source for photo in photos} & extra:
        raise ValueError(
            f"Photo set {photo_set!r}: none of its extra sources "
            f"({', '.join(sorted(extra))}) is unpacked in "
            f"{tgc.data.default_photo_dir()}: run `make photos-extended`."
        )
    return photos


def builtin_task(
    teacher: keras.Model,
    key: str,
    views: Views | None = None,
    seed: int = 0,
    holdout=tgc.data.DEFAULT_HOLDOUT,
    cache_dir=None,
    name: str = "builtin",
    photo_set: str = tgc.data.DEFAULT_PHOTO_SET,
    extra_train: Sequence = (),
) -> TaskData:
    """`teacher` on the built-in photos, held out by source.

    Args:
        teacher: The generator.
        key: Names the teacher in the view cache.
        views: How to cut the views (default `Views()`).
        seed: Seed of the validation and reference draws.
        holdout: Sources held out for the final score
            (`tgc.data.split_by_source`).
        cache_dir: View cache root.
        name: Task name.
        photo_set: Which built-in photos (`tgc.data.PHOTO_SETS`); the
            default "standard" set keeps the task's data key as it was
            before the extended set existed.
        extra_train: Photos added to the training split only (synthetic
            images: `tgc.data.dead_leaves_photos`).

    Raises:
        ValueError: On an unknown photo set, or "extended" with none of its
            extra sources unpacked.
    """
    views = views or Views()
    train, held_out = tgc.data.split_by_source(builtin_set(photo_set), holdout)
    sources = ", ".join(holdout) if not isinstance(holdout, str) else holdout
    which = "" if photo_set == tgc.data.DEFAULT_PHOTO_SET else f"{photo_set} "
    return views_task(
        name,
        f"{teacher.name} on the {which}built-in photos (held out: {sources})",
        teacher,
        key,
        train,
        held_out,
        views,
        seed,
        cache_dir,
        sources=True,
        extra_train=extra_train,
    )


def photo_task(
    teacher: keras.Model,
    key: str,
    photos: str | os.PathLike,
    held_out: str | os.PathLike | None = None,
    held_out_fraction: float = DEFAULT_HELD_OUT_FRACTION,
    views: Views | None = None,
    seed: int = 0,
    cache_dir=None,
    extra_train: Sequence = (),
) -> TaskData:
    """`teacher` on your photos: a folder, and a held-out folder or fraction.

    Args:
        teacher: The generator.
        key: Names the teacher in the view cache (`load_teacher` gives one).
        photos: Folder of training photos (searched recursively).
        held_out: Folder of photos for the final score only; `None` holds
            out `held_out_fraction` of `photos`' files (seeded).
        held_out_fraction: See `held_out`.
        views: How to cut the views (default `Views()`).
        seed: Seed of the splits.
        cache_dir: View cache root.
        extra_train: Photos added to the training split only.

    Raises:
        FileNotFoundError: If a folder does not exist.
        ValueError: If a folder has no usable image, or too few photos to
            hold a fraction out.
    """
    views = views or Views()
    train, held, where = split_held_out(
        folder_photos(photos), held_out, held_out_fraction, seed
    )
    return views_task(
        "photos",
        f"{teacher.name} on the photos of {photos} ({where})",
        teacher,
        key,
        train,
        held,
        views,
        seed,
        cache_dir,
        extra_train=extra_train,
    )
