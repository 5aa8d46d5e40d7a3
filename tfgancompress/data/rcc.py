"""Reads files out of Qt binary resource bundles (`.rcc`), with no Qt.

GCompris keeps its images in such bundles (`/usr/share/gcompris-qt/rcc/`).
The format is the one Qt's resource compiler writes (`rcc -binary`,
documented in Qt's "The Qt Resource System"), all numbers big-endian:

* header: `b"qres"`, format version (1-3), then the offsets of the tree,
  data and names sections (4 bytes each); version 3 adds 4 bytes of flags;
* tree: fixed-size nodes (14 bytes, 22 from version 2 on, the last 8 a
  modification time). A node starts with its name's offset (4 bytes) and
  its flags (2 bytes: 0x1 zlib-compressed, 0x2 directory, 0x4
  zstd-compressed). A directory then has its child count and the index of
  its first child (4 bytes each); a file has a territory and a language
  (2 bytes each) and its data's offset (4 bytes). Node 0 is the root;
* names: a length in UTF-16 code units (2 bytes), a hash (4 bytes), the
  name in UTF-16-BE;
* data: a length (4 bytes) and the bytes. zlib data is Qt's `qCompress`
  form: the uncompressed length (4 bytes), then a zlib stream.

```python
from tfgancompress.data import rcc

names = rcc.list_files("erase.rcc")
webp_bytes = rcc.read_file("erase.rcc", names[0])
```
"""

from __future__ import annotations

import dataclasses
import functools
import os
import struct
import zlib
from pathlib import Path

_MAGIC = b"qres"
_COMPRESSED = 0x1
_DIRECTORY = 0x2
_COMPRESSED_ZSTD = 0x4


class ResourceError(ValueError):
    """A bundle that is not a readable Qt `.rcc` file, or a missing entry."""


@dataclasses.dataclass(frozen=True)
class _Entry:
    offset: int  # of the stored bytes in the file
    size: int  # stored length
    flags: int


class _Reader:
    """Bounds-checked big-endian reads from a bundle's bytes."""

    def __init__(self, path: Path, data: bytes):
        self.path = path
        self.data = data

    def numbers(self, fmt: str, offset: int) -> tuple[int, ...]:
        end = offset + struct.calcsize(fmt)
        if offset < 0 or end > len(self.data):
            raise ResourceError(
                f"{self.path}: truncated Qt resource bundle (needs bytes "
                f"{offset}..{end}, the file has {len(self.data)})."
            )
        return struct.unpack_from(fmt, self.data, offset)

    def name(self, offset: int) -> str:
        (length,) = self.numbers(">H", offset)
        start = offset + 6  # length and hash
        raw = self.data[start : start + 2 * length]
        if len(raw) != 2 * length:
            raise ResourceError(f"{self.path}: truncated name at offset {offset}.")
        return raw.decode("utf-16-be")


def _index(path: Path) -> dict[str, _Entry]:
    """Every file of a bundle: resource path (`/a/b.webp`) -> where it is."""
    reader = _Reader(path, path.read_bytes())
    if reader.data[:4] != _MAGIC:
        raise ResourceError(
            f"{path}: not a Qt binary resource bundle (starts with "
            f"{reader.data[:4]!r}, expected {_MAGIC!r})."
        )
    version, tree, data, names = reader.numbers(">IIII", 4)
    if not 1 <= version <= 3:
        raise ResourceError(
            f"{path}: Qt resource format version {version}; this reader "
            "knows versions 1 to 3."
        )
    node_size = 14 if version == 1 else 22
    entries: dict[str, _Entry] = {}
    pending = [(0, "")]  # (node index, its resource path)
    seen = set()
    while pending:
        index, node_path = pending.pop()
        if index in seen:
            raise ResourceError(f"{path}: the resource tree has a cycle.")
        seen.add(index)
        node = tree + index * node_size
        _, flags = reader.numbers(">IH", node)
        if flags & _DIRECTORY:
            count, first = reader.numbers(">II", node + 6)
            for child in range(first, first + count):
                (name_offset,) = reader.numbers(">I", tree + child * node_size)
                pending.append(
                    (child, f"{node_path}/{reader.name(names + name_offset)}")
                )
        else:
            (data_offset,) = reader.numbers(">I", node + 10)
            (size,) = reader.numbers(">I", data + data_offset)
            start = data + data_offset + 4
            reader.numbers(f">{size}s", start)  # bounds check
            entries[node_path] = _Entry(start, size, flags)
    return entries


@functools.lru_cache(maxsize=64)
def _cached_index(path: str, mtime_ns: int, size: int) -> dict[str, _Entry]:
    del mtime_ns, size  # part of the cache key: a changed file is re-read
    return _index(Path(path))


def _entries(path: str | os.PathLike) -> dict[str, _Entry]:
    stat = os.stat(path)
    return _cached_index(os.fspath(path), stat.st_mtime_ns, stat.st_size)


def list_files(path: str | os.PathLike) -> list[str]:
    """The files in a Qt resource bundle, as sorted resource paths.

    Args:
        path: The `.rcc` file.

    Returns:
        Paths like `"/gcompris/src/activities/erase/resource/calf.webp"`.

    Raises:
        ResourceError: If the file is not a readable bundle.
        FileNotFoundError: If it does not exist.
    """
    return sorted(_entries(path))


def read_file(path: str | os.PathLike, name: str) -> bytes:
    """The bytes of one file in a Qt resource bundle (decompressed).

    Args:
        path: The `.rcc` file.
        name: The file's resource path, as `list_files` gives it.

    Returns:
        The file's content.

    Raises:
        ResourceError: If the bundle is unreadable, has no such file, or the
            file is zstd-compressed (this reader has no zstd).
        FileNotFoundError: If the bundle does not exist.
    """
    entries = _entries(path)
    if name not in entries:
        raise ResourceError(
            f"{path} has no resource {name!r} ({len(entries)} files; see "
            "rcc.list_files)."
        )
    entry = entries[name]
    with open(path, "rb") as file:
        file.seek(entry.offset)
        stored = file.read(entry.size)
    if entry.flags & _COMPRESSED_ZSTD:
        raise ResourceError(
            f"{path}: {name} is zstd-compressed; this reader decompresses zlib only."
        )
    if entry.flags & _COMPRESSED:
        try:
            return zlib.decompress(stored[4:])
        except zlib.error as e:
            raise ResourceError(f"{path}: {name}: bad zlib data ({e}).") from e
    return stored
