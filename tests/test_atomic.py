"""Atomic writes: a failure or a kill mid-write leaves the destination as it was.

Failures are real where they can be: a file-size limit (`RLIMIT_FSIZE`, what
a full disk does) stops a write after its first kilobyte, a JSON encoder
meets an unserializable value halfway, a process is SIGKILLed between two
chunks. Every public writer of the library is checked: exports, reports,
latency reports.
"""

from __future__ import annotations

import contextlib
import errno
import json
import resource
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from unprivileged import as_nobody, open_folder

from tfgancompress import atomic, export, latency, reports

OLD = b"previous complete content\n"


def _partials(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".partial" in p.name)


@contextlib.contextmanager
def _file_size_limit(size: int):
    """Writes beyond `size` bytes fail with EFBIG (Python ignores SIGXFSZ)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (size, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))


def _assert_untouched(path: Path) -> None:
    assert path.read_bytes() == OLD
    assert _partials(path.parent) == []


# ------------------------------------------------------------------ helper


def test_atomic_write_replaces_the_file_with_usual_permissions(tmp_path):
    path = tmp_path / "report.json"
    path.write_bytes(OLD)
    with atomic.atomic_write(path) as file:
        json.dump({"psnr": 23.6}, file)
        assert path.read_bytes() == OLD  # nothing visible before the end
    assert json.loads(path.read_text()) == {"psnr": 23.6}
    plain = tmp_path / "plain"
    plain.write_text("")
    assert path.stat().st_mode == plain.stat().st_mode
    assert _partials(tmp_path) == []


def test_an_exception_mid_write_keeps_the_previous_file(tmp_path):
    path = tmp_path / "g.tflite"
    path.write_bytes(OLD)
    with (
        pytest.raises(RuntimeError, match="converter died"),
        atomic.atomic_write(path, "wb") as file,
    ):
        file.write(b"\0" * 10_000)
        raise RuntimeError("converter died")
    _assert_untouched(path)
    new = tmp_path / "new.tflite"
    with pytest.raises(RuntimeError), atomic.atomic_write(new, "wb") as file:
        file.write(b"half")
        raise RuntimeError
    assert not new.exists()
    assert _partials(tmp_path) == []


def test_a_full_disk_mid_write_keeps_the_previous_file(tmp_path):
    path = tmp_path / "big.bin"
    path.write_bytes(OLD)
    with (
        pytest.raises(OSError) as info,
        _file_size_limit(1024),
        atomic.atomic_write(path, "wb") as file,
    ):
        for _ in range(64):
            file.write(b"x" * 512)
            file.flush()
    assert info.value.errno == errno.EFBIG
    _assert_untouched(path)


_WRITER = """
import importlib.util, sys, time
spec = importlib.util.spec_from_file_location("atomic", sys.argv[1])
atomic = importlib.util.module_from_spec(spec)
spec.loader.exec_module(atomic)
if sys.argv[3] == "atomic":
    context = atomic.atomic_write(sys.argv[2], "wb")
else:
    context = open(sys.argv[2], "wb")
with context as file:
    for chunk in range(1000):
        file.write(b"x" * 4096)
        file.flush()
        if chunk == 10:
            print("half", flush=True)
            time.sleep(60)
"""


@pytest.mark.parametrize("writer", ["atomic", "plain"])
def test_sigkill_mid_write(tmp_path, writer):
    path = tmp_path / "killed.bin"
    path.write_bytes(OLD)
    command = [sys.executable, "-c", textwrap.dedent(_WRITER)]
    process = subprocess.Popen(
        [*command, atomic.__file__, str(path), writer],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout.readline() == "half\n"
        process.kill()
    finally:
        process.wait(timeout=30)
    if writer == "plain":  # control: the failure this module prevents
        assert 0 < path.stat().st_size < 1000 * 4096
        assert path.read_bytes() != OLD
    else:
        assert path.read_bytes() == OLD
        (leftover,) = _partials(tmp_path)  # hidden, never the destination
        assert leftover.startswith(".killed.bin.")


def test_folders_are_replaced_whole(tmp_path):
    folder = tmp_path / "saved_model"
    folder.mkdir()
    (folder / "old_only.txt").write_text("old")
    with atomic.atomic_path(folder, directory=True) as temporary:
        Path(temporary, "saved_model.pb").write_text("new")
    assert sorted(p.name for p in folder.iterdir()) == ["saved_model.pb"]
    with (
        pytest.raises(RuntimeError),
        atomic.atomic_path(folder, directory=True) as temporary,
    ):
        Path(temporary, "half").write_text("x")
        raise RuntimeError
    assert sorted(p.name for p in folder.iterdir()) == ["saved_model.pb"]
    assert _partials(tmp_path) == []


def test_destination_errors_name_the_path(tmp_path):
    def open_and_close(path, **kwargs):
        with atomic.atomic_path(path, **kwargs):
            pass

    with pytest.raises(FileNotFoundError, match=r"missing/r\.json: its folder .*"):
        open_and_close(tmp_path / "missing" / "r.json")
    with pytest.raises(IsADirectoryError, match="it is a folder"):
        open_and_close(tmp_path)
    (tmp_path / "file").write_text("")
    with pytest.raises(NotADirectoryError, match="is a file"):
        open_and_close(tmp_path / "file", directory=True)
    with pytest.raises(ValueError, match="mode must be"):
        atomic.atomic_write(tmp_path / "x", "a").__enter__()
    with open_folder() as folder:
        locked = folder / "locked"
        locked.mkdir(mode=0o555)
        with as_nobody(), pytest.raises(PermissionError) as info:
            open_and_close(locked / "r.json")
        message = f"Cannot write {locked}/r.json: its folder {locked} is not writable"
        assert message in str(info.value)
        assert list(locked.iterdir()) == []


# ------------------------------------------------- the library's writers


def test_write_report_keeps_the_previous_report(tmp_path):
    (tmp_path / "report.json").write_bytes(OLD)
    (tmp_path / "report.md").write_bytes(OLD)
    report = {"psnr": 23.6, "zzz": object()}  # json fails halfway through
    with pytest.raises(TypeError, match="not JSON serializable"):
        reports.write_report(str(tmp_path), "report", report, "| psnr |")
    _assert_untouched(tmp_path / "report.json")
    _assert_untouched(tmp_path / "report.md")
    reports.write_report(str(tmp_path), "report", {"psnr": 23.6}, "| psnr |")
    assert json.loads((tmp_path / "report.json").read_text()) == {"psnr": 23.6}
    assert (tmp_path / "report.md").read_text() == "| psnr |"


def test_image_grid_and_channel_chart_keep_the_previous_file(tmp_path):
    noise = np.random.default_rng(0).uniform(-1, 1, (2, 64, 64, 3))
    grid = tmp_path / "samples.png"
    grid.write_bytes(OLD)
    with pytest.raises(OSError), _file_size_limit(1024):
        reports.save_image_grid(str(grid), [noise, noise])
    _assert_untouched(grid)
    reports.save_image_grid(str(grid), [noise, noise])
    assert grid.read_bytes().startswith(b"\x89PNG")

    chart = tmp_path / "channels.png"
    chart.write_bytes(OLD)
    channels = [
        types.SimpleNamespace(name=f"conv{i}", kept=i, total=8) for i in range(8)
    ]
    with pytest.raises(OSError), _file_size_limit(1024):
        reports.plot_channels(channels, str(chart))
    _assert_untouched(chart)


def test_latency_report_keeps_the_previous_json(tmp_path):
    prefix = tmp_path / "speed"
    Path(f"{prefix}.json").write_bytes(OLD)
    broken = types.SimpleNamespace(
        to_markdown=lambda: "| model | ms |", to_dict=lambda: {"ms": 1, "z": {1j}}
    )
    with pytest.raises(TypeError, match="not JSON serializable"):
        latency.write_report(broken, str(prefix))
    _assert_untouched(Path(f"{prefix}.json"))


def _tiny_model() -> keras.Model:
    inputs = keras.Input((8, 8, 3))
    return keras.Model(inputs, keras.layers.Conv2D(3, 1)(inputs))


def test_to_litert_keeps_the_previous_file_when_the_write_fails(tmp_path, monkeypatch):
    flatbuffer = b"TFL3" + bytes(100_000)  # what the stub converter returns

    class Converter:
        def __init__(self):
            self.target_spec = types.SimpleNamespace()

        def convert(self):
            return flatbuffer

    monkeypatch.setattr(export, "_saved_model_for", lambda *args: None)
    monkeypatch.setattr(
        tf.lite.TFLiteConverter, "from_saved_model", lambda directory: Converter()
    )
    path = tmp_path / "g.tflite"
    path.write_bytes(OLD)
    with pytest.raises(OSError) as info, _file_size_limit(4096):
        export.to_litert(_tiny_model(), path)
    assert info.value.errno == errno.EFBIG
    _assert_untouched(path)
    export.to_litert(_tiny_model(), path)
    assert path.read_bytes() == flatbuffer


def test_onnx_and_saved_model_exports_keep_the_previous_output(tmp_path):
    model = _tiny_model()

    def export_half(target, format, **kwargs):  # noqa: A002 - Keras's name
        if format == "onnx":
            Path(target).write_bytes(b"half an onnx file")
        else:
            Path(target, "saved_model.pb").write_bytes(b"half")
        raise RuntimeError("export died")

    model.export = export_half
    onnx = tmp_path / "g.onnx"
    onnx.write_bytes(OLD)
    with pytest.raises(RuntimeError, match="export died"):
        export.to_onnx(model, onnx)
    _assert_untouched(onnx)

    saved = tmp_path / "saved"
    saved.mkdir()
    (saved / "saved_model.pb").write_bytes(OLD)
    with pytest.raises(RuntimeError, match="export died"):
        export.to_saved_model(model, saved)
    _assert_untouched(saved / "saved_model.pb")
    assert _partials(tmp_path) == []
