"""Tests for the built-in photo sources: Qt .rcc bundles, the Debian photo
packages (faked in tmp folders), image modes, near-duplicates, set-up."""

from __future__ import annotations

import io
import logging as pylog
import os
import re
import struct
import subprocess
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tfgancompress import data
from tfgancompress.data import builtin, catalogue, duplicates, rcc

REPO = Path(__file__).resolve().parents[1]
RNG = np.random.default_rng(0)


def _smooth(height: int, width: int, seed: int) -> np.ndarray:
    """A smooth random colour image (photo-like low frequencies)."""
    coarse = np.random.default_rng(seed).integers(0, 256, (6, 8, 3), np.uint8)
    return np.asarray(
        Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC)
    )


def _encode(array: np.ndarray, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


# ------------------------------------------------------------- Qt .rcc


def _write_rcc(
    path: Path,
    files: dict[str, bytes],
    *,
    version: int = 3,
    zlib_files: frozenset = frozenset(),
    zstd_files: frozenset = frozenset(),
) -> None:
    """Writes a Qt binary resource bundle (the layout `rcc -binary` writes)."""
    root: dict = {}
    for resource, content in files.items():
        *folders, leaf = resource.strip("/").split("/")
        folder = root
        for name in folders:
            folder = folder.setdefault(name, {})
        folder[leaf] = (resource, content)
    names, blobs = bytearray(), bytearray()
    modified = b"\0" * 8 if version >= 2 else b""

    def add_name(name: str) -> int:
        offset = len(names)
        names.extend(struct.pack(">HI", len(name), 0) + name.encode("utf-16-be"))
        return offset

    def add_blob(resource: str, content: bytes) -> tuple[int, int]:
        offset, flags = len(blobs), 0
        if resource in zlib_files:
            content, flags = struct.pack(">I", len(content)) + zlib.compress(content), 1
        elif resource in zstd_files:
            flags = 4
        blobs.extend(struct.pack(">I", len(content)) + content)
        return offset, flags

    nodes: list[bytes | None] = [None]
    pending = [(0, 0, root)]  # (node index, name offset, directory)
    while pending:
        index, name_offset, folder = pending.pop(0)
        first = len(nodes)
        nodes.extend([None] * len(folder))
        nodes[index] = struct.pack(">IHII", name_offset, 2, len(folder), first)
        nodes[index] += modified
        for child, (name, entry) in enumerate(sorted(folder.items()), first):
            if isinstance(entry, dict):
                pending.append((child, add_name(name), entry))
            else:
                offset, flags = add_blob(*entry)
                record = struct.pack(">IHHHI", add_name(name), flags, 0, 0, offset)
                nodes[child] = record + modified
    header_size = 20 + (4 if version >= 3 else 0)
    data_offset = header_size
    names_offset = data_offset + len(blobs)
    tree_offset = names_offset + len(names)
    header = b"qres" + struct.pack(
        ">IIII", version, tree_offset, data_offset, names_offset
    )
    header += struct.pack(">I", 0) if version >= 3 else b""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(header + blobs + names + b"".join(nodes))


@pytest.mark.parametrize("version", [1, 2, 3])
def test_rcc_reads_every_file_of_a_bundle(tmp_path, version):
    files = {
        "/a/b/photo.webp": _encode(_smooth(8, 12, 1), "WEBP", lossless=True),
        "/a/b/notes.txt": b"hello " * 50,
        "/a/c.qml": b"import QtQuick 2.12\n",
        "/top.bin": bytes(range(256)),
    }
    bundle = tmp_path / "x.rcc"
    _write_rcc(bundle, files, version=version, zlib_files=frozenset({"/a/b/notes.txt"}))
    assert rcc.list_files(bundle) == sorted(files)
    for name, content in files.items():
        assert rcc.read_file(bundle, name) == content
    image = Image.open(io.BytesIO(rcc.read_file(bundle, "/a/b/photo.webp")))
    np.testing.assert_array_equal(np.asarray(image), _smooth(8, 12, 1))


def test_rcc_errors_name_the_bundle_and_the_problem(tmp_path):
    bundle = tmp_path / "x.rcc"
    _write_rcc(bundle, {"/a.webp": b"abc", "/z.webp": b"zst"}, zstd_files={"/z.webp"})
    with pytest.raises(rcc.ResourceError, match=r"x\.rcc has no resource '/b\.webp'"):
        rcc.read_file(bundle, "/b.webp")
    with pytest.raises(rcc.ResourceError, match=r"/z\.webp is zstd-compressed"):
        rcc.read_file(bundle, "/z.webp")
    not_rcc = tmp_path / "not.rcc"
    not_rcc.write_bytes(b"PK\x03\x04 a zip file")
    with pytest.raises(rcc.ResourceError, match=r"not\.rcc: not a Qt binary"):
        rcc.list_files(not_rcc)
    cut = tmp_path / "cut.rcc"
    cut.write_bytes(bundle.read_bytes()[:-10])
    with pytest.raises(rcc.ResourceError, match=r"cut\.rcc: truncated"):
        rcc.list_files(cut)
    newer = tmp_path / "v9.rcc"
    newer.write_bytes(b"qres" + struct.pack(">IIII", 9, 0, 0, 0))
    with pytest.raises(rcc.ResourceError, match="version 9"):
        rcc.list_files(newer)
    # A rewritten bundle is re-read, not served from the index cache.
    _write_rcc(bundle, {"/b.webp": b"new"})
    os.utime(bundle, ns=(1, 1))
    assert rcc.list_files(bundle) == ["/b.webp"]


# ------------------------------------------------- Debian photo packages


def _fake_package(photo_dir: Path, source: str, images: dict[str, np.ndarray]):
    """Writes catalogued photos of a Debian source as the set-up unpacks them."""
    folders = {**catalogue.FOLDERS, **catalogue.EXTRA_FOLDERS}
    folder = photo_dir / source / folders[source]
    bundles: dict[Path, dict[str, bytes]] = {}
    for name, image in images.items():
        location = {**catalogue.PHOTOS, **catalogue.EXTRA_PHOTOS}[source][name]
        if ".rcc:" in location:
            bundle, member = location.split(":", 1)
            bundles.setdefault(folder / bundle, {})[member] = _encode(
                image, "WEBP", lossless=True
            )
        else:
            path = folder / location
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(path)
    for bundle, files in bundles.items():
        _write_rcc(bundle, files)


def test_debian_sources_are_found_loaded_and_split(tmp_path, caplog):
    photo_dir = tmp_path / "photos"
    giraffe, kitten = _smooth(40, 72, 1), _smooth(48, 64, 2)
    canyon, cliff = _smooth(36, 48, 3), _smooth(44, 40, 4)
    _fake_package(
        photo_dir,
        "gcompris-qt-data",
        {"erase-giraffe": giraffe, "explore_farm_animals-cat": kitten},
    )
    _fake_package(photo_dir, "kphotoalbum", {"grand_canyon_1": canyon})
    _fake_package(photo_dir, "tuxpaint-data", {"cliff": cliff})
    sources = ["gcompris-qt-data", "kphotoalbum", "tuxpaint-data", "scratch"]
    caplog.set_level(pylog.INFO, logger="absl")
    found = data.builtin_photos(sources, photo_dir=photo_dir)

    assert [(p.source, p.name) for p in found] == [
        ("gcompris-qt-data", "erase-giraffe"),
        ("gcompris-qt-data", "explore_farm_animals-cat"),
        ("kphotoalbum", "grand_canyon_1"),
        ("tuxpaint-data", "cliff"),
    ]
    assert data.count_by_source(found) == {
        "gcompris-qt-data": 2,
        "kphotoalbum": 1,
        "tuxpaint-data": 1,
    }
    assert "Photo source scratch is not installed" in caplog.text
    assert "gcompris-qt-data: 232 of its 234 catalogued photos are missing" in (
        caplog.text
    )
    assert re.search(r"tuxpaint-data: 16 of .*/templates/burnt_bark\.jpg", caplog.text)
    assert caplog.text.count("catalogued photos are missing") == 3

    giraffe_photo, kitten_photo, canyon_photo, cliff_photo = found
    assert giraffe_photo.path.name == "erase.rcc"
    assert giraffe_photo.member.endswith("/erase/resource/giraffe.webp")
    np.testing.assert_array_equal(np.asarray(data.open_photo(giraffe_photo)), giraffe)
    np.testing.assert_array_equal(np.asarray(data.open_photo(kitten_photo)), kitten)
    cliff_jpeg = np.asarray(Image.open(cliff_photo.path))
    np.testing.assert_array_equal(np.asarray(data.open_photo(cliff_photo)), cliff_jpeg)
    # KPhotoAlbum's album stores grand_canyon_1 upside down.
    assert canyon_photo.rotation == 180
    np.testing.assert_array_equal(
        np.asarray(data.open_photo(canyon_photo)),
        np.asarray(Image.open(canyon_photo.path))[::-1, ::-1],
    )
    loaded = data.load_photo(giraffe_photo, 20)
    assert loaded.shape == (20, 36, 3) and loaded.dtype == np.uint8
    # Digests follow the content (and the rotation), so caches stay exact.
    assert len({p.digest() for p in found}) == 4
    unrotated = builtin.Photo("kphotoalbum", "x", canyon_photo.path)
    assert unrotated.digest() != canyon_photo.digest()

    train, held_out = data.split_by_source(found, ["kphotoalbum", "tuxpaint-data"])
    assert data.count_by_source(train) == {"gcompris-qt-data": 2}
    assert data.count_by_source(held_out) == {"kphotoalbum": 1, "tuxpaint-data": 1}


def test_extended_set_adds_whole_sources_only_when_asked(tmp_path, caplog):
    photo_dir = tmp_path / "photos"
    _fake_package(photo_dir, "tuxpaint-data", {"cliff": _smooth(44, 40, 4)})
    _fake_package(photo_dir, "mate-backgrounds", {"Aqua": _smooth(40, 64, 5)})
    _fake_package(photo_dir, "stellarium-data", {"m16": _smooth(48, 48, 6)})
    caplog.set_level(pylog.INFO, logger="absl")
    extended = data.photo_set("extended")
    assert data.photo_set("standard") == data.SOURCES
    assert extended[: len(data.SOURCES)] == data.SOURCES
    found = data.builtin_photos(extended, photo_dir=photo_dir)
    counts = data.count_by_source(found)
    assert {s: counts[s] for s in data.EXTRA_SOURCES if s in counts} == {
        "mate-backgrounds": 1,
        "stellarium-data": 1,
    }
    for missing in ("lomiri-wallpapers-20.04", "kalzium-data", "libjxl-testdata"):
        assert f"Photo source {missing} is not installed" in caplog.text
    assert "stellarium-data: 161 of its 162 catalogued photos are missing" in (
        caplog.text
    )
    standard = data.builtin_photos(photo_dir=photo_dir)  # the default set
    assert not {p.source for p in standard} & set(data.EXTRA_SOURCES)
    assert [p for p in found if p.source in data.SOURCES] == standard
    m16 = next(p for p in found if p.name == "m16")
    np.testing.assert_array_equal(np.asarray(data.open_photo(m16)), _smooth(48, 48, 6))
    # Held out by whole source: the extra sources all train.
    train, held_out = data.split_by_source(found, ["stellarium-data"])
    assert [p.name for p in held_out] == ["m16"]
    assert "stellarium-data" not in data.count_by_source(train)
    with pytest.raises(ValueError, match="Unknown photo set 'huge'; known: standard"):
        data.photo_set("huge")


def test_extended_catalogue_is_disjoint_from_the_standard_one():
    assert set(catalogue.EXTRA_PHOTOS) == set(catalogue.EXTRA_FOLDERS)
    assert not set(catalogue.EXTRA_PHOTOS) & set(catalogue.PHOTOS)
    assert not set(catalogue.EXTRA_FOLDERS) & set(catalogue.FOLDERS)
    for source, photos in catalogue.EXTRA_PHOTOS.items():
        assert len(set(photos.values())) == len(photos), source  # one name a file
        assert all(".rcc:" not in location for location in photos.values())
    assert {s: len(p) for s, p in catalogue.EXTRA_PHOTOS.items()} == {
        "mate-backgrounds": 12,
        "lomiri-wallpapers-20.04": 2,
        "stellarium-data": 162,
        "kalzium-data": 16,
        "libjxl-testdata": 5,
    }


def test_unreadable_bundle_is_left_out_with_a_warning(tmp_path, caplog):
    folder = tmp_path / "gcompris-qt-data" / catalogue.FOLDERS["gcompris-qt-data"]
    folder.mkdir(parents=True)
    (folder / "erase.rcc").write_bytes(b"garbage")
    _fake_package(tmp_path, "tuxpaint-data", {"cliff": _smooth(8, 8, 1)})
    caplog.set_level(pylog.WARNING, logger="absl")
    found = data.builtin_photos(
        ["gcompris-qt-data", "tuxpaint-data"], photo_dir=tmp_path
    )
    assert [p.name for p in found] == ["cliff"]
    assert re.search(r"erase\.rcc is unreadable \(.*not a Qt binary", caplog.text)
    with pytest.raises(ValueError, match="No built-in photos found"):
        data.builtin_photos(["gcompris-qt-data"], photo_dir=tmp_path)


def test_default_photo_dir(monkeypatch, tmp_path):
    monkeypatch.delenv("TFGANCOMPRESS_PHOTOS", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert data.default_photo_dir() == tmp_path / "xdg" / "tfgancompress" / "photos"
    monkeypatch.setenv("TFGANCOMPRESS_PHOTOS", str(tmp_path / "mine"))
    assert data.default_photo_dir() == tmp_path / "mine"


def _makefile_variable(name: str, env: dict[str, str]) -> str:
    """A variable of the Makefile as make evaluates it under `env`."""
    result = subprocess.run(
        ["make", "-s", "--no-print-directory", "-C", str(REPO),
         "--eval", f"print-var: ; @echo $({name})", "print-var"],
        env=env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    return result.stdout.strip()


def test_makefile_unpacks_the_catalogued_packages_where_we_read_them(
    monkeypatch, tmp_path
):
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path / "home")}
    assert set(_makefile_variable("PHOTO_PACKAGES", env).split()) == set(
        builtin.DEBIAN_SOURCES
    )
    assert set(_makefile_variable("EXTRA_PHOTO_PACKAGES", env).split()) == set(
        builtin.EXTRA_SOURCES
    )
    for extra in ({}, {"XDG_DATA_HOME": str(tmp_path / "xdg")}):
        for key in ("HOME", "XDG_DATA_HOME", "TFGANCOMPRESS_PHOTOS"):
            monkeypatch.delenv(key, raising=False)
        for key, value in {**env, **extra}.items():
            monkeypatch.setenv(key, value)
        expected = str(data.default_photo_dir())
        assert _makefile_variable("PHOTO_DIR", {**env, **extra}) == expected
    mine = {**env, "TFGANCOMPRESS_PHOTOS": str(tmp_path / "mine")}
    assert _makefile_variable("PHOTO_DIR", mine) == str(tmp_path / "mine")


def test_catalogue_counts_are_the_documented_table():
    table = dict(re.findall(r"^\| `([\w.-]+)` \|.*\| (\d+) \|$", builtin.__doc__, re.M))
    assert {source: int(n) for source, n in table.items()} == {
        source: len(photos)
        for source, photos in {**catalogue.PHOTOS, **catalogue.EXTRA_PHOTOS}.items()
    }
    total = re.search(r"^\| \*\*all\*\* \| \| \*\*(\d+)\*\* \|$", builtin.__doc__, re.M)
    assert int(total.group(1)) == sum(map(len, catalogue.PHOTOS.values()))
    assert set(catalogue.ROTATIONS) <= {
        (source, name) for source, photos in catalogue.PHOTOS.items() for name in photos
    }


# ------------------------------------------------------------ image modes


def test_exif_orientation_and_odd_modes_give_upright_rgb(tmp_path):
    image = _smooth(24, 40, 5)
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated: turn 90 degrees clockwise to view
    Image.fromarray(image).save(tmp_path / "turned.png", exif=exif)
    upright = np.asarray(data.open_photo(tmp_path / "turned.png"))
    np.testing.assert_array_equal(upright, np.rot90(image, k=-1))

    deep = (np.arange(16 * 16).reshape(16, 16) * 257).astype(np.uint16)
    Image.fromarray(deep).save(tmp_path / "gray16.png")
    assert Image.open(tmp_path / "gray16.png").mode == "I;16"
    gray = np.asarray(data.open_photo(tmp_path / "gray16.png"))
    np.testing.assert_array_equal(gray, np.repeat((deep // 257)[..., None], 3, -1))

    rgba = np.concatenate([image, np.full((24, 40, 1), 9, np.uint8)], -1)
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    np.testing.assert_array_equal(
        np.asarray(data.open_photo(tmp_path / "rgba.png")), image
    )  # alpha dropped, as the folder pipelines do
    for mode in ("P", "L", "LA", "CMYK", "1"):
        Image.fromarray(image).convert(mode).save(
            tmp_path / f"{mode}.{'jpg' if mode == 'CMYK' else 'png'}"
        )
    for path in sorted(tmp_path.glob("[A-Z]*.*")):
        loaded = data.load_photo(path, 12)
        assert loaded.shape == (12, 20, 3) and loaded.dtype == np.uint8, path

    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    with pytest.raises(OSError, match=r"Cannot read the photo .*bad\.png"):
        data.load_photo(tmp_path / "bad.png", 12)


def test_crops_of_photos_of_mixed_shapes(tmp_path):
    wide, tall = _smooth(32, 56, 6), _smooth(48, 32, 7)
    photos = []
    for name, image in (("wide", wide), ("tall", tall)):
        Image.fromarray(image).save(tmp_path / f"{name}.png")
        photos.append(builtin.Photo("tuxpaint-data", name, tmp_path / f"{name}.png"))
    central = list(
        data.photos(photos, crop_size=32, load_size=32, training=False, batch_size=1)
    )
    expected = [wide[:, 12:44], tall[8:40]]
    for (x,), want in zip(central, expected, strict=True):
        got = np.round((x.numpy() + 1.0) * 127.5)
        np.testing.assert_allclose(got, want, atol=1)
    crops = list(data.photos(photos, crop_size=16, load_size=32, seed=3))
    assert len(crops) == 16 and all(c.shape == (1, 16, 16, 3) for c in crops)


def test_photos_are_loaded_on_first_use_and_kept(tmp_path, monkeypatch):
    photos = []
    for i in range(24):
        Image.fromarray(_smooth(16, 20, i)).save(tmp_path / f"{i}.png")
        photos.append(builtin.Photo("tuxpaint-data", str(i), tmp_path / f"{i}.png"))
    loads = []
    real_load = builtin.load_photo
    monkeypatch.setattr(
        builtin, "load_photo", lambda p, size: loads.append(p) or real_load(p, size)
    )
    ds = data.photos(photos, crop_size=8, load_size=16, crops_per_photo=2, seed=0)
    next(iter(ds))
    assert 1 <= len(loads) < len(photos)  # not every photo for one crop
    for _ in range(2):
        assert len(list(ds)) == 48
    assert sorted(p.name for p in loads) == sorted(p.name for p in photos)


# ------------------------------------------------------- near-duplicates


def test_near_duplicates_finds_rescaled_and_recompressed_copies():
    photo = _smooth(120, 160, 8)
    copy = np.asarray(
        Image.open(
            io.BytesIO(
                _encode(
                    np.asarray(Image.fromarray(photo).resize((96, 72))),
                    "JPEG",
                    quality=70,
                )
            )
        )
    )
    others = [_smooth(120, 160, seed) for seed in range(9, 14)]
    hashes = {"photo": duplicates.perceptual_hash(photo)}
    hashes["copy"] = duplicates.perceptual_hash(copy)
    hashes.update(
        {f"other{i}": duplicates.perceptual_hash(o) for i, o in enumerate(others)}
    )
    assert all(0 <= h < 2**63 for h in hashes.values())
    close = duplicates.near_duplicates(hashes)
    assert [(a, b) for a, b, _ in close] == [("photo", "copy")]
    assert close[0][2] <= 4
    gray = duplicates.perceptual_hash(np.asarray(Image.fromarray(photo).convert("L")))
    assert duplicates.hash_distance(gray, hashes["photo"]) <= 2
    assert duplicates.hash_distance(0b1011, 0b0110) == 3
    with pytest.raises(ValueError, match=r"uint8 \(H, W\) or \(H, W, 3\).*float"):
        duplicates.perceptual_hash(photo.astype(np.float32))
