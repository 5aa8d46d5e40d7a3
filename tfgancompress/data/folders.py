"""Image folders as `tf.data` pipelines, like the pix2pix/CycleGAN reference code.

* `paired_dataset("AB_folder")`: pix2pix "AB" images, A on the left half and
  B on the right; or `paired_dataset(("A_folder", "B_folder"))`: two aligned
  folders whose files are matched by name (stem). The same crop and flip
  apply to A and B.
* `unpaired_dataset("A_folder", "B_folder")`: CycleGAN's unaligned folders,
  shuffled independently; an epoch lasts as long as the larger folder.

Training transform (reference `resize_and_crop`): resize to `load_size`
(bicubic), random crop `crop_size`, random horizontal flip. Evaluation
(`training=False`): resize, center crop, no flip, no shuffle. Images come out
as `float32` NHWC in [-1, 1], as `(input, target)` tuples.

Every file is checked with Pillow before TensorFlow reads it (`scan_images`):
header, format and size, plus a full decode at 1/8 scale for JPEG and the
chunk checksums for PNG, so a truncated file is found here, named, and
skipped (counted and logged) instead of stopping training mid-epoch;
`strict=True` turns every skip into an error. Grayscale, palette and RGBA
images are converted to RGB (alpha dropped), 16-bit PNGs to 8 bits (the high
byte of each sample, as TensorFlow decodes them); both are counted in the
log. A folder (or subfolder) that cannot be listed is an error naming it,
never silently empty.
"""

from __future__ import annotations

import collections
import dataclasses
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import tensorflow as tf
from absl import logging
from PIL import Image

from tfgancompress.data import pipeline

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")
_TF_FORMATS = ("JPEG", "PNG", "BMP", "GIF")
_GRAY_MODES = ("1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F")
_ALPHA_MODES = ("RGBA", "RGBa", "LA", "La", "PA")
_LISTED = 10


class BadImageError(ValueError):
    """An image file that cannot be used (unreadable, wrong size, ...)."""


@dataclasses.dataclass(frozen=True)
class ImageInfo:
    """One checked image file.

    Attributes:
        path: The file.
        width: Width in pixels.
        height: Height in pixels.
        mode: Pillow mode before conversion (`"RGB"`, `"L"`, `"RGBA"`, ...).
        bit_depth: Bits per sample in the file (16 for 16-bit PNGs, else 8).
    """

    path: Path
    width: int
    height: int
    mode: str
    bit_depth: int = 8


@dataclasses.dataclass
class FolderScan:
    """The result of checking an image folder with `scan_images`.

    Attributes:
        folder: The folder.
        images: Usable images, sorted by path.
        skipped: Unusable image files and why, in scan order.
        ignored: Files without an image extension (not read).
        converted: How many usable images will be converted to 8-bit RGB,
            per kind (`"grayscale"`, `"alpha"`, `"palette"`, `"CMYK"`,
            `"16-bit"`; an image may count under two kinds).
    """

    folder: Path
    images: list[ImageInfo]
    skipped: dict[Path, str]
    ignored: list[Path]
    converted: dict[str, int]


def _png_bit_depth(path: Path) -> int:
    """The bit depth in a PNG's IHDR chunk (8 if the header is unusual)."""
    with open(path, "rb") as file:
        head = file.read(25)
    if len(head) == 25 and head[12:16] == b"IHDR":
        return head[24]
    return 8


def _inspect(path: Path) -> ImageInfo:
    """Opens and checks one file with Pillow.

    Raises:
        BadImageError: If it is unreadable, truncated, or in a format
            TensorFlow cannot decode.
    """
    bit_depth = 8
    try:
        with Image.open(path) as image:
            fmt, mode, (width, height) = image.format, image.mode, image.size
            if fmt == "JPEG":
                # Decoding at 1/8 scale still reads every byte: finds truncation.
                image.draft(mode, (max(1, width // 8), max(1, height // 8)))
                image.load()
            elif fmt == "PNG":
                image.verify()
                bit_depth = _png_bit_depth(path)
            else:
                image.load()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise BadImageError(f"unreadable or truncated image ({e})") from e
    if fmt not in _TF_FORMATS:
        raise BadImageError(
            f"{fmt} data: TensorFlow decodes only {'/'.join(_TF_FORMATS)}; "
            "convert the file to PNG"
        )
    if fmt == "BMP" and mode == "1":
        raise BadImageError("1-bit BMP: TensorFlow cannot decode it; convert to PNG")
    return ImageInfo(path, width, height, mode, bit_depth)


def _conversions(info: ImageInfo) -> list[str]:
    """The kinds of conversion to 8-bit RGB an image needs."""
    kinds = []
    if info.mode in _ALPHA_MODES:
        kinds.append("alpha")
    elif info.mode in _GRAY_MODES:
        kinds.append("grayscale")
    elif info.mode == "P":
        kinds.append("palette")
    elif info.mode == "CMYK":
        kinds.append("CMYK")
    if info.bit_depth > 8:
        kinds.append(f"{info.bit_depth}-bit")
    return kinds


def _unlistable(error: OSError) -> None:
    """`os.walk`'s error handler: a folder it cannot list is an error."""
    raise PermissionError(
        f"Cannot list image folder {error.filename}: {error.strerror}. Fix its "
        "permissions or move it out; its images would otherwise be missed."
    ) from error


def _list_files(folder: Path) -> tuple[list[Path], list[Path]]:
    """Image-extension files and other files under `folder`, recursively.

    Raises:
        PermissionError: If `folder` or a subfolder cannot be listed.
    """
    images, others = [], []
    for root, dirs, files in os.walk(folder, onerror=_unlistable):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if name.startswith("."):
                continue
            path = Path(root) / name
            is_image = path.suffix.lower() in IMAGE_EXTENSIONS
            (images if is_image else others).append(path)
    return images, others


def _log_scan(scan: FolderScan) -> None:
    """Logs skipped, ignored and converted files of a scan."""
    if scan.skipped:
        listed = "\n".join(
            f"  {path}: {reason}"
            for path, reason in list(scan.skipped.items())[:_LISTED]
        )
        more = len(scan.skipped) - _LISTED
        tail = f"\n  ... and {more} more" if more > 0 else ""
        logging.warning(
            "%s: skipped %d of %d image files:\n%s%s",
            scan.folder,
            len(scan.skipped),
            len(scan.skipped) + len(scan.images),
            listed,
            tail,
        )
    if scan.ignored:
        logging.info(
            "%s: ignored %d files without an image extension %s (e.g. %s)",
            scan.folder,
            len(scan.ignored),
            IMAGE_EXTENSIONS,
            scan.ignored[0].name,
        )
    if scan.converted:
        kinds = ", ".join(f"{n} {kind}" for kind, n in sorted(scan.converted.items()))
        logging.info("%s: converting to 8-bit RGB: %s image(s)", scan.folder, kinds)


def scan_images(
    folder: str | os.PathLike,
    *,
    strict: bool = False,
    check: Callable[[ImageInfo], str | None] | None = None,
) -> FolderScan:
    """Lists and checks the images of a folder (recursively) with Pillow.

    Args:
        folder: The folder.
        strict: Raise on the first unusable file instead of skipping it.
        check: Optional extra test of each readable image; returns the reason
            it is unusable, or None.

    Returns:
        A `FolderScan`; skips are logged (warning) with file names and
        reasons, conversions to RGB are counted (info).

    Raises:
        FileNotFoundError: If the folder does not exist.
        NotADirectoryError: If it is a file.
        PermissionError: If it or a subfolder cannot be listed.
        ValueError: If it holds no image file, or no usable one.
        BadImageError: With `strict=True`, naming the first unusable file.

    Example:

    >>> scan = scan_images("datasets/facades/train")
    >>> len(scan.images), scan.skipped
    (400, {})
    """
    folder = Path(folder)
    if not folder.exists():
        raise FileNotFoundError(f"Image folder {folder} does not exist.")
    if not folder.is_dir():
        raise NotADirectoryError(f"{folder} is not a folder of images.")
    files, others = _list_files(folder)
    if not files:
        held = f"; it holds {len(others)} other files" if others else ""
        raise ValueError(
            f"Image folder {folder} is empty: no {'/'.join(IMAGE_EXTENSIONS)} "
            f"files{held}."
        )
    images, skipped, converted = [], {}, collections.Counter()
    for path in files:
        try:
            info = _inspect(path)
            reason = check(info) if check else None
            if reason:
                raise BadImageError(reason)
        except BadImageError as e:
            if strict:
                raise BadImageError(f"{path}: {e}") from e
            skipped[path] = str(e)
            continue
        images.append(info)
        converted.update(_conversions(info))
    scan = FolderScan(folder, images, skipped, others, dict(converted))
    _log_scan(scan)
    if not images:
        path, reason = next(iter(skipped.items()))
        raise ValueError(
            f"No usable images in {folder}: all {len(skipped)} were skipped, "
            f"e.g. {path}: {reason}."
        )
    return scan


def _size_check(
    crop_size: int | None, load_size: int | None, halves: bool
) -> Callable[[ImageInfo], str | None]:
    """The per-image check of a folder: even AB width, crop fits."""

    def check(info: ImageInfo) -> str | None:
        width = info.width
        if halves:
            if width % 2:
                return (
                    f"odd width {width}: an AB image holds A and B side by side, "
                    "so its width must be even"
                )
            width //= 2
        too_small = crop_size is not None and min(width, info.height) < crop_size
        if load_size is None and too_small:
            return (
                f"{'each half is ' if halves else ''}{width}x{info.height}, "
                f"smaller than crop_size={crop_size} (and load_size=None)"
            )
        return None

    return check


def _check_args(
    load_size: int | None, crop_size: int | None, direction: str, batch_size: int
) -> None:
    """Validates the shared arguments of the folder datasets."""
    for name, value in (("load_size", load_size), ("crop_size", crop_size)):
        if value is not None and value < 1:
            raise ValueError(f"{name} must be >= 1 or None, got {value}.")
    if load_size is not None and crop_size is not None and crop_size > load_size:
        raise ValueError(f"crop_size={crop_size} is larger than load_size={load_size}.")
    if direction not in ("AtoB", "BtoA"):
        raise ValueError(f"direction must be 'AtoB' or 'BtoA', got {direction!r}.")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}.")


def _check_uniform(
    infos: Sequence[ImageInfo],
    batch_size: int,
    crop_size: int | None,
    load_size: int | None,
    keep_aspect: bool,
) -> None:
    """Without a crop, a batch needs images of one size."""
    if batch_size == 1 or crop_size is not None:
        return
    if load_size is not None and not keep_aspect:
        return
    first = infos[0]
    for info in infos[1:]:
        same = (info.width, info.height) == (first.width, first.height)
        if load_size is not None:
            same = info.width * first.height == first.width * info.height
        if not same:
            raise ValueError(
                f"batch_size={batch_size} without crop_size needs images of one "
                f"{'aspect ratio' if load_size else 'size'}: {first.path} is "
                f"{first.width}x{first.height}, {info.path} is "
                f"{info.width}x{info.height}. Set crop_size."
            )


def _aligned(
    dir_a: Path, dir_b: Path, strict: bool, check: Callable
) -> tuple[list[Path], list[Path], list[ImageInfo]]:
    """Matches two aligned folders by file stem and checks the pairs' sizes."""
    scans = (
        scan_images(dir_a, strict=strict, check=check),
        scan_images(dir_b, strict=strict, check=check),
    )
    by_stem = []
    for scan in scans:
        stems = {}
        for info in scan.images:
            stem = str(info.path.relative_to(scan.folder).with_suffix(""))
            if stem in stems:
                raise ValueError(
                    f"Two files named {stem!r} in {scan.folder}: "
                    f"{stems[stem].path} and {info.path}; aligned folders are "
                    "matched by file name, so names must be unique."
                )
            stems[stem] = info
        by_stem.append(stems)
    stems_a, stems_b = by_stem
    common = sorted(stems_a.keys() & stems_b.keys())
    unmatched = sorted(stems_a.keys() ^ stems_b.keys())
    if unmatched:
        side = {s: (dir_a if s in stems_a else dir_b) for s in unmatched}
        example = f"{side[unmatched[0]]}/{unmatched[0]}.*"
        message = (
            f"{len(unmatched)} images have no partner of the same name in the "
            f"other folder ({dir_a} / {dir_b}), e.g. {example}"
        )
        if strict or not common:
            raise ValueError(message + ".")
        logging.warning("%s: skipped.", message)
    for stem in common:
        a, b = stems_a[stem], stems_b[stem]
        if (a.width, a.height) != (b.width, b.height):
            raise ValueError(
                f"Aligned images differ in size: {a.path} is {a.width}x{a.height} "
                f"but {b.path} is {b.width}x{b.height}."
            )
    infos = [stems_a[s] for s in common]
    return [stems_a[s].path for s in common], [stems_b[s].path for s in common], infos


def _load_ab(path: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """An AB image split into its halves, float in [-1, 1]."""
    image = pipeline.to_float(pipeline.decode(path))
    half = tf.shape(image)[1] // 2
    return image[:, :half], image[:, half : 2 * half]


def _load_aligned(path_a: tf.Tensor, path_b: tf.Tensor):
    """Two aligned images, float in [-1, 1]."""
    return (
        pipeline.to_float(pipeline.decode(path_a)),
        pipeline.to_float(pipeline.decode(path_b)),
    )


def _shape_transform(load_size, crop_size, keep_aspect, training, flip):
    """Resize + crop/flip of a (maybe channel-stacked) image."""

    def transform(image: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
        image = pipeline.load_resize(image, load_size, keep_aspect)
        image = pipeline.crop_flip(image, seed, crop_size, training, flip)
        if crop_size is not None:
            image.set_shape([crop_size, crop_size, None])
        return image

    return transform


def paired_dataset(
    path_or_paths: str | os.PathLike | tuple[str | os.PathLike, str | os.PathLike],
    *,
    batch_size: int = 1,
    load_size: int | None = 286,
    crop_size: int | None = 256,
    keep_aspect: bool = False,
    training: bool = True,
    flip: bool = True,
    shuffle: bool | None = None,
    seed: int | None = None,
    repeat: bool = False,
    drop_remainder: bool | None = None,
    direction: str = "AtoB",
    strict: bool = False,
) -> tf.data.Dataset:
    """A paired (pix2pix) dataset of `(input, target)` batches.

    Args:
        path_or_paths: One folder of "AB" images (A left, B right, even
            width), or a pair `(folder_a, folder_b)` of aligned folders whose
            files are matched by name without extension (`a/001.png` with
            `b/001.jpg`); subfolders count as part of the name.
        batch_size: Pairs per batch.
        load_size: Resize each image (or half) to this square first (`None`:
            no resize).
        crop_size: Crop side (random in training, central otherwise; `None`:
            no crop).
        keep_aspect: Resize the short side to `load_size` instead of
            squashing to a square.
        training: Random crop + flip and shuffling; False: center crop, no
            flip, no shuffle.
        flip: Random horizontal flips in training.
        shuffle: Shuffle the files each epoch (default: `training`).
        seed: Seed of the shuffle, crops and flips (`None`: random).
        repeat: Repeat forever (for `fit(steps_per_epoch=...)`).
        drop_remainder: Drop the last partial batch so that every batch has
            one shape (XLA compiles once per shape). Default: `training`
            (evaluation keeps every image).
        direction: `"AtoB"` yields `(A, B)`, `"BtoA"` yields `(B, A)`.
        strict: Raise on the first unusable file instead of skipping it.

    Returns:
        A `tf.data.Dataset` of `(input, target)`, each `float32
        (batch, crop_size, crop_size, 3)` in [-1, 1].

    Raises:
        FileNotFoundError: If a folder does not exist.
        PermissionError: If a folder or subfolder cannot be listed.
        ValueError: If a folder is empty or has no usable image; if aligned
            images differ in size (both files named); if aligned folders
            share no name (or, with `strict`, any name is unmatched); on bad
            arguments.
        BadImageError: With `strict=True`, naming the first unusable file
            (unreadable, truncated, odd AB width, ...).

    Example:

    >>> ds = paired_dataset("datasets/facades/train", batch_size=4, seed=0)
    >>> x, y = next(iter(ds))
    >>> x.shape, y.shape
    (TensorShape([4, 256, 256, 3]), TensorShape([4, 256, 256, 3]))
    """
    _check_args(load_size, crop_size, direction, batch_size)
    shuffle = training if shuffle is None else shuffle
    drop_remainder = training if drop_remainder is None else drop_remainder
    if isinstance(path_or_paths, (str, os.PathLike)):
        check = _size_check(crop_size, load_size, halves=True)
        infos = scan_images(path_or_paths, strict=strict, check=check).images
        files = tf.data.Dataset.from_tensor_slices([str(i.path) for i in infos])
        load = _load_ab
    else:
        if len(path_or_paths) != 2:
            raise ValueError(
                "path_or_paths must be one AB folder or a pair (folder_a, "
                f"folder_b), got {len(path_or_paths)} paths."
            )
        dir_a, dir_b = (Path(p) for p in path_or_paths)
        check = _size_check(crop_size, load_size, halves=False)
        paths_a, paths_b, infos = _aligned(dir_a, dir_b, strict, check)
        files = tf.data.Dataset.from_tensor_slices(
            ([str(p) for p in paths_a], [str(p) for p in paths_b])
        )
        load = _load_aligned
    _check_uniform(infos, batch_size, crop_size, load_size, keep_aspect)

    def make_pair(paths, seed_pair):
        a, b = load(*paths) if isinstance(paths, tuple) else load(paths)
        a = pipeline.load_resize(a, load_size, keep_aspect)
        b = pipeline.load_resize(b, load_size, keep_aspect)
        ab = pipeline.crop_flip(
            tf.concat([a, b], axis=-1), seed_pair, crop_size, training, flip
        )
        if crop_size is not None:
            ab.set_shape([crop_size, crop_size, 6])
        a, b = ab[..., :3], ab[..., 3:]
        return (a, b) if direction == "AtoB" else (b, a)

    def examples():
        shuffled = files
        if shuffle:
            shuffled = files.shuffle(
                len(infos), seed=seed, reshuffle_each_iteration=True
            )
        return pipeline.with_seeds(shuffled, seed).map(
            make_pair, num_parallel_calls=pipeline.AUTOTUNE
        )

    return pipeline.finish(examples, batch_size, drop_remainder, repeat, len(infos))


def _domain(
    infos: Sequence[ImageInfo],
    shuffle: bool,
    seed: int | None,
    transform: Callable,
) -> tf.data.Dataset:
    """An endless stream of one unpaired domain's images."""
    files = tf.data.Dataset.from_tensor_slices([str(i.path) for i in infos])
    if shuffle:
        files = files.shuffle(len(infos), seed=seed, reshuffle_each_iteration=True)
    images = pipeline.with_seeds(files.repeat(), seed)
    return images.map(
        lambda path, s: transform(pipeline.to_float(pipeline.decode(path)), s),
        num_parallel_calls=pipeline.AUTOTUNE,
    )


def unpaired_dataset(
    dir_a: str | os.PathLike,
    dir_b: str | os.PathLike,
    *,
    batch_size: int = 1,
    load_size: int | None = 286,
    crop_size: int | None = 256,
    keep_aspect: bool = False,
    training: bool = True,
    flip: bool = True,
    shuffle: bool | None = None,
    seed: int | None = None,
    repeat: bool = False,
    drop_remainder: bool | None = None,
    strict: bool = False,
) -> tf.data.Dataset:
    """An unpaired (CycleGAN) dataset of `(a, b)` batches.

    A and B are shuffled independently; an epoch holds `max(len(A), len(B))`
    pairs, the smaller folder cycling (reshuffled) like the reference
    `unaligned` dataset.

    Args:
        dir_a: Folder of domain A images.
        dir_b: Folder of domain B images.
        batch_size: Pairs per batch.
        load_size: Resize to this square first (`None`: no resize).
        crop_size: Crop side (`None`: no crop).
        keep_aspect: Resize the short side to `load_size` instead.
        training: Random crop + flip and shuffling; False: center crop.
        flip: Random horizontal flips in training.
        shuffle: Shuffle each folder each epoch (default: `training`).
        seed: Seed of the shuffles, crops and flips (`None`: random).
        repeat: Repeat forever.
        drop_remainder: Drop the last partial batch (default: `training`).
        strict: Raise on the first unusable file instead of skipping it.

    Returns:
        A `tf.data.Dataset` of `(a, b)`, each `float32 (batch, crop_size,
        crop_size, 3)` in [-1, 1].

    Raises:
        FileNotFoundError: If a folder does not exist.
        PermissionError: If a folder or subfolder cannot be listed.
        ValueError: If a folder is empty or has no usable image; on bad
            arguments.
        BadImageError: With `strict=True`, naming the first unusable file.

    Example:

    >>> ds = unpaired_dataset("horse2zebra/trainA", "horse2zebra/trainB",
    ...                       batch_size=1, seed=0, repeat=True)
    >>> a, b = next(iter(ds))
    """
    _check_args(load_size, crop_size, "AtoB", batch_size)
    shuffle = training if shuffle is None else shuffle
    drop_remainder = training if drop_remainder is None else drop_remainder
    check = _size_check(crop_size, load_size, halves=False)
    infos_a = scan_images(dir_a, strict=strict, check=check).images
    infos_b = scan_images(dir_b, strict=strict, check=check).images
    for infos in (infos_a, infos_b):
        _check_uniform(infos, batch_size, crop_size, load_size, keep_aspect)
    transform = _shape_transform(load_size, crop_size, keep_aspect, training, flip)
    seed_b = None if seed is None else seed + 1
    count = max(len(infos_a), len(infos_b))

    def examples():
        pairs = tf.data.Dataset.zip(
            _domain(infos_a, shuffle, seed, transform),
            _domain(infos_b, shuffle, seed_b, transform),
        )
        # Repeating, the endless domains go on: restarting them every
        # `count` pairs would let their read-ahead move the reshuffle seeds.
        return pairs if repeat else pairs.take(count)

    return pipeline.finish(examples, batch_size, drop_remainder, repeat, count)
