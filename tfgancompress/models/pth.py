"""Read PyTorch `.pth` state_dicts without torch, safely.

A `.pth` state_dict is a pickle whose tensors point at raw storages through
pickle persistent ids. Two layouts exist:

- zip (torch >= 1.6): `<archive>/data.pkl`, the raw storages in
  `<archive>/data/<key>`, and `<archive>/byteorder`;
- legacy: a magic-number pickle, a protocol-version pickle, a sys-info
  pickle, the state_dict pickle, a pickle of the storage keys, then each
  storage as an int64 element count followed by its raw bytes.

A checkpoint is untrusted input: unpickling runs arbitrary code unless
restricted, and even a restricted unpickler trusts the sizes a file declares.
Nothing is built from a file before it is checked:

- Every pickle is scanned opcode by opcode first (`pickletools.genops` over
  its bytes, nothing executed). Refused: a `GLOBAL`/`INST` outside the
  whitelist, extension-registry codes, and tuples nested deeper than
  `MAX_TUPLE_DEPTH` (hashing a million nested tuples overflows CPython's C
  stack: a 1 MB pickle would crash the process). A length that runs past the
  end of the data is an error here, before CPython's unpickler would
  allocate the declared length.
- The unpickler's `find_class` resolves only `collections.OrderedDict`,
  torch's tensor/parameter rebuild functions and typed storage classes, to
  local stand-ins that validate their arguments and cannot be mutated by
  `BUILD`; anything else raises `UnsafeCheckpointError`.
- Zip: an entry name with a `..` component, an absolute or backslash path,
  a duplicate name, a compression other than stored/deflate, or a declared
  size the file cannot hold (stored: more than the file; deflate: beyond its
  1032:1 limit) is refused before it is read.
- Every tensor must fit in its storage's declared elements (offset plus
  extent) and hold no more elements than that storage; all tensors together
  at most `MAX_VIEW_RATIO` times their storages. A storage is read only up
  to its declared size, which must fit in its zip entry or in the bytes left
  in the legacy file.

So memory stays bounded by the file's own size (times deflate's ratio for a
compressed zip entry), whatever sizes it declares.
"""

from __future__ import annotations

import collections
import io
import math
import pickle
import pickletools
import re
import struct
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

LEGACY_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL_VERSION = 1001
MAX_TUPLE_DEPTH = 32
MAX_VIEW_RATIO = 4
_DEFLATE_MAX_RATIO = 1032

_STORAGE_DTYPES = {
    "FloatStorage": np.dtype("float32"),
    "DoubleStorage": np.dtype("float64"),
    "HalfStorage": np.dtype("float16"),
    "BFloat16Storage": np.dtype("uint16"),
    "LongStorage": np.dtype("int64"),
    "IntStorage": np.dtype("int32"),
    "ShortStorage": np.dtype("int16"),
    "CharStorage": np.dtype("int8"),
    "ByteStorage": np.dtype("uint8"),
    "BoolStorage": np.dtype("bool"),
    "UntypedStorage": np.dtype("uint8"),
}
_STORAGE_KEY = re.compile(r"[A-Za-z0-9_.-]+")


class UnsafeCheckpointError(pickle.UnpicklingError):
    """A checkpoint would run code, escape its archive or crash when read.

    Raised before any of it happens: a global a state_dict never needs, a zip
    entry pointing outside the archive, or structures built to overflow the
    interpreter's stack.
    """


class CheckpointError(ValueError):
    """A file is not a readable PyTorch state_dict, or does not fit the model."""


class _InvalidError(ValueError):
    """A malformed value inside a pickle (the caller adds the file name)."""


class _NestedError(Exception):
    """Tuples nested deep enough to crash the interpreter when hashed."""


def _immutable(self, state) -> None:
    """`__setstate__` of the stand-ins: a pickle's BUILD may not change them."""
    raise _InvalidError(f"BUILD on a {type(self).__name__.lstrip('_')} refused")


@dataclass(frozen=True, slots=True)
class _StorageType:
    name: str
    __setstate__ = _immutable

    @property
    def dtype(self) -> np.dtype:
        return _STORAGE_DTYPES[self.name]


@dataclass(frozen=True, slots=True)
class _StorageRef:
    key: str
    dtype: np.dtype
    numel: int
    offset: int = 0
    __setstate__ = _immutable


@dataclass(frozen=True, slots=True, eq=False)
class _TensorRef:
    storage: _StorageRef
    offset: int
    size: tuple
    stride: tuple
    __setstate__ = _immutable

    @property
    def elements(self) -> int:
        return math.prod(self.size)

    @property
    def end(self) -> int:
        """One past the last storage element the tensor reads."""
        if 0 in self.size:
            return self.storage.offset + self.offset
        steps = zip(self.size, self.stride, strict=True)
        extent = 1 + sum((n - 1) * s for n, s in steps)
        return self.storage.offset + self.offset + extent


def _count(value, what: str) -> int:
    if not isinstance(value, int) or value < 0:
        raise _InvalidError(f"{what} is {_short(value)}, expected an integer >= 0")
    return int(value)


def _counts(values, what: str) -> tuple:
    if not isinstance(values, tuple | list):
        raise _InvalidError(f"{what} is {_short(values)}, expected a tuple of integers")
    return tuple(_count(v, what) for v in values)


def _short(value) -> str:
    """A repr of an untrusted value, cut to a readable length."""
    try:
        text = repr(value)
    except RecursionError:
        text = f"<deeply nested {type(value).__name__}>"
    return text if len(text) <= 80 else text[:77] + "..."


def _rebuild_tensor(storage, storage_offset, size, stride):
    if not isinstance(storage, _StorageRef):
        raise _InvalidError(f"a tensor's storage is {_short(storage)}, not a storage")
    size = _counts(size, "a tensor size")
    stride = _counts(stride, "a tensor stride")
    if len(size) != len(stride):
        raise _InvalidError(f"tensor size {size} and stride {stride} differ in length")
    return _TensorRef(storage, _count(storage_offset, "a tensor offset"), size, stride)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, *unused):
    return _rebuild_tensor(storage, storage_offset, size, stride)


def _rebuild_parameter(data, *unused):
    if not isinstance(data, _TensorRef):
        raise _InvalidError(f"a parameter wraps {_short(data)}, not a tensor")
    return data


_SAFE_GLOBALS = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    **{("torch", name): _StorageType(name) for name in _STORAGE_DTYPES},
}


def _refuse_global(module: str, name: str, source: str) -> UnsafeCheckpointError:
    return UnsafeCheckpointError(
        f"{source}: refused to load global '{module}.{name}': a PyTorch "
        "state_dict only needs collections.OrderedDict and torch tensor/storage "
        "rebuilders. The file may run code when unpickled; it was not executed."
    )


# Opcodes that return the container they modify (its nesting is unchanged).
_IN_PLACE = {"APPEND", "APPENDS", "SETITEM", "SETITEMS", "ADDITEMS", "BUILD"}
_TUPLES = {"TUPLE", "TUPLE1", "TUPLE2", "TUPLE3", "EMPTY_TUPLE"}
_GETS = {"GET", "BINGET", "LONG_BINGET"}
_PUTS = {"PUT", "BINPUT", "LONG_BINPUT"}
_MARK = None


def _pop_mark(stack: list) -> list:
    for index in range(len(stack) - 1, -1, -1):
        if stack[index] is _MARK:
            items = stack[index + 1 :]
            del stack[index:]
            return items
    raise _InvalidError("MARK expected on the stack")


def _pop(stack: list, count: int) -> list:
    if count == 0:
        return []
    if len(stack) < count or _MARK in stack[-count:]:
        raise _InvalidError("stack underflow")
    items = stack[-count:]
    del stack[-count:]
    return items


def _step(opcode, arg, stack: list, memo: dict) -> None:
    """Applies one opcode's effect on the tuple-nesting depth of each item."""
    name = opcode.name
    before = [s.name for s in opcode.stack_before]
    if "mark" in before:
        popped = _pop_mark(stack)
        below = _pop(stack, before.index("mark"))
    else:
        popped, below = _pop(stack, len(before)), []
    if name == "MARK":
        stack.append(_MARK)
    elif name in _TUPLES:
        depth = 1 + max(popped, default=0)
        if depth > MAX_TUPLE_DEPTH:
            raise _NestedError(depth)
        stack.append(depth)
    elif name in _GETS:
        if arg not in memo:
            raise _InvalidError(f"memo key {arg} read before it is written")
        stack.append(memo[arg])
    elif name in _PUTS:
        if not stack or stack[-1] is _MARK:
            raise _InvalidError("memoizing an empty stack")
        memo[arg] = stack[-1]
    elif name == "MEMOIZE":
        memo[len(memo)] = popped[0]
        stack.append(popped[0])
    elif name == "DUP":
        stack.extend(popped * 2)
    elif name in _IN_PLACE:
        stack.append((below or popped)[0])
    else:
        stack.extend([0] * len(opcode.stack_after))


def _scan(stream: io.BytesIO, source: str) -> int:
    """Checks the pickle starting at `stream`'s position; returns its end.

    Raises:
        UnsafeCheckpointError: On a forbidden global, an extension code or
            too deeply nested tuples.
        CheckpointError: If the bytes are not a well-formed pickle (a
            declared length beyond the data included).
    """
    stack: list = []
    memo: dict = {}
    position = stream.tell()
    try:
        for opcode, arg, position in pickletools.genops(stream):
            if opcode.name in ("GLOBAL", "INST"):
                module, _, name = arg.partition(" ")
                if (module, name) not in _SAFE_GLOBALS:
                    raise _refuse_global(module, name, source)
            elif opcode.name.startswith("EXT"):
                raise UnsafeCheckpointError(
                    f"{source}: refused extension-registry opcode {opcode.name} "
                    f"(code {arg}) at byte {position}: it names an arbitrary "
                    "global; state_dicts never use it."
                )
            _step(opcode, arg, stack, memo)
    except _NestedError as error:
        raise UnsafeCheckpointError(
            f"{source}: refused: tuples nested {error} deep near byte {position} "
            f"(a state_dict needs a few levels, the limit is {MAX_TUPLE_DEPTH}); "
            "hashing them would overflow the interpreter's stack."
        ) from None
    except (ValueError, EOFError, struct.error) as error:
        raise CheckpointError(
            f"{source}: not a readable PyTorch checkpoint pickle (near byte "
            f"{position}: {error})."
        ) from None
    return position + 1


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that only builds state_dicts and records storage references."""

    def __init__(self, file, source: str):
        super().__init__(file, encoding="utf-8")
        self.source = source
        self.storages: dict[str, _StorageRef] = {}

    def find_class(self, module, name):
        try:
            return _SAFE_GLOBALS[(module, name)]
        except KeyError:
            raise _refuse_global(module, name, self.source) from None

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
            raise _InvalidError(
                f"unexpected persistent id {_short(pid)} (expected a "
                "('storage', type, key, location, numel, ...) tuple)"
            )
        storage_type, key = pid[1], pid[2]
        if (
            not isinstance(key, str)
            or not _STORAGE_KEY.fullmatch(key)
            or not key.strip(".")
        ):
            raise UnsafeCheckpointError(
                f"{self.source}: refused storage key {_short(key)}: expected a "
                "name of letters, digits, '_', '.', '-' (no path)."
            )
        if not isinstance(storage_type, _StorageType):
            raise _InvalidError(
                f"storage {key!r} has type {_short(storage_type)}, not a torch "
                "storage class"
            )
        numel = _count(pid[4], f"the element count of storage {key!r}")
        view = pid[5] if len(pid) > 5 else None
        offset = 0
        if view is not None:
            if not isinstance(view, tuple) or len(view) < 2:
                raise _InvalidError(f"storage {key!r} has view {_short(view)}")
            offset = _count(view[1], f"the view offset into storage {key!r}")
        ref = _StorageRef(key, storage_type.dtype, numel)
        known = self.storages.setdefault(key, ref)
        if known != ref:
            raise _InvalidError(
                f"storage {key!r} is declared as {known.numel} x {known.dtype} "
                f"and as {numel} x {ref.dtype}"
            )
        return _StorageRef(key, ref.dtype, numel, offset)


def _unpickle(data: bytes, start: int, source: str):
    """Scans, then unpickles the pickle at `data[start:]`.

    Returns:
        `(object, end, storages)`: the object, the offset after its STOP,
        and the storages its persistent ids declared (by key).
    """
    stream = io.BytesIO(data)
    stream.seek(start)
    end = _scan(stream, source)
    unpickler = _RestrictedUnpickler(io.BytesIO(data[start:end]), source)
    try:
        obj = unpickler.load()
    except (UnsafeCheckpointError, CheckpointError):
        raise
    except _InvalidError as error:
        raise CheckpointError(f"{source}: {error}.") from None
    except Exception as error:  # a malformed pickle raises almost any type
        raise CheckpointError(
            f"{source}: not a readable PyTorch checkpoint pickle "
            f"({type(error).__name__}: {error})."
        ) from None
    return obj, end, unpickler.storages


def _tensors(obj, source: str) -> dict[str, _TensorRef]:
    """The named tensors of an unpickled state_dict (top level only)."""
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise CheckpointError(
            f"{source}: holds {type(obj).__name__}, not a state_dict."
        )
    tensors = {}
    for key, value in obj.items():
        if isinstance(value, _TensorRef):
            if not isinstance(key, str):
                raise CheckpointError(
                    f"{source}: a tensor is named {_short(key)}; state_dict keys "
                    "are strings."
                )
            tensors[key] = value
    if not tensors:
        raise CheckpointError(
            f"{source}: holds a dict without tensors, not a state_dict."
        )
    if all(key.startswith("module.") for key in tensors):
        tensors = {key[len("module.") :]: value for key, value in tensors.items()}
    return tensors


def _check_fit(tensors: dict[str, _TensorRef], source: str) -> None:
    """Every tensor within its storage's declared elements; no blow-up by views."""
    for name, ref in tensors.items():
        storage = ref.storage
        if ref.end > storage.numel or ref.elements > storage.numel:
            raise CheckpointError(
                f"{source}: tensor {name!r} of size {ref.size} (stride "
                f"{ref.stride}, offset {storage.offset + ref.offset}) needs "
                f"{max(ref.end, ref.elements)} elements, but its storage "
                f"{storage.key!r} declares {storage.numel}: corrupt or hostile."
            )
    storages = {ref.storage.key: ref.storage for ref in tensors.values()}
    stored = sum(s.numel * s.dtype.itemsize for s in storages.values())
    viewed = sum(r.elements * r.storage.dtype.itemsize for r in tensors.values())
    if viewed > MAX_VIEW_RATIO * stored:
        raise CheckpointError(
            f"{source}: its {len(tensors)} tensors would copy {viewed} bytes out "
            f"of {stored} bytes of storage (more than {MAX_VIEW_RATIO}x: the same "
            "storage viewed over and over)."
        )


def _storage_array(raw, dtype: np.dtype, byteorder: str) -> np.ndarray:
    array = np.frombuffer(raw, dtype=dtype)
    if byteorder == "big" and dtype.itemsize > 1:
        array = array.byteswap()
    return array


def _check_zip_names(infos: list, source: str) -> None:
    seen = set()
    for info in infos:
        name = info.filename
        parts = name.split("/")
        if (
            name.startswith("/")
            or "\\" in name
            or "\0" in name
            or ".." in parts
            or re.match(r"[A-Za-z]:", name)
        ):
            raise UnsafeCheckpointError(
                f"{source}: refused zip entry {name!r}: it points outside the "
                "archive (absolute path, drive, backslash or '..')."
            )
        if name in seen:
            raise CheckpointError(
                f"{source}: zip entry {name!r} appears twice: ambiguous archive."
            )
        seen.add(name)


def _read_entry(archive, info, size: int, disk_size: int, source: str) -> bytes:
    """Reads the first `size` bytes of a zip entry after checking its header."""
    name = info.filename
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        raise CheckpointError(
            f"{source}: zip entry {name!r} uses compression method "
            f"{info.compress_type}; PyTorch stores entries uncompressed (deflate "
            "is read too)."
        )
    if info.compress_size > disk_size:
        raise CheckpointError(
            f"{source}: zip entry {name!r} declares {info.compress_size} bytes, "
            f"but the whole file has {disk_size}: truncated, corrupt or hostile."
        )
    ratio = 1 if info.compress_type == zipfile.ZIP_STORED else _DEFLATE_MAX_RATIO
    if info.file_size > ratio * info.compress_size + 1024 * (ratio > 1):
        raise CheckpointError(
            f"{source}: zip entry {name!r} declares {info.file_size} bytes from "
            f"{info.compress_size} compressed, more than its compression can "
            "give: corrupt or hostile."
        )
    with archive.open(info) as entry:
        data = entry.read(size)
    if len(data) < size:
        raise CheckpointError(
            f"{source}: zip entry {name!r} holds {len(data)} bytes, {size} "
            "expected: the file is truncated or corrupt."
        )
    return data


def _read_zip(path: Path, source: str):
    disk_size = path.stat().st_size
    with zipfile.ZipFile(path) as archive:
        infos = archive.infolist()
        _check_zip_names(infos, source)
        entries = {info.filename: info for info in infos}
        pickles = sorted(
            (n for n in entries if n.rpartition("/")[2] == "data.pkl"), key=len
        )
        if not pickles:
            raise CheckpointError(
                f"{source}: zip archive without a data.pkl: not a PyTorch checkpoint."
            )
        prefix = pickles[0][: -len("data.pkl")]
        byteorder = "little"
        if f"{prefix}byteorder" in entries:
            info = entries[f"{prefix}byteorder"]
            raw = _read_entry(archive, info, min(info.file_size, 16), disk_size, source)
            byteorder = raw.decode("ascii", errors="replace").strip()
            if byteorder not in ("little", "big"):
                raise CheckpointError(
                    f"{source}: byteorder entry says {byteorder!r}, expected "
                    "'little' or 'big'."
                )
        info = entries[pickles[0]]
        data = _read_entry(archive, info, info.file_size, disk_size, source)
        obj, _, _ = _unpickle(data, 0, source)
        tensors = _tensors(obj, source)
        _check_fit(tensors, source)
        storages = {}
        for ref in tensors.values():
            storage = ref.storage
            if storage.key in storages:
                continue
            entry = f"{prefix}data/{storage.key}"
            if entry not in entries:
                raise CheckpointError(f"{source}: storage entry {entry!r} is missing.")
            size = storage.numel * storage.dtype.itemsize
            if entries[entry].file_size < size:
                raise CheckpointError(
                    f"{source}: storage {storage.key!r} declares {storage.numel} "
                    f"elements ({size} bytes) but its entry {entry!r} holds "
                    f"{entries[entry].file_size} bytes: truncated or corrupt."
                )
            raw = _read_entry(archive, entries[entry], size, disk_size, source)
            storages[storage.key] = _storage_array(raw, storage.dtype, byteorder)
    return tensors, storages


def _read_legacy(path: Path, source: str):
    data = path.read_bytes()
    magic, end, _ = _unpickle(data, 0, source)
    if magic != LEGACY_MAGIC_NUMBER:
        raise CheckpointError(
            f"{source}: a pickle, but not a PyTorch checkpoint (magic number "
            f"{_short(magic)}, expected {LEGACY_MAGIC_NUMBER:#x})."
        )
    protocol, end, _ = _unpickle(data, end, source)
    if protocol != LEGACY_PROTOCOL_VERSION:
        raise CheckpointError(
            f"{source}: unsupported legacy protocol {_short(protocol)}, expected "
            f"{LEGACY_PROTOCOL_VERSION}."
        )
    sys_info, end, _ = _unpickle(data, end, source)
    little = not isinstance(sys_info, dict) or sys_info.get("little_endian", True)
    order = "little" if little else "big"
    obj, end, declared = _unpickle(data, end, source)
    keys, end, _ = _unpickle(data, end, source)
    tensors = _tensors(obj, source)
    _check_fit(tensors, source)
    if not isinstance(keys, list) or set(map(type, keys)) - {str}:
        raise CheckpointError(
            f"{source}: the storage key list is {_short(keys)}, expected strings."
        )
    storages = {}
    for key in keys:
        if key not in declared or key in storages:
            raise CheckpointError(
                f"{source}: storage key {key!r} is "
                f"{'listed twice' if key in storages else 'never used by a tensor'}."
            )
        dtype = declared[key].dtype
        if end + 8 > len(data):
            raise CheckpointError(
                f"{source}: truncated legacy checkpoint: storage {key!r} is missing."
            )
        numel = int.from_bytes(data[end : end + 8], order, signed=True)
        remaining = len(data) - end - 8
        if numel < 0 or numel * dtype.itemsize > remaining:
            raise CheckpointError(
                f"{source}: storage {key!r} declares {numel} elements "
                f"({numel * dtype.itemsize} bytes) but {remaining} bytes remain: "
                "the file is truncated or corrupt."
            )
        raw = memoryview(data)[end + 8 : end + 8 + numel * dtype.itemsize]
        storages[key] = _storage_array(raw, dtype, order)
        end += 8 + numel * dtype.itemsize
    missing = {ref.storage.key for ref in tensors.values()} - set(storages)
    if missing:
        raise CheckpointError(f"{source}: storages {sorted(missing)} are missing.")
    return tensors, storages


def _materialize(ref: _TensorRef, flat: np.ndarray, name: str, source: str):
    if ref.end > flat.size:
        raise CheckpointError(
            f"{source}: tensor {name!r} needs {ref.end} elements of storage "
            f"{ref.storage.key!r}, which holds {flat.size}: truncated or corrupt."
        )
    if 0 in ref.size:
        return np.zeros(ref.size, flat.dtype)
    start = ref.storage.offset + ref.offset
    array = np.lib.stride_tricks.as_strided(
        flat[start:], shape=ref.size, strides=[s * flat.itemsize for s in ref.stride]
    ).copy()
    if ref.storage.dtype == np.dtype("uint16"):
        return (array.astype(np.uint32) << 16).view(np.float32)
    return array


def load_pytorch_state_dict(path) -> dict[str, np.ndarray]:
    """Reads a PyTorch `state_dict` `.pth` file into NumPy arrays, without torch.

    Both the zip (torch >= 1.6) and the legacy layout are read through a
    restricted unpickler, after the checks in this module's docstring. A
    `module.` prefix (DataParallel) is stripped and a `{"state_dict": ...}`
    wrapper unwrapped; entries that are not tensors are dropped.

    Args:
        path: Path of the `.pth` file.

    Returns:
        A dict from parameter/buffer name to a NumPy array (PyTorch layout,
        e.g. conv weights `(out, in, kh, kw)`).

    Raises:
        FileNotFoundError: If `path` does not exist.
        UnsafeCheckpointError: If the pickle refers to any global outside the
            state_dict whitelist (e.g. `os.system`), a zip entry points
            outside the archive, or the pickle nests tuples to crash the
            interpreter; nothing is executed.
        CheckpointError: If the file is not a PyTorch checkpoint, is
            truncated, declares sizes its data does not hold, or holds no
            dict of tensors.

    Example:

    >>> state = load_pytorch_state_dict("latest_net_G.pth")
    >>> state["model.1.weight"].shape
    (64, 3, 7, 7)
    """
    path = Path(path)
    source = str(path)
    if not path.is_file():
        raise FileNotFoundError(f"No PyTorch checkpoint at {path}.")
    with open(path, "rb") as file:
        head = file.read(4)
    if head == b"PK\x03\x04":
        try:
            tensors, storages = _read_zip(path, source)
        except (CheckpointError, UnsafeCheckpointError):
            raise
        except (
            zipfile.BadZipFile,
            zipfile.LargeZipFile,
            EOFError,
            zlib.error,
            NotImplementedError,
            RuntimeError,
            ValueError,
            struct.error,
        ) as error:
            raise CheckpointError(
                f"{source}: truncated or corrupt zip checkpoint ({error})."
            ) from error
    elif head[:1] == b"\x80":
        tensors, storages = _read_legacy(path, source)
    else:
        raise CheckpointError(
            f"{path}: not a PyTorch checkpoint (starts with {head!r}; expected a "
            "zip archive or a pickle)."
        )
    return {
        name: _materialize(ref, storages[ref.storage.key], name, source)
        for name, ref in tensors.items()
    }
