"""Synthetic training photos: dead-leaves images, drawn from a seed, offline.

A dead-leaves image is a background under many opaque discs dropped one on
another, their radii following a power law (p(r) ~ r^-3): the occlusion
model of natural images (Lee, Mumford and Huang 2001), whose statistics
(a scale-invariant power spectrum, flat regions with sharp edges) match
photos'. Drawn with uniformly random hues and brightness, they hold
what photos have few of: large flat areas of saturated colour, and every
colour next to every other. A teacher labels their views as it labels a
photo's (`training.tasks`), so they add training data without any file.

A fraction of the images can be given a circular field of view: the
picture inside a soft-edged disc, darkening toward its rim, black around
it, as a microscope, telescope, endoscope or fundus camera frames it; and
a fraction can be drawn in one hue.

```python
import tfgancompress as tgc

photos = tgc.data.dead_leaves_photos(200, seed=17)   # PNGs, written once
image = tgc.data.dead_leaves_image(256, seed=0)      # uint8 (256, 256, 3)
```
"""

from __future__ import annotations

import colorsys
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from tfgancompress import atomic
from tfgancompress.data.builtin import Photo
from tfgancompress.data.pairs import default_cache_dir

SOURCE = "dead-leaves"
MIN_RADIUS = 3.0
# The largest disc's radius, as a fraction of the image side.
MAX_RADIUS_FRACTION = 0.43
DISCS = (30, 1500)
BLUR_SIGMA = 0.7
NOISE_STD = 2.0
# The width of the hues of a one-hue image (`dead_leaves_photos`' `one_hue`).
ONE_HUE_WIDTH = 0.08


def _power_law_radii(rng: np.random.Generator, count: int, r_max: float) -> np.ndarray:
    """`count` radii in [MIN_RADIUS, r_max] with density ~ r^-3 (inverse CDF)."""
    u = rng.random(count)
    low, high = MIN_RADIUS**-2, r_max**-2
    return (low - u * (low - high)) ** -0.5


def _random_colour(
    rng: np.random.Generator, hue_band: tuple[float, float] | None = None
) -> np.ndarray:
    """An RGB colour in [0, 255]: uniform hue and brightness, mostly saturated.

    `hue_band`: `(centre, width)` of the hues (on the unit hue circle), or
    `None` for any hue.
    """
    hue, value = rng.random(), rng.uniform(0.03, 1.0)
    if hue_band is not None:
        hue = (hue_band[0] + hue_band[1] * (hue - 0.5)) % 1.0
    saturation = np.sqrt(rng.random())
    return np.array(colorsys.hsv_to_rgb(hue, saturation, value)) * 255.0


def _field_of_view(rng: np.random.Generator, size: int) -> np.ndarray:
    """A soft disc mask `(size, size, 1)`: 1 inside, darkening to 0 outside."""
    centre = size / 2 + rng.uniform(-0.1, 0.1, 2) * size
    radius = rng.uniform(0.3, 0.5) * size
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    r = np.hypot(x - centre[0], y - centre[1]) / radius
    inside = 1.0 / (1.0 + np.exp((r - 1.0) / 0.02))
    falloff = 1.0 - rng.uniform(0.2, 0.7) * np.clip(r, 0.0, 1.0) ** 2
    return (inside * falloff)[..., None]


def dead_leaves_image(
    size: int,
    seed: int | np.random.Generator,
    field_of_view: bool = False,
    hue_band: tuple[float, float] | None = None,
) -> np.ndarray:
    """One dead-leaves image (see the module docstring).

    Args:
        size: Side of the square image, in pixels (>= 16).
        seed: Its seed (or a generator to draw from).
        field_of_view: Frame it in a circular field of view on black.
        hue_band: `(centre, width)`: every colour's hue within `width / 2`
            of `centre` (hues in [0, 1)); `None`: any hue.

    Returns:
        `uint8 (size, size, 3)`.

    Raises:
        ValueError: If `size < 16`.
    """
    if size < 16:
        raise ValueError(f"A dead-leaves image needs size >= 16, got {size}.")
    rng = np.random.default_rng(seed)
    image = np.empty((size, size, 3), np.float32)
    image[:] = _random_colour(rng, hue_band)
    count = int(rng.integers(DISCS[0], DISCS[1] + 1))
    radii = _power_law_radii(rng, count, MAX_RADIUS_FRACTION * size)
    centres = rng.uniform(0, size, (count, 2))
    for (cx, cy), radius in zip(centres, radii, strict=True):
        x0, x1 = max(0, int(cx - radius)), min(size, int(cx + radius) + 1)
        y0, y1 = max(0, int(cy - radius)), min(size, int(cy + radius) + 1)
        if x0 >= x1 or y0 >= y1:
            continue
        y, x = np.ogrid[y0:y1, x0:x1]
        inside = (x + 0.5 - cx) ** 2 + (y + 0.5 - cy) ** 2 <= radius**2
        image[y0:y1, x0:x1][inside] = _random_colour(rng, hue_band)
    if field_of_view:
        image *= _field_of_view(rng, size)
    blurred = Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).filter(
        ImageFilter.GaussianBlur(BLUR_SIGMA)
    )
    noisy = np.asarray(blurred, np.float32) + rng.normal(0, NOISE_STD, image.shape)
    return np.clip(np.round(noisy), 0, 255).astype(np.uint8)


def dead_leaves_photos(
    count: int,
    *,
    size: int = 256,
    seed: int = 17,
    field_of_view: float = 0.0,
    one_hue: float = 0.0,
    folder: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> list[Photo]:
    """`count` dead-leaves images as photos, written as PNGs once and reused.

    Image `i` depends on `(seed, i)` only: a larger `count` keeps the
    first images. Which images get a circular field of view is drawn from
    the same pair, so a fraction `field_of_view` of them (in expectation)
    do; which are drawn in one hue, from `(seed, i, 1)`, so images of
    other hues stay as they were.

    Args:
        count: How many images (>= 0).
        size: Their side, in pixels.
        seed: Seed of the set.
        field_of_view: Fraction of the images framed in a circular field of
            view on black, in [0, 1].
        one_hue: Fraction of the images whose colours all lie within
            `ONE_HUE_WIDTH / 2` of one random hue (as in a sunset, under
            water or a stained slide), in [0, 1].
        folder: Where the PNGs go (default: `synthetic/dead-leaves-...`
            under `cache_dir`); files already there are reused.
        cache_dir: Cache root of the default `folder` (default
            `default_cache_dir()`, as for the teacher's views).

    Returns:
        `Photo`s of source `"dead-leaves"`, named `0000`, `0001`, ...,
        with `-framed` and `-hue` for the framed and one-hue images (a
        task's data key follows the names).

    Raises:
        ValueError: On a negative count or a fraction outside [0, 1].
    """
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}.")
    for name, fraction in (("field_of_view", field_of_view), ("one_hue", one_hue)):
        if not 0.0 <= fraction <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {fraction}.")
    if not count:
        return []
    if folder is None:
        name = f"dead-leaves-{size}px-seed{seed}"
        if field_of_view:
            name += f"-fov{field_of_view:g}"
        if one_hue:
            name += f"-hue{one_hue:g}"
        folder = Path(cache_dir or default_cache_dir()) / "synthetic" / name
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    photos = []
    for index in range(count):
        rng = np.random.default_rng([seed, index])
        framed = bool(rng.random() < field_of_view)
        hue_rng = np.random.default_rng([seed, index, 1])
        one = hue_rng.random() < one_hue
        band = (hue_rng.random(), ONE_HUE_WIDTH) if one else None
        # The name tells the kind: tasks key their data on photo names.
        name = f"{index:04d}" + ("-framed" if framed else "") + ("-hue" if one else "")
        path = folder / f"{name}.png"
        if not path.is_file():
            image = dead_leaves_image(size, rng, framed, band)
            with atomic.atomic_path(path) as temporary:
                Image.fromarray(image).save(temporary)
        photos.append(Photo(SOURCE, name, path))
    return photos
