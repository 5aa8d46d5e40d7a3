"""Built-in colour photos that install offline, and crops of them as `tf.data`.

Sources (each photo carries its source; hold evaluation photos out **by
source**, never by crop, see `split_by_source`):

| source | where | photos |
|---|---|---|
| `opencv-doc` | `/usr/share/doc/opencv-doc/examples/data` (Debian, installed) | 28 |
| `scikit-image` | `skimage/data` | 9 |
| `scikit-learn` | `sklearn/datasets/images` (`load_sample_images`) | 2 |
| `matplotlib` | `mpl-data/sample_data` (`cbook.get_sample_data`) | 1 |
| `gcompris-qt-data` | `usr/share/gcompris-qt/rcc/*.rcc` (WebP in Qt bundles) | 234 |
| `scratch` | `usr/share/scratch/Media/Backgrounds` (480x360) | 51 |
| `kphotoalbum` | `usr/share/kphotoalbum/demo` (800x600, people) | 23 |
| `tuxpaint-data` | `usr/share/tuxpaint/templates` | 17 |
| `lomiri-wallpapers-16.04` | `usr/share/backgrounds` | 13 |
| `lxqt-themes` | `usr/share/lxqt/wallpapers` | 9 |
| `plasma-workspace-wallpapers` | `usr/share/wallpapers/*/contents/images` | 8 |
| `palapeli-data` | `usr/share/palapeli/collection` | 5 |
| **all** | | **400** |

The extended set (`photo_set("extended")`, `--photo_set=extended`; opt-in,
never the default) adds five more Debian packages, unpacked by `make
photos-extended` (~390 MB download) into the same folder:

| source | where | photos |
|---|---|---|
| `mate-backgrounds` | `usr/share/backgrounds/mate/nature` | 12 |
| `lomiri-wallpapers-20.04` | `usr/share/backgrounds` | 2 |
| `stellarium-data` | `usr/share/stellarium/nebulae/default` (deep sky) | 162 |
| `kalzium-data` | `usr/share/kalzium/data/toolpics` (laboratory) | 16 |
| `libjxl-testdata` | `usr/share/libjxl-testdata` (JPEG XL's test photos) | 5 |
| **extended** | | **597** |

opencv-doc is installed by the project's set-up where apt-get exists (as
root). The last eight are Debian packages the set-up (`make system-deps`)
*unpacks* with `apt-get download` + `dpkg-deb -x`, without installing them
(no dependencies: a full `scratch` install pulls a virtual machine, and
`kphotoalbum` a desktop), into `default_photo_dir()`, one folder per
package (its own file tree, `usr/share/doc/<package>/copyright` included:
several licences are share-alike, so the photos are never committed). The
pip sources come with the `data` extra. A source that is not there is left
out (logged). `builtin_photos()` lists what is there; `count_by_source`
counts a list by source.

GCompris keeps its images as WebP files inside Qt resource bundles: a photo
of it is `Photo(path=<bundle>.rcc, member=<resource path>)`, read with
`tfgancompress.data.rcc`.

The photos are chosen **by name** (`catalogue.py`, where each source's
exclusions are named), after looking at every image: real colour camera
photographs only, whole scenes or objects in their surroundings. Left out:

* drawings, paintings, logos, charts, renders and abstract wallpapers;
* text (scans, signs, toy blocks with letters);
* grayscale images: a kept photo's Hasler-Suesstrunk colourfulness at a
  256-pixel short side is > 12 (a gray image scores 0);
* cut-outs: objects on a blank background (of the Debian photos, none has
  60 % or more of its border pixels pure white, all channels >= 245);
* small images: a Debian photo's short side is >= 200 pixels;
* near-duplicates across sources and activities: a photo whose perceptual
  hash (`duplicates.perceptual_hash`) is within 10 of 63 bits of a kept
  photo's; the smaller copy goes (GCompris `categorization`'s `colosseum`,
  `greatPyramid`, `brandenburgGate` and `details`' `Neuschwanstein`, copies
  of `explore_monuments` photos). Unrelated photos differ in 20-40 bits.

Stereo/viewpoint pairs of one source (opencv-doc's `aloeL/R`, `left/right`,
`leuvenA/B`, `graf1/3`, `rubberwhale1/2`, `ela_original/modified`,
scikit-image's `motorcycle_left/right`, KPhotoAlbum's `bar55`/`bar55_2`) are
kept: different photographs of one scene, always on the same side of a
split by source.

Photos are read with their EXIF orientation applied, plus the rotations
KPhotoAlbum's album keeps in its database (`catalogue.ROTATIONS`); palette,
grayscale (16-bit scaled to 8), CMYK and alpha images are converted to RGB
(alpha dropped, as `folders` does).

Default split: evaluate on the 9 scikit-image photos (astronaut, cat,
coffee, rocket, motorcycle stereo pair, and three scientific images: Hubble
deep field, immunohistochemistry, retina), as the earlier 31-photo runs did,
so results stay comparable; train on all the other sources (391 photos with
every source present; 31 with only opencv-doc and the pip packages, 3
without opencv-doc).
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import io
import os
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import tensorflow as tf
from absl import logging
from PIL import Image, ImageOps

from tfgancompress.data import catalogue, pipeline, rcc

OPENCV_DOC_DIR = Path("/usr/share/doc/opencv-doc/examples/data")
SOURCES = tuple(catalogue.PHOTOS)
DEBIAN_SOURCES = tuple(catalogue.FOLDERS)
EXTRA_SOURCES = tuple(catalogue.EXTRA_PHOTOS)
# Named sets of sources: "standard" is the default everywhere (and what
# every cached benchmark row was made of); "extended" adds the extra sources.
PHOTO_SETS = {"standard": SOURCES, "extended": SOURCES + EXTRA_SOURCES}
DEFAULT_PHOTO_SET = "standard"
DEFAULT_HOLDOUT = ("scikit-image",)
_ALL_PHOTOS = {**catalogue.PHOTOS, **catalogue.EXTRA_PHOTOS}
_ALL_FOLDERS = {**catalogue.FOLDERS, **catalogue.EXTRA_FOLDERS}
_PHOTO_DIR_ENV = "TFGANCOMPRESS_PHOTOS"


def default_photo_dir() -> Path:
    """Where the set-up unpacks the Debian photo packages.

    `$TFGANCOMPRESS_PHOTOS`, else `$XDG_DATA_HOME/tfgancompress/photos`, else
    `~/.local/share/tfgancompress/photos` (the Makefile's `PHOTO_DIR`).
    """
    if os.environ.get(_PHOTO_DIR_ENV):
        return Path(os.environ[_PHOTO_DIR_ENV])
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / "tfgancompress" / "photos"


@dataclasses.dataclass(frozen=True)
class Photo:
    """One built-in photo.

    Attributes:
        source: Where it comes from, one of `PHOTO_SETS["extended"]`.
        name: Its name, unique within the source (`"astronaut"`).
        path: The image file, or the Qt resource bundle holding it.
        member: The image's resource path inside the bundle `path`, or
            `None` for a plain file.
        rotation: Degrees (0, 90, 180, 270) to turn the image clockwise
            after its EXIF orientation is applied.
    """

    source: str
    name: str
    path: Path
    member: str | None = None
    rotation: int = 0

    def read_bytes(self) -> bytes:
        """The encoded image (the file, or the bundle's member)."""
        if self.member is None:
            return self.path.read_bytes()
        return rcc.read_file(self.path, self.member)

    def digest(self) -> str:
        """A short hash of the image's bytes (cache keys follow the content)."""
        content = hashlib.sha1(self.read_bytes())
        if self.rotation:
            content.update(f"rotation={self.rotation}".encode())
        return content.hexdigest()[:10]


def _source_dir(
    source: str, opencv_dir: str | os.PathLike, photo_dir: str | os.PathLike
) -> Path | None:
    """The folder holding a source's photos, or None if not there."""
    if source == "opencv-doc":
        folder = Path(opencv_dir)
    elif source in _ALL_FOLDERS:
        folder = Path(photo_dir) / source / _ALL_FOLDERS[source]
    else:
        package, sub = catalogue.PACKAGE_DIRS[source]
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            return None
        folder = Path(list(spec.submodule_search_locations)[0]) / sub
    return folder if folder.is_dir() else None


def _check_sources(sources: Sequence[str]) -> None:
    known = PHOTO_SETS["extended"]
    unknown = sorted(set(sources) - set(known))
    if unknown:
        raise ValueError(f"Unknown photo source(s) {unknown}; known: {known}.")


def photo_set(name: str) -> tuple[str, ...]:
    """The sources of a named photo set (`PHOTO_SETS`).

    Raises:
        ValueError: If the name is not one of `PHOTO_SETS`.
    """
    if name not in PHOTO_SETS:
        raise ValueError(f"Unknown photo set {name!r}; known: {', '.join(PHOTO_SETS)}.")
    return PHOTO_SETS[name]


def _bundle_files(bundle: Path) -> set[str] | None:
    """The resource paths in a Qt bundle; None (logged) if it is unreadable."""
    try:
        return set(rcc.list_files(bundle))
    except (OSError, rcc.ResourceError) as e:
        logging.warning("Photo bundle %s is unreadable (%s): left out.", bundle, e)
        return None


def _source_photos(source: str, folder: Path) -> list[Photo]:
    """The catalogued photos of one source found in `folder` (missing: logged)."""
    photos, bundles, missing = [], {}, []
    for name, location in _ALL_PHOTOS[source].items():
        rotation = catalogue.ROTATIONS.get((source, name), 0)
        if ".rcc:" in location:
            bundle_name, member = location.split(":", 1)
            bundle = folder / bundle_name
            if bundle not in bundles:
                bundles[bundle] = _bundle_files(bundle) if bundle.is_file() else None
            found = bundles[bundle] is not None and member in bundles[bundle]
            photo = Photo(source, name, bundle, member, rotation)
            where = f"{bundle}:{member}"
        else:
            photo = Photo(source, name, folder / location, None, rotation)
            found, where = photo.path.is_file(), photo.path
        if found:
            photos.append(photo)
        else:
            missing.append(str(where))
    if missing:
        shown = ", ".join(missing[:3]) + (", ..." if len(missing) > 3 else "")
        logging.warning(
            "Photo source %s: %d of its %d catalogued photos are missing, left out: %s",
            source,
            len(missing),
            len(_ALL_PHOTOS[source]),
            shown,
        )
    return photos


def builtin_photos(
    sources: Sequence[str] | None = None,
    *,
    opencv_dir: str | os.PathLike = OPENCV_DOC_DIR,
    photo_dir: str | os.PathLike | None = None,
) -> list[Photo]:
    """The built-in colour photos of the sources that are there.

    A source that is not there is left out (logged); so are catalogued
    files missing from a source that is (one warning per source, with their
    count and the first paths).

    Args:
        sources: Sources to include (default: `SOURCES`, the standard
            set; `photo_set("extended")` adds `EXTRA_SOURCES`).
        opencv_dir: Where Debian's `opencv-doc` puts its example images.
        photo_dir: Where the set-up unpacked the Debian photo packages
            (default: `default_photo_dir()`).

    Returns:
        The photos, ordered by source (as in `PHOTO_SETS["extended"]`) and
        as catalogued.

    Raises:
        ValueError: If a source name is unknown, or no photo is found.

    Example:

    >>> photos = builtin_photos()
    >>> count_by_source(photos)["scikit-image"]
    9
    """
    sources = SOURCES if sources is None else tuple(sources)
    _check_sources(sources)
    photo_dir = default_photo_dir() if photo_dir is None else photo_dir
    photos = []
    for source in PHOTO_SETS["extended"]:
        if source not in sources:
            continue
        folder = _source_dir(source, opencv_dir, photo_dir)
        if folder is None:
            logging.info("Photo source %s is not installed: left out.", source)
            continue
        photos.extend(_source_photos(source, folder))
    if not photos:
        raise ValueError(
            f"No built-in photos found for sources {sources}: install the data "
            "extra (`pip install tfgancompress[data]`) or run `make system-deps`."
        )
    return photos


def count_by_source(photos: Sequence[Photo]) -> dict[str, int]:
    """How many of `photos` each source gave, in `PHOTO_SETS["extended"]` order.

    Other sources (synthetic photos, `synthetic`) follow, in order of first
    appearance.

    Example:

    >>> train, held_out = split_by_source(builtin_photos())
    >>> print(len(train), "training photos:", count_by_source(train))
    """
    counts = {source: 0 for source in PHOTO_SETS["extended"]}
    for photo in photos:
        counts[photo.source] = counts.get(photo.source, 0) + 1
    return {source: count for source, count in counts.items() if count}


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


_HIGH_DEPTH_GRAY = ("I;16", "I;16B", "I;16L", "I;16N", "I")


def to_rgb(image: Image.Image) -> Image.Image:
    """A Pillow image as 8-bit RGB, upright.

    The EXIF orientation is applied; 16-bit grayscale is scaled to 8 bits
    (Pillow's own conversion clips it at 255); alpha is dropped; palette,
    grayscale and CMYK images are converted.
    """
    image = ImageOps.exif_transpose(image)
    if image.mode in _HIGH_DEPTH_GRAY:
        values = np.asarray(image, np.float64) / 257.0
        image = Image.fromarray(np.clip(np.round(values), 0, 255).astype(np.uint8))
    return image.convert("RGB")


def open_photo(photo: Photo | str | os.PathLike) -> Image.Image:
    """A photo as an upright 8-bit RGB Pillow image at its full size.

    Applies `to_rgb` and the photo's own `rotation`.

    Raises:
        OSError: If the image cannot be read or decoded (the message names
            the file and, for a bundle, the member).
    """
    photo = photo if isinstance(photo, Photo) else Photo("file", "", Path(photo))
    where = photo.path if photo.member is None else f"{photo.path}:{photo.member}"
    try:
        with Image.open(io.BytesIO(photo.read_bytes())) as image:
            image = to_rgb(image)
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise OSError(f"Cannot read the photo {where}: {e}") from e
    if photo.rotation:
        image = image.rotate(-photo.rotation, expand=True)
    return image


def _once_per_index(load: Callable[[int], np.ndarray]) -> Callable[[int], np.ndarray]:
    """`load` memoised by index: each index is loaded once.

    tf.data's parallel map can ask for one index from two threads at once,
    where `functools.cache` would load it twice.
    """
    cache: dict[int, np.ndarray] = {}
    locks: dict[int, threading.Lock] = {}
    guard = threading.Lock()

    def loaded(i: int) -> np.ndarray:
        with guard:
            lock = locks.setdefault(i, threading.Lock())
        with lock:
            if i not in cache:
                cache[i] = load(i)
            return cache[i]

    return loaded


def load_photo(photo: Photo | str | os.PathLike, short_side: int) -> np.ndarray:
    """An RGB `uint8 (H, W, 3)` photo resized so its short side is `short_side`.

    Args:
        photo: A `Photo` or an image path.
        short_side: Target short side (multiple of 4; both sides end up
            multiples of 4, see `fit_size`).

    Returns:
        The upright photo (`open_photo`), resized with Pillow's Lanczos.
    """
    image = open_photo(photo)
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
    return _crops(
        lambda i: arrays[i],
        len(arrays),
        arrays[0].shape[-1],
        crop_size=crop_size,
        crops_per_photo=crops_per_photo,
        batch_size=batch_size,
        training=training,
        seed=seed,
        repeat=repeat,
        drop_remainder=drop_remainder,
    )


def _crops(
    image: Callable[[int], np.ndarray],
    images: int,
    channels: int,
    *,
    crop_size: int,
    crops_per_photo: int,
    batch_size: int,
    training: bool,
    seed: int | None,
    repeat: bool,
    drop_remainder: bool | None,
) -> tf.data.Dataset:
    """`crops_dataset` of `images` images, the `i`-th given by `image(i)`.

    `image` runs in `tf.data` (as a NumPy function) when a crop needs it, so
    images can be loaded on first use instead of all up front.
    """
    drop_remainder = training if drop_remainder is None else drop_remainder
    count = images * (crops_per_photo if training else 1)

    def crop(index, element_seed):
        pixels = tf.numpy_function(
            lambda i: image(int(i)), [index % images], tf.uint8, stateful=False
        )
        pixels.set_shape([None, None, channels])
        out = pipeline.zoom_crop(
            pipeline.to_float(pixels), element_seed, crop_size, training
        )
        if channels == 3:
            return out
        return out[..., :3], out[..., 3:]

    def examples():
        indices = tf.data.Dataset.range(count)
        if training:
            indices = indices.shuffle(count, seed=seed, reshuffle_each_iteration=True)
        return pipeline.with_seeds(indices, seed).map(
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
    whole short side, resized, one per photo. A photo is loaded the first
    time a crop needs it, then kept: a few crops of a large split read only
    a few photos.

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
    if crops_per_photo < 1:
        raise ValueError(f"crops_per_photo must be >= 1, got {crops_per_photo}.")
    training = split != "eval" if training is None else training
    chosen = select(split, holdout, opencv_dir)

    return _crops(
        _once_per_index(lambda i: load_photo(chosen[i], load_size)),
        len(chosen),
        3,
        crop_size=crop_size,
        crops_per_photo=crops_per_photo,
        batch_size=batch_size,
        training=training,
        seed=seed,
        repeat=repeat,
        drop_remainder=drop_remainder,
    )
