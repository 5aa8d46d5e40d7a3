"""`tf.data` building blocks shared by the folder and built-in datasets.

Pairs (input, target) travel through the pipeline stacked on the channel axis
(`H x W x 6`), so one random crop and one flip apply to both halves. Every
random choice is stateless and derived from one per-element seed drawn from
`tf.data.Dataset.random`, so a given `seed` reproduces the same epochs.
"""

from __future__ import annotations

from collections.abc import Callable

import tensorflow as tf

AUTOTUNE = tf.data.AUTOTUNE


def decode(path: tf.Tensor) -> tf.Tensor:
    """Reads an image file as `uint8 (H, W, 3)` (grayscale/RGBA made RGB).

    Args:
        path: Scalar string tensor, the file's path.

    Returns:
        The decoded image.
    """
    image = tf.io.decode_image(
        tf.io.read_file(path), channels=3, dtype=tf.uint8, expand_animations=False
    )
    image.set_shape([None, None, 3])
    return image


def to_float(image: tf.Tensor) -> tf.Tensor:
    """`uint8` in [0, 255] -> `float32` in [-1, 1]."""
    return tf.cast(image, tf.float32) / 127.5 - 1.0


def resize(image: tf.Tensor, size: tf.Tensor | tuple[int, int]) -> tf.Tensor:
    """Bicubic resize (antialiased, like PIL's) of a float image in [-1, 1].

    Args:
        image: `(H, W, C)` float image.
        size: Target `(height, width)`.

    Returns:
        The resized image, clipped back to [-1, 1] (bicubic overshoots).
    """
    resized = tf.image.resize(image, size, method="bicubic", antialias=True)
    return tf.clip_by_value(resized, -1.0, 1.0)


def short_side_size(shape: tf.Tensor, short_side: int) -> tf.Tensor:
    """The `(height, width)` that scales `shape`'s short side to `short_side`.

    Args:
        shape: `int32` tensor `(H, W, ...)`.
        short_side: Target length of the shorter side.

    Returns:
        `int32 (2,)`: the new height and width (aspect kept, rounded).
    """
    hw = tf.cast(shape[:2], tf.float32)
    scale = short_side / tf.reduce_min(hw)
    return tf.maximum(tf.cast(tf.round(hw * scale), tf.int32), short_side)


def load_resize(
    image: tf.Tensor, load_size: int | None, keep_aspect: bool
) -> tf.Tensor:
    """Resizes to `load_size` x `load_size` (or short side, keeping the aspect).

    Args:
        image: `(H, W, C)` float image.
        load_size: Target size; `None` leaves the image as it is.
        keep_aspect: Scale the short side to `load_size` instead of squashing
            to a square (the reference code's `resize_and_crop` squashes).

    Returns:
        The resized image.
    """
    if load_size is None:
        return image
    if keep_aspect:
        return resize(image, short_side_size(tf.shape(image), load_size))
    return resize(image, (load_size, load_size))


def crop_flip(
    image: tf.Tensor,
    seed: tf.Tensor,
    crop_size: int | None,
    training: bool,
    flip: bool = True,
) -> tf.Tensor:
    """Random crop + horizontal flip (training) or center crop (evaluation).

    Args:
        image: `(H, W, C)` image, at least `crop_size` on each side.
        seed: `int64 (2,)` stateless seed of this element.
        crop_size: Side of the square crop; `None` keeps the whole image.
        training: Random crop and flip if True, else a center crop, no flip.
        flip: Whether training flips at all.

    Returns:
        The cropped (and maybe flipped) image, same channels.
    """
    crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    if crop_size is not None:
        if training:
            channels = tf.shape(image)[-1]
            image = tf.image.stateless_random_crop(
                image, tf.stack([crop_size, crop_size, channels]), crop_seed
            )
        else:
            shape = tf.shape(image)
            top = (shape[0] - crop_size) // 2
            left = (shape[1] - crop_size) // 2
            image = image[top : top + crop_size, left : left + crop_size]
    if training and flip:
        image = tf.image.stateless_random_flip_left_right(image, flip_seed)
    return image


def zoom_crop(
    image: tf.Tensor, seed: tf.Tensor, crop_size: int, training: bool
) -> tf.Tensor:
    """A square crop of random side in `[crop_size, short side]`, resized.

    Training: the crop's side is uniform between `crop_size` (pixels 1:1) and
    the image's short side (the whole scene, downscaled); its position is
    uniform; it is resized to `crop_size` and flipped with probability 1/2.
    Evaluation: the central square of the full short side, resized, no flip.

    Args:
        image: `(H, W, C)` float image with a short side >= `crop_size`.
        seed: `int64 (2,)` stateless seed of this element.
        crop_size: Output side.
        training: Random or central crop.

    Returns:
        `(crop_size, crop_size, C)` image.
    """
    side_seed, top_seed, left_seed, flip_seed = tf.unstack(
        tf.random.experimental.stateless_split(seed, 4)
    )
    shape = tf.shape(image)
    short = tf.minimum(shape[0], shape[1])
    if training:
        side = tf.random.stateless_uniform(
            [], side_seed, crop_size, short + 1, dtype=tf.int32
        )
        top = tf.random.stateless_uniform(
            [], top_seed, 0, shape[0] - side + 1, dtype=tf.int32
        )
        left = tf.random.stateless_uniform(
            [], left_seed, 0, shape[1] - side + 1, dtype=tf.int32
        )
    else:
        side = short
        top = (shape[0] - side) // 2
        left = (shape[1] - side) // 2
    crop = image[top : top + side, left : left + side]
    crop = resize(crop, (crop_size, crop_size))
    crop.set_shape([crop_size, crop_size, image.shape[-1]])
    if training:
        crop = tf.image.stateless_random_flip_left_right(crop, flip_seed)
    return crop


def colour_jitter(image: tf.Tensor, seed: tf.Tensor, strength: float) -> tf.Tensor:
    """Random brightness, contrast, saturation and hue of a float image.

    With a teacher run on the jittered image, the pair stays exact and the
    student sees colours beyond those of a few photos.

    Args:
        image: `(H, W, 3)` float image in [-1, 1].
        seed: `int64 (2,)` stateless seed.
        strength: 0 (no change) to 1: brightness shifts up to +-0.25 (of the
            [-1, 1] range), contrast and saturation factors in [1 - s/2,
            1 + s/2] and [1 - s, 1 + s], hue shifts up to +-0.1 turn, all
            scaled by `strength`.

    Returns:
        The jittered image, clipped to [-1, 1].

    Raises:
        ValueError: If `strength` is outside [0, 1].
    """
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"colour jitter strength must be in [0, 1], got {strength}.")
    if strength == 0.0:
        return image
    seeds = tf.unstack(tf.random.experimental.stateless_split(seed, 4))
    unit = (image + 1.0) / 2.0
    unit = tf.image.stateless_random_hue(unit, 0.1 * strength, seeds[0])
    unit = tf.image.stateless_random_saturation(
        unit, 1.0 - strength, 1.0 + strength, seeds[1]
    )
    unit = tf.image.stateless_random_contrast(
        unit, 1.0 - strength / 2, 1.0 + strength / 2, seeds[2]
    )
    unit = tf.image.stateless_random_brightness(unit, 0.125 * strength, seeds[3])
    return tf.clip_by_value(unit * 2.0 - 1.0, -1.0, 1.0)


def apply_tone(image: tf.Tensor, gains: tf.Tensor, gammas: tf.Tensor) -> tf.Tensor:
    """Per-channel gains, then per-channel gammas, of a float image.

    On the image mapped to [0, 1]: `clip(unit * gains, 0, 1) ** gammas`,
    mapped back to [-1, 1].

    Args:
        image: `(H, W, 3)` float image in [-1, 1].
        gains: `(3,)` positive gain of each channel (white balance).
        gammas: `(3,)` positive exponent of each channel.

    Returns:
        The image with its tone changed, in [-1, 1].
    """
    unit = tf.clip_by_value((image + 1.0) / 2.0 * gains, 0.0, 1.0)
    return tf.clip_by_value(tf.pow(unit, gammas) * 2.0 - 1.0, -1.0, 1.0)


def check_strengths(strengths: dict[str, float]) -> None:
    """Raises `ValueError` naming the first strength outside [0, 1].

    Args:
        strengths: `{name: strength}` of augmentations.
    """
    for name, strength in strengths.items():
        if not 0.0 <= strength <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {strength}.")


def draw_tone(
    seed: tf.Tensor,
    white_balance: float = 0.0,
    gamma: float = 0.0,
    channel_gamma: float = 0.0,
) -> tuple[tf.Tensor, tf.Tensor]:
    """Random per-channel gains and gammas for `apply_tone` (stateless).

    Args:
        seed: `int64 (2,)` stateless seed.
        white_balance: 0 to 1: each channel's log2 gain is drawn uniformly
            in [-s, s], then the three are centred (their mean subtracted),
            so the gains multiply to 1: a colour cast, not an exposure
            change (each gain within 2 ** (+-4s/3)).
        gamma: 0 to 1: one log2 gamma per image, uniform in [-s, s] (s=1:
            gammas in [0.5, 2]; above 1 darkens the mid-tones).
        channel_gamma: 0 to 1: each channel's log2 gamma moves by its own
            uniform draw in [-s, s] on top of the image's.

    Returns:
        `(gains, gammas)`, float32 `(3,)` each; all ones when every
        strength is 0.

    Raises:
        ValueError: If a strength is outside [0, 1].
    """
    check_strengths(
        {
            "white_balance jitter": white_balance,
            "gamma jitter": gamma,
            "channel_gamma jitter": channel_gamma,
        }
    )
    gain_seed, gamma_seed, channel_seed = tf.unstack(
        tf.random.experimental.stateless_split(seed, 3)
    )
    log_gains = tf.random.stateless_uniform([3], gain_seed, -1.0, 1.0) * white_balance
    log_gains -= tf.reduce_mean(log_gains)
    log_gamma = tf.random.stateless_uniform([], gamma_seed, -1.0, 1.0) * gamma
    log_gammas = log_gamma + channel_gamma * tf.random.stateless_uniform(
        [3], channel_seed, -1.0, 1.0
    )
    return tf.pow(2.0, log_gains), tf.pow(2.0, log_gammas)


def tone_jitter(
    image: tf.Tensor,
    seed: tf.Tensor,
    white_balance: float = 0.0,
    gamma: float = 0.0,
    channel_gamma: float = 0.0,
) -> tf.Tensor:
    """Random white balance (per-channel gains) and gamma of a float image.

    What `colour_jitter` does not vary; like it, run before the teacher, so
    the pair stays exact. `draw_tone` draws the factors, `apply_tone`
    applies them.

    Args:
        image: `(H, W, 3)` float image in [-1, 1].
        seed: `int64 (2,)` stateless seed.
        white_balance: Strength of the per-channel gains, [0, 1].
        gamma: Strength of the image's gamma, [0, 1].
        channel_gamma: Strength of each channel's own gamma, [0, 1].

    Returns:
        The image, in [-1, 1]; unchanged when every strength is 0.

    Raises:
        ValueError: If a strength is outside [0, 1].
    """
    gains, gammas = draw_tone(seed, white_balance, gamma, channel_gamma)
    if white_balance == gamma == channel_gamma == 0.0:
        return image
    return apply_tone(image, gains, gammas)


def replayable(make: Callable[[], tf.data.Dataset]) -> tf.data.Dataset:
    """A dataset that `make()` builds anew for every iterator.

    A `shuffle(..., reshuffle_each_iteration=True)` or a
    `Dataset.random(..., rerandomize_each_iteration=True)` draws a new seed
    from a generator its dataset object owns, shared by all its iterators,
    whenever an iteration (or a `repeat` epoch) starts. Prefetching threads
    start epochs ahead of what is read, and an iterator dropped early (a
    `fit` of a few steps) has drawn as many seeds as its threads reached:
    the next iterator's order depends on thread timing. Built inside the
    returned dataset's iteration, each iterator gets its own generator,
    so every iterator replays the stream the first one reads: a training
    phase, a resumed run and a second run see the same batches.

    Args:
        make: Builds the dataset (repeating, if the stream should go on:
            a `repeat` outside would replay the first epoch).

    Returns:
        The dataset.
    """
    return tf.data.Dataset.range(1).flat_map(lambda _: make())


def with_seeds(dataset: tf.data.Dataset, seed: int | None) -> tf.data.Dataset:
    """Zips each element with its own `int64 (2,)` stateless seed.

    The seeds change from one iteration (epoch) to the next and are the same
    for the same `seed`.

    Args:
        dataset: Any dataset.
        seed: Global seed; `None` for a nondeterministic stream.

    Returns:
        A dataset of `(element, seed)`.
    """
    seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True)
    return tf.data.Dataset.zip(dataset, seeds.batch(2))


def finish(
    examples: Callable[[], tf.data.Dataset],
    batch_size: int,
    drop_remainder: bool,
    repeat: bool,
    count: int,
) -> tf.data.Dataset:
    """Repeat (optional), batch, prefetch; checks the batch can be filled.

    Repeating, the examples are built by every iterator (`replayable`):
    each iterator reads the same epochs.

    Args:
        examples: Builds the per-example dataset (shuffled, seeded).
        batch_size: Examples per batch.
        drop_remainder: Drop the last partial batch (XLA compiles once per
            batch shape).
        repeat: Repeat forever.
        count: Examples per epoch, for the check.

    Returns:
        The batched dataset.

    Raises:
        ValueError: If `batch_size < 1`, or if an epoch of `count` examples
            cannot fill one batch and partial batches are dropped.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    if drop_remainder and not repeat and count < batch_size:
        raise ValueError(
            f"Only {count} examples per epoch for batch_size={batch_size} with "
            "drop_remainder=True: every batch would be dropped. Lower "
            "batch_size, set repeat=True or drop_remainder=False."
        )
    dataset = replayable(lambda: examples().repeat()) if repeat else examples()
    return dataset.batch(batch_size, drop_remainder=drop_remainder).prefetch(AUTOTUNE)
