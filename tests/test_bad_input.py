"""Bad input to the library: each case gets a specific error that names the
file, shape or value and what was expected, and nothing is lost.

Cases already covered elsewhere (listed so the set is complete): missing and
empty folders, truncated JPEG/PNG, grayscale and RGBA images
(`test_data.py`); a malicious `.pth`, declared sizes beyond the data
(`test_hostile_checkpoints.py`); fewer than 16 int8 calibration images warn
(`test_export_int8.py`); writes interrupted midway (`test_atomic.py`).
"""

from __future__ import annotations

import logging as pylog
import re
import struct
import zlib

import keras
import numpy as np
import pytest
from PIL import Image
from pth_files import (
    random_resnet_state,
    random_unet_state,
    write_legacy,
    write_zip,
)
from unprivileged import as_nobody, open_folder

from tfgancompress import data, export
from tfgancompress.models import (
    CheckpointError,
    load_pytorch_generator,
    load_pytorch_state_dict,
    mobile_resnet_generator,
    resnet_generator,
    unet_generator,
)

RNG = np.random.default_rng(0)


def _png16(path, samples: np.ndarray) -> None:
    """A 16-bit PNG (Pillow writes 16-bit grayscale only): gray, RGB or RGBA."""
    height, width = samples.shape[:2]
    channels = 1 if samples.ndim == 2 else samples.shape[2]
    colour_type = {1: 0, 3: 2, 4: 6}[channels]
    rows = samples.reshape(height, -1).astype(">u2")
    raw = b"".join(b"\0" + row.tobytes() for row in rows)

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + body))
        return struct.pack(">I", len(body)) + kind + body + crc

    header = struct.pack(">IIBBBBB", width, height, 16, colour_type, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


def _save(folder, name: str, size: int = 16) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    pixels = RNG.integers(0, 256, (size, size, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(folder / name)


# ------------------------------------------------------------- image folders


def test_16_bit_pngs_are_reduced_to_8_bits_and_counted(tmp_path, caplog):
    folder = tmp_path / "A"
    folder.mkdir()
    sources = {
        "gray": RNG.integers(0, 2**16, (8, 8), dtype=np.uint16),
        "rgb": RNG.integers(0, 2**16, (8, 8, 3), dtype=np.uint16),
        "rgba": RNG.integers(0, 2**16, (8, 8, 4), dtype=np.uint16),
    }
    for name, samples in sources.items():
        _png16(folder / f"{name}.png", samples)
    caplog.set_level(pylog.INFO, logger="absl")
    scan = data.scan_images(folder)
    assert [i.bit_depth for i in scan.images] == [16, 16, 16]
    assert scan.converted == {"16-bit": 3, "grayscale": 1, "alpha": 1}
    assert "3 16-bit, 1 alpha, 1 grayscale" in caplog.text
    ds = data.unpaired_dataset(
        folder, folder, load_size=None, crop_size=8, training=False
    )
    got = [np.round((a[0].numpy() + 1) * 127.5).astype(np.uint16) for a, _ in ds]
    for image, samples in zip(got, sources.values(), strict=True):
        rgb = np.repeat(samples[..., None], 3, -1) if samples.ndim == 2 else samples
        np.testing.assert_array_equal(image, rgb[..., :3] >> 8)  # the high byte


@pytest.mark.parametrize("which", ["folder", "subfolder"])
def test_unreadable_folders_are_named_not_empty(which):
    with open_folder() as root:
        top = root / "A"
        _save(top, "a.png")
        _save(top / "more", "b.png")
        locked = top if which == "folder" else top / "more"
        locked.chmod(0)
        with as_nobody():
            for build in (
                lambda: data.scan_images(top),
                lambda: data.paired_dataset((top, top), crop_size=8),
                lambda: data.unpaired_dataset(top, top, crop_size=8),
            ):
                with pytest.raises(
                    PermissionError, match=f"Cannot list image folder {locked}: "
                ):
                    build()


def test_an_unreadable_image_is_a_named_skip(caplog):
    with open_folder() as root:
        folder = root / "A"
        _save(folder, "fine.png")
        _save(folder, "secret.png")
        (folder / "secret.png").chmod(0)
        caplog.set_level(pylog.WARNING, logger="absl")
        with as_nobody():
            scan = data.scan_images(folder)
            with pytest.raises(data.BadImageError, match=r"secret\.png: .*denied"):
                data.scan_images(folder, strict=True)
    assert [i.path.name for i in scan.images] == ["fine.png"]
    assert "Permission denied" in scan.skipped[folder / "secret.png"]
    assert "skipped 1 of 2 image files" in caplog.text
    assert "secret.png" in caplog.text


# ------------------------------------------------------------------- models


@pytest.mark.parametrize("shape", [(30, 32, 3), (32, 30, 3), (34, 34, 3)])
def test_resnet_sizes_not_divisible_by_4(tmp_path, shape):
    message = rf"divisible by 4 .*got input_shape \({shape[0]}, {shape[1]}, 3\)"
    for build in (resnet_generator, mobile_resnet_generator):
        with pytest.raises(ValueError, match=message):
            build(ngf=4, n_blocks=1, input_shape=shape)
    path = tmp_path / "G.pth"
    write_zip(path, random_resnet_state(RNG, ngf=4, n_blocks=1))
    with pytest.raises(ValueError, match=message):
        load_pytorch_generator(path, input_shape=shape)
    with pytest.raises(ValueError, match=r"divisible by 32, got input_shape \(48"):
        unet_generator(ngf=4, num_downs=5, input_shape=(48, 48, 3))
    model = resnet_generator(ngf=4, n_blocks=1, input_shape=(36, 36, 3))
    assert model.output_shape == (None, 36, 36, 3)


def test_unet_checkpoint_loaded_as_a_resnet(tmp_path):
    path = tmp_path / "unet_G.pth"
    write_legacy(path, random_unet_state(RNG))
    for architecture in ("resnet", "mobile_resnet"):
        with pytest.raises(
            CheckpointError,
            match=rf"unet_G\.pth: holds a 'unet' generator, not '{architecture}'",
        ):
            load_pytorch_generator(path, architecture=architecture)


@pytest.mark.parametrize("writer", [write_zip, write_legacy])
def test_truncated_pth_at_every_length(tmp_path, writer):
    whole = tmp_path / "whole.pth"
    writer(whole, random_resnet_state(RNG, ngf=2, n_blocks=1))
    content = whole.read_bytes()
    cut = tmp_path / "cut.pth"
    lengths = sorted({*range(0, 64), *range(0, len(content), len(content) // 97)})
    for length in lengths:
        cut.write_bytes(content[:length])
        with pytest.raises(CheckpointError, match=r"cut\.pth: ") as info:
            load_pytorch_state_dict(cut)
        assert any(
            word in str(info.value)
            for word in ("truncated", "not a PyTorch checkpoint", "not a readable")
        ), (length, info.value)
    assert len(lengths) > 150


@pytest.mark.parametrize(
    ("key", "shape", "expected"),
    [
        ("model.10.conv_block.5.weight", (32, 32, 3, 1), (3, 3, 32, 32)),
        ("model.10.conv_block.1.bias", (31,), (32,)),
        ("model.11.weight", (32, 16, 4, 4), (3, 3, 16, 32)),
    ],
)
def test_state_dict_with_a_wrong_shaped_tensor(tmp_path, key, shape, expected):
    state = random_resnet_state(RNG, ngf=8, n_blocks=1)
    assert key in state and state[key].shape != shape
    state[key] = RNG.normal(size=shape).astype(np.float32)
    path = tmp_path / "bad_shape.pth"
    write_zip(path, state)
    given = shape if len(shape) == 1 else tuple(shape[i] for i in (2, 3, 1, 0))
    message = (
        re.escape(f"bad_shape.pth: shape mismatch for '{key}': Keras layer ")
        + ".* expects "
        + re.escape(f"{expected}, the checkpoint gives {given}")
    )
    with pytest.raises(CheckpointError, match=message):
        load_pytorch_generator(path)


# ------------------------------------------------------------------- export


def _tiny_generator() -> keras.Model:
    inputs = keras.Input((16, 16, 3))
    return keras.Model(inputs, keras.layers.Conv2D(3, 3, padding="same")(inputs))


@pytest.mark.parametrize(
    ("images", "batch"), [(np.zeros((0, 16, 16, 3)), 1), (np.zeros((1, 16, 16, 3)), 2)]
)
def test_int8_calibration_set_too_small(tmp_path, images, batch):
    path = tmp_path / "g.tflite"
    path.write_bytes(b"previous export")
    with pytest.raises(
        ValueError,
        match=rf"representative_data gave no batch of shape \({batch}, 16, 16, 3\)",
    ):
        export.to_litert(
            _tiny_generator(), path, "int8", images, input_shape=(batch, 16, 16, 3)
        )
    assert path.read_bytes() == b"previous export"


def test_export_to_a_folder_that_is_not_writable():
    model = _tiny_generator()
    with open_folder() as root:
        folder = root / "exports"
        folder.mkdir()
        (folder / "g.tflite").write_bytes(b"previous export")
        folder.chmod(0o555)
        for write in (
            lambda: export.to_litert(model, folder / "g.tflite"),
            lambda: export.to_onnx(model, folder / "g.onnx"),
            lambda: export.to_saved_model(model, folder / "saved"),
        ):
            with (
                as_nobody(),
                pytest.raises(
                    PermissionError, match=f"directory '{folder}' is not writable"
                ),
            ):
                write()
        assert sorted(p.name for p in folder.iterdir()) == ["g.tflite"]
        assert (folder / "g.tflite").read_bytes() == b"previous export"
