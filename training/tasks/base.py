"""What a task gives a compression run: a teacher and its data, loaded once.

A task is a function returning a `TaskData`: the teacher, and every image
set a run needs, in memory:

- `train`: training views and their targets (for a photo task, fixed zoom
  crops of each training photo and the teacher's output on exactly that
  view, computed once and cached on disk: `tgc.data.pairs.cached_views`);
  `dataset()` batches them, `calibration()` draws the least-squares refit's
  images from them;
- `validation`: central views of training photos split off by photo
  (seeded), never trained on: what a method's search scores candidates on
  (`training.methods.Setup.validation`) and what training logs each epoch;
- `held_out`: central views of the photos held out for the final score;
- `reference`: central views of a seeded subset of the training photos: the
  global colour map (`colour_map`, fitted once) and the int8 calibration.

How views are cut is a `Views` setting. Methods and trainers see none of
this: the pipeline gets a dataset, calibration images, a colour map and a
`Setup`.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
from collections.abc import Callable, Sequence

import keras
import numpy as np
import tensorflow as tf

import tfgancompress as tgc
from tfgancompress.data import pairs as data_pairs

COLOUR_MAP_SAMPLES = 20000
# The jitters of the training views' tone (`tgc.data.pipeline.tone_jitter`).
TONE_JITTERS = ("white_balance_jitter", "gamma_jitter", "channel_gamma_jitter")


@dataclasses.dataclass(frozen=True)
class Views:
    """How a task cuts photos into views (each view costs one teacher run).

    Attributes:
        photo_size: Short side the photos are loaded at (a multiple of 4).
        crop_size: Side of the training views.
        crops_per_photo: Training views per photo: zoom crops at a position
            fixed by the photo and the view's index, colour-jittered.
        colour_jitter: Colour-jitter strength of the training views, [0, 1].
        white_balance_jitter: Strength of the training views' random
            per-channel gains (white balance), [0, 1]; 0 (off) by default.
        gamma_jitter: Strength of their random gamma (one per view), [0, 1];
            0 (off) by default.
        channel_gamma_jitter: Strength of their random per-channel gamma
            on top of it, [0, 1]; 0 (off) by default (see
            `tgc.data.pipeline.draw_tone` for all three).
        eval_size: Side of the central views of the held-out, validation
            and reference photos.
        reference_photos: Training photos whose central views fit the
            colour map and calibrate int8 (a seeded subset; all if fewer).
        validation_photos: Training photos split off for validation
            (seeded, by photo), never trained on; fewer when the task has
            few photos (at least one photo is left to train on).
    """

    photo_size: int = 256
    crop_size: int = 128
    crops_per_photo: int = 2
    colour_jitter: float = 0.5
    eval_size: int = 256
    reference_photos: int = 32
    validation_photos: int = 16
    white_balance_jitter: float = 0.0
    gamma_jitter: float = 0.0
    channel_gamma_jitter: float = 0.0

    def __post_init__(self):
        for name in ("crop_size", "eval_size"):
            side = getattr(self, name)
            if not 4 <= side <= self.photo_size or side % 4:
                raise ValueError(
                    f"{name}={side} must be a multiple of 4 in [4, photo_size="
                    f"{self.photo_size}] (views are cut from the loaded photo)."
                )
        if self.photo_size % 4:
            raise ValueError(f"photo_size={self.photo_size} must be a multiple of 4.")
        if self.crops_per_photo < 1 or self.reference_photos < 1:
            raise ValueError(
                "crops_per_photo and reference_photos must be >= 1, got "
                f"{self.crops_per_photo} and {self.reference_photos}."
            )
        if self.validation_photos < 0:
            raise ValueError(
                f"validation_photos must be >= 0, got {self.validation_photos}."
            )
        for name in ("colour_jitter", *TONE_JITTERS):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(
                    f"{name} must be in [0, 1], got {getattr(self, name)}."
                )

    def description(self) -> str:
        """What names these views in a task's data key.

        The fields as the dataclass prints them, the tone jitters only when
        on: keys (and so cached benchmark rows) made before the tone
        jitters existed stay valid.
        """
        shown = [
            field.name
            for field in dataclasses.fields(self)
            if field.name not in TONE_JITTERS or getattr(self, field.name)
        ]
        values = ", ".join(f"{name}={getattr(self, name)!r}" for name in shown)
        return f"{type(self).__name__}({values})"

    def tone_jitters(self) -> dict[str, float]:
        """The tone jitters' strengths, by `cached_views` argument name."""
        return {name: getattr(self, name) for name in TONE_JITTERS}

    @classmethod
    def from_settings(cls, settings: dict) -> Views:
        """The `Views` of a settings dict (its keys named like the fields)."""
        names = [field.name for field in dataclasses.fields(cls)]
        return cls(**{name: settings[name] for name in names if name in settings})


def to_float(images: np.ndarray) -> np.ndarray:
    """`uint8` images as float32 in [-1, 1]."""
    return np.asarray(images, np.float32) / 127.5 - 1.0


def _as_float(inputs: tf.Tensor, targets: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    return (
        tf.cast(inputs, tf.float32) / 127.5 - 1.0,
        tf.cast(targets, tf.float32) / 127.5 - 1.0,
    )


def split_photos(
    photos: Sequence, validation: int, reference: int, seed: int
) -> tuple[list, list, list]:
    """Splits training photos: (train, validation, reference), seeded, by photo.

    Args:
        photos: The training photos (any records), in a fixed order.
        validation: Photos to split off for validation; at most
            `len(photos) - 1`, so that one is left to train on.
        reference: Photos of the training part to draw as references (all
            of them if fewer).
        seed: Seed of the draws.

    Returns:
        `(train, validation, reference)` lists, each in the input order;
        `reference` is a subset of `train`.

    Raises:
        ValueError: If `photos` is empty.
    """
    photos = list(photos)
    if not photos:
        raise ValueError("No training photos to split.")
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(photos))
    count = min(validation, len(photos) - 1)
    chosen = set(order[:count].tolist())
    validation_part = [p for i, p in enumerate(photos) if i in chosen]
    train = [p for i, p in enumerate(photos) if i not in chosen]
    picked = set(rng.permutation(len(train))[: min(reference, len(train))].tolist())
    reference_part = [p for i, p in enumerate(train) if i in picked]
    return train, validation_part, reference_part


def teacher_views(
    photos: Sequence[tgc.data.Photo],
    teacher: keras.Model,
    key: str,
    views: Views,
    training: bool,
    cache_dir=None,
) -> tuple[np.ndarray, np.ndarray]:
    """Views of `photos` and the teacher's output on each (cached on disk).

    Args:
        photos: The photos.
        teacher: The generator; it runs only on views missing from the cache.
        key: Names the teacher in the cache (change it with its weights).
        views: How to cut the views.
        training: `crops_per_photo` zoom crops of `crop_size` per photo, or
            the central `eval_size` view.
        cache_dir: Cache root (default `tgc.data.default_cache_dir()`).

    Returns:
        `(inputs, outputs)`, `uint8 (N, side, side, 3)` each.
    """
    if not photos:
        side = views.crop_size if training else views.eval_size
        empty = np.zeros((0, side, side, 3), np.uint8)
        return empty, empty
    return data_pairs.cached_views(
        photos,
        key=key,
        size=views.photo_size,
        crop_size=views.crop_size if training else views.eval_size,
        views_per_photo=views.crops_per_photo,
        training=training,
        cache_dir=cache_dir,
        make_function=lambda: data_pairs.teacher_function(teacher),
        colour_jitter=views.colour_jitter if training else 0.0,
        **(views.tone_jitters() if training else {}),
    )


def data_key(description: dict) -> str:
    """A short hash of what a task's data are made of (JSON-able dict)."""
    text = json.dumps(description, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


@dataclasses.dataclass(eq=False)
class TaskData:
    """A task, loaded: the teacher and its image sets (see the module docstring).

    Attributes:
        name: Short name (`"vintage"`, `"photos"`, `"pairs"`): names result
            files.
        description: One line for reports.
        teacher: The generator to compress.
        train: `(inputs, targets)`, `uint8 (N, crop, crop, 3)` training views.
        validation: `(inputs, targets)` float32 in [-1, 1], central views of
            the validation photos and the teacher's outputs on them, or
            `None` when the task has too few photos.
        held_out: The same for the held-out photos (the final score).
        reference: The same for the reference photos (colour map, int8).
        photos: Photos per split: `train`, `validation`, `held_out`,
            `reference`.
        photo_names: `source/name` of the photos of each split.
        views: How the views were cut.
        key: A short hash of the teacher, photos, views and seed: a run's
            cache key includes it.
        sources: `{split: {source: photos}}` where photos have sources.
        mode: How batches are read (`training.methods.Setup.mode`).
        seed: Seed of the splits.
    """

    name: str
    description: str
    teacher: keras.Model
    train: tuple[np.ndarray, np.ndarray]
    validation: tuple[np.ndarray, np.ndarray] | None
    held_out: tuple[np.ndarray, np.ndarray]
    reference: tuple[np.ndarray, np.ndarray]
    photos: dict[str, int]
    photo_names: dict[str, list[str]]
    views: Views
    key: str
    sources: dict[str, dict[str, int]] = dataclasses.field(default_factory=dict)
    mode: str = "paired"
    seed: int = 0

    def dataset(self, batch_size: int, seed: int | None = None) -> tf.data.Dataset:
        """The training views as a repeating, shuffled dataset of float batches.

        Batches are `(input, target)`, float32 in [-1, 1], all of
        `batch_size` (XLA compiles once). Every iterator replays the same
        stream (`tgc.data.pipeline.replayable`): each training phase
        starts at its first batch, whatever the previous phase's
        prefetching read ahead.
        """
        seed = self.seed if seed is None else seed
        inputs, targets = (tf.constant(a) for a in self.train)
        count = len(self.train[0])
        order = tgc.data.pipeline.replayable(
            lambda: (
                tf.data.Dataset.range(count)
                .shuffle(count, seed=seed, reshuffle_each_iteration=True)
                .repeat()
            )
        )
        pairs = order.map(
            lambda i: _as_float(tf.gather(inputs, i), tf.gather(targets, i)),
            num_parallel_calls=tf.data.AUTOTUNE,
        )
        return pairs.batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)

    def calibration(self, count: int, seed: int | None = None) -> np.ndarray:
        """`count` training views (all if fewer), seeded, float32 in [-1, 1]."""
        seed = self.seed if seed is None else seed
        inputs = self.train[0]
        chosen = np.random.default_rng(seed).permutation(len(inputs))[:count]
        return to_float(inputs[np.sort(chosen)])

    @functools.cached_property
    def colour_map(self) -> tuple[np.ndarray, np.ndarray]:
        """The least-squares global colour map to the teacher, `(matrix, bias)`.

        Fitted once, on the reference views (`tgc.models.fit_colour_map`).
        """
        return tgc.models.fit_colour_map(
            *self.reference, samples=COLOUR_MAP_SAMPLES, seed=self.seed
        )

    def apply_colour_map(self, images: np.ndarray) -> np.ndarray:
        """`images` through `colour_map`, clipped to [-1, 1]."""
        matrix, bias = self.colour_map
        flat = np.asarray(images, np.float32).reshape(-1, 3) @ matrix + bias
        return np.clip(flat, -1.0, 1.0).reshape(np.shape(images)).astype(np.float32)

    def references(self) -> dict[str, np.ndarray]:
        """What a student must beat, on the held-out inputs: identity, colour map."""
        inputs = self.held_out[0]
        return {"identity": inputs, "colour_map": self.apply_colour_map(inputs)}

    def summary(self) -> dict:
        """JSON-able facts for reports: name, photos per split, views, key."""
        return {
            "task": self.name,
            "task_description": self.description,
            "photos": dict(self.photos),
            "sources": {k: dict(v) for k, v in self.sources.items()},
            "views": dataclasses.asdict(self.views),
            "training_views": len(self.train[0]),
            "key": self.key,
            "seed": self.seed,
        }


Arrays = tuple[np.ndarray, np.ndarray]


def assemble(
    name: str,
    description: str,
    teacher: keras.Model,
    key: str,
    train_photos: Sequence,
    held_out_photos: Sequence,
    views: Views,
    seed: int,
    *,
    training_views: Callable[[list], Arrays],
    central_views: Callable[[list], Arrays],
    sources: bool = False,
    extra_train: Sequence = (),
) -> TaskData:
    """A `TaskData` from training and held-out photos and two view loaders.

    Splits validation and reference photos off the training photos
    (`split_photos`), appends `extra_train` to the training split, then
    loads each split's views.

    Args:
        name: Short task name (result files).
        description: One line for reports.
        teacher: The generator.
        key: Names the teacher (in the data key).
        train_photos: Photos to train on (validation and reference photos
            are drawn from them).
        held_out_photos: Photos for the final score only (not empty).
        views: How views are cut.
        seed: Seed of the splits.
        training_views: Photos -> `uint8` `(inputs, targets)` training views.
        central_views: Photos -> float `(inputs, teacher outputs)` central
            views.
        sources: Count each split's photos by built-in source.
        extra_train: Photos trained on only (synthetic images,
            `tgc.data.dead_leaves_photos`): never validation or reference
            photos, so the splits of the other photos stay as they were.
    """
    train, validation, reference = split_photos(
        train_photos, views.validation_photos, views.reference_photos, seed
    )
    train = [*train, *extra_train]
    splits = {
        "train": train,
        "validation": validation,
        "held_out": list(held_out_photos),
        "reference": reference,
    }
    names = {
        split: [f"{photo.source}/{photo.name}" for photo in photos]
        for split, photos in splits.items()
    }
    return TaskData(
        name=name,
        description=description,
        teacher=teacher,
        train=training_views(train),
        validation=central_views(validation) if validation else None,
        held_out=central_views(splits["held_out"]),
        reference=central_views(reference),
        photos={split: len(photos) for split, photos in splits.items()},
        photo_names=names,
        views=views,
        key=data_key(
            {"teacher": key, "views": views.description(), "seed": seed, **names}
        ),
        sources=(
            {s: tgc.data.count_by_source(p) for s, p in splits.items()}
            if sources
            else {}
        ),
        seed=seed,
    )
