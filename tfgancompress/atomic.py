"""Atomic writes: a result file is complete or absent, never half-written.

Each result (exported model, report, image) is written under a temporary
name in the destination's own folder, flushed to disk, then renamed over the
destination with `os.replace`, which is atomic within one file system. A
write that fails or is killed midway leaves the destination as it was: the
previous file, or none. The temporary name is hidden and keeps the
destination's suffix (Pillow, Keras and matplotlib pick the format from it):
`.<name>.<random>.partial<suffix>`. A killed run can leave such a file
behind; it never leaves a truncated `<name>`.

```python
from tfgancompress.atomic import atomic_path, atomic_write

with atomic_write("report.json") as file:
    json.dump(report, file)

with atomic_path("student.keras") as temporary:
    model.save(temporary)
```
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import IO

_NOT_WRITABLE = (errno.EACCES, errno.EPERM, errno.EROFS)


def _partial_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.{secrets.token_hex(4)}.partial{path.suffix}")


def _cannot_write(path: Path, error: OSError) -> OSError:
    """The error of creating the temporary file, told about the destination."""
    folder = path.parent
    if error.errno in _NOT_WRITABLE:
        reason = f"its folder {folder} is not writable ({error.strerror})"
    elif error.errno == errno.ENOENT:
        reason = f"its folder {folder} does not exist"
    elif error.errno == errno.ENOTDIR:
        reason = f"{folder} is not a folder"
    else:
        reason = f"{error.strerror} in {folder}"
    return type(error)(error.errno, f"Cannot write {path}: {reason}")


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def _fsync(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _commit(temporary: Path, path: Path, directory: bool) -> None:
    """Moves the finished temporary file or folder to `path`."""
    if directory:
        if not temporary.is_dir():
            raise FileNotFoundError(f"Writing {path} left no folder at {temporary}.")
        if path.exists():  # a folder cannot be renamed over a non-empty one
            previous = _partial_name(path)
            os.replace(path, previous)
            os.replace(temporary, path)
            shutil.rmtree(previous, ignore_errors=True)
        else:
            os.replace(temporary, path)
        return
    if not temporary.is_file():
        raise FileNotFoundError(f"Writing {path} left no file at {temporary}.")
    _fsync(temporary)
    os.replace(temporary, path)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, directory: bool = False) -> Iterator[str]:
    """A temporary path to write `path`'s content to; renamed to `path` on success.

    The temporary file (or, with `directory=True`, folder) is created empty
    first, in `path`'s folder and with the usual permissions, so a folder
    that cannot be written is reported before any work, naming `path`. When
    the block raises (or the process dies), `path` is left untouched.

    Args:
        path: The destination file (or folder).
        directory: Whether the writer makes a folder (e.g. a SavedModel); an
            existing folder at `path` is replaced as a whole.

    Yields:
        The temporary path, as a string, with `path`'s suffix.

    Raises:
        PermissionError: If `path`'s folder is not writable.
        FileNotFoundError: If `path`'s folder does not exist, or the writer
            left nothing at the temporary path.
        IsADirectoryError: If `path` is a folder and `directory` is False.
        NotADirectoryError: If `path` is a file and `directory` is True.

    Example:

    >>> with atomic_path("g.onnx") as temporary:
    ...     model.export(temporary, format="onnx")
    """
    path = Path(path)
    if not directory and path.is_dir():
        raise IsADirectoryError(f"Cannot write {path}: it is a folder, not a file.")
    if directory and path.exists() and not path.is_dir():
        raise NotADirectoryError(f"Cannot write folder {path}: it is a file.")
    temporary = _partial_name(path)
    try:
        if directory:
            os.mkdir(temporary)
        else:
            open(temporary, "xb").close()  # noqa: SIM115 - created empty, on purpose
    except OSError as error:
        raise _cannot_write(path, error) from error
    try:
        yield str(temporary)
        _commit(temporary, path, directory)
    except BaseException:
        _remove(temporary)
        raise


@contextlib.contextmanager
def atomic_write(
    path: str | os.PathLike, mode: str = "w", encoding: str | None = "utf-8"
) -> Iterator[IO]:
    """`open(path, mode)` for writing, atomically (see `atomic_path`).

    Args:
        path: The destination file.
        mode: `"w"` (text) or `"wb"` (bytes).
        encoding: Text encoding (ignored for `"wb"`).

    Yields:
        The open file; `path` receives its content when the block ends
        without an exception.

    Raises:
        ValueError: If `mode` is not `"w"` or `"wb"`.
        PermissionError: If `path`'s folder is not writable.
        FileNotFoundError: If `path`'s folder does not exist.

    Example:

    >>> with atomic_write("report.json") as file:
    ...     json.dump(report, file)
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"mode must be 'w' or 'wb', got {mode!r}.")
    with atomic_path(path) as temporary:
        text = {"encoding": encoding} if mode == "w" else {}
        with open(temporary, mode, **text) as file:
            yield file
