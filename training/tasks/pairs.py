"""Paired tasks: your pix2pix-style "AB" images (input left, target right).

The student trains on the real pairs `(A, B)` (the paired setting of
pix2pix and GAN Compression's pix2pix students), distilling from the
teacher; like every task, it is scored against the *teacher's* outputs on
the held-out inputs, next to the identity and colour-map references.

Training views are `crops_per_photo` zoom crops per pair, cut identically
from A and B at positions fixed by the file's content and the view's
index (no colour jitter: it would break the pairing). Validation,
held-out and reference views are the central square of A, and the
teacher runs on each (not cached on disk: pairs tasks are usually small).

    task = pair_task(*load_teacher("latest_net_G.pth"), pairs="facades/train",
                     held_out="facades/val")
"""

from __future__ import annotations

import hashlib
import os

import keras
import numpy as np
import tensorflow as tf
from PIL import Image

import tfgancompress as tgc
from tfgancompress.data import pairs as data_pairs
from tfgancompress.data import pipeline
from training.tasks.base import TaskData, Views, assemble, to_float
from training.tasks.photos import (
    DEFAULT_HELD_OUT_FRACTION,
    folder_photos,
    split_held_out,
)


def _halves(photo: tgc.data.Photo, size: int) -> np.ndarray:
    """An AB file as `uint8 (H, W, 6)`: A's channels, then B's, short side `size`."""
    image = tgc.data.open_photo(photo)
    if image.width % 2:
        raise ValueError(
            f"{photo.path} is {image.width} pixels wide: an AB pair has an even "
            "width (A on the left half, B on the right)."
        )
    half = image.width // 2
    target = tgc.data.builtin.fit_size(half, image.height, size)
    halves = [
        image.crop((left, 0, left + half, image.height)).resize(
            target, Image.Resampling.LANCZOS
        )
        for left in (0, half)
    ]
    return np.concatenate([np.asarray(h) for h in halves], axis=-1)


def _views(stack: np.ndarray, digest: str, views: Views, training: bool):
    """Zoom crops (training) or the central view of an AB stack, uint8."""
    image = tf.constant(stack, tf.float32) / 127.5 - 1.0
    count = views.crops_per_photo if training else 1
    side = views.crop_size if training else views.eval_size
    crops = []
    for index in range(count):
        seed = tf.constant([int(digest[:8], 16), index], tf.int64)
        crop = pipeline.zoom_crop(image, seed, side, training)
        crops.append(np.round((crop.numpy() + 1.0) * 127.5).clip(0, 255))
    return np.stack(crops).astype(np.uint8)


def _load(photos, views: Views, training: bool) -> np.ndarray:
    stacks = []
    for photo in photos:
        stack = _halves(photo, views.photo_size)
        digest = hashlib.sha1(photo.read_bytes()).hexdigest()
        stacks.append(_views(stack, digest, views, training))
    return np.concatenate(stacks)


def pair_task(
    teacher: keras.Model,
    key: str,
    pairs: str | os.PathLike,
    held_out: str | os.PathLike | None = None,
    held_out_fraction: float = DEFAULT_HELD_OUT_FRACTION,
    views: Views | None = None,
    seed: int = 0,
) -> TaskData:
    """`teacher` on your AB pairs: a folder, and a held-out folder or fraction.

    Args:
        teacher: The generator (A -> B).
        key: Names the teacher (in the data key).
        pairs: Folder of AB images (searched recursively).
        held_out: Folder of AB images for the final score only; `None`
            holds out `held_out_fraction` of `pairs`' files (seeded).
        held_out_fraction: See `held_out`.
        views: How to cut the views (`colour_jitter` is not used).
        seed: Seed of the splits.

    Raises:
        FileNotFoundError: If a folder does not exist.
        ValueError: On a folder without usable images, an odd-width image,
            or too few files to hold a fraction out.
    """
    views = views or Views()
    train, held, where = split_held_out(
        folder_photos(pairs), held_out, held_out_fraction, seed, "pairs"
    )
    run_teacher = data_pairs.teacher_function(teacher)

    def training_views(photos):
        stacks = _load(photos, views, training=True)
        return stacks[..., :3], stacks[..., 3:]

    def central_views(photos):
        inputs = _load(photos, views, training=False)[..., :3]
        outputs = np.stack([run_teacher(image) for image in inputs])
        return to_float(inputs), to_float(outputs)

    return assemble(
        "pairs",
        f"{teacher.name} on the pairs of {pairs} ({where})",
        teacher,
        key,
        train,
        held,
        views,
        seed,
        training_views=training_views,
        central_views=central_views,
    )
