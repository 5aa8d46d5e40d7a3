"""Hostile `.pth` files: each is refused with a specific error, without side
effects and without allocating what it declares.

Every file is written here by hand (`pth_files.py`, no torch). Payloads that
would run code create a marker file when unpickled by plain `pickle` (a
control test proves each one live); the loader must refuse them and leave no
marker. Size attacks declare up to 10^12 elements in files of a few hundred
bytes; the loader must fail within a second with tracemalloc's peak under a
few MB.
"""

from __future__ import annotations

import contextlib
import io
import pickle
import struct
import subprocess
import sys
import textwrap
import time
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest
from pth_files import (
    Tensor,
    empty_ordered_dict,
    legacy_file,
    legacy_headers,
    op_global,
    op_int,
    op_text,
    op_tuple,
    state_dict_pickle,
    zip_file,
)

from tfgancompress.models import (
    CheckpointError,
    UnsafeCheckpointError,
    load_pytorch_generator,
    load_pytorch_state_dict,
    pth,
)

PTH_MODULE = Path(pth.__file__)
PROTO2 = pickle.PROTO + b"\x02"
SIX_FLOATS = np.arange(6, dtype=np.float32).tobytes()
PEAK_BYTES = 4 * 2**20  # tracemalloc peak allowed for a refused file
SECONDS = 1.0


# ------------------------------------------------------------- code payloads


def _call(function: bytes, *args: bytes) -> bytes:
    return function + op_tuple(list(args)) + pickle.REDUCE


def _shell(marker: Path) -> bytes:
    return op_text(f"touch {marker}")


def _python(marker: Path) -> bytes:
    return op_text(f"open({str(marker)!r}, 'w').close()")


def _argv(marker: Path) -> bytes:
    return pickle.MARK + op_text("touch") + op_text(str(marker)) + pickle.LIST


PAYLOADS = {
    "os.system": lambda m: _call(op_global("os", "system"), _shell(m)),
    # What `pickle.dumps(os.system)` writes on Linux.
    "posix.system": lambda m: _call(op_global("posix", "system"), _shell(m)),
    "subprocess.call": lambda m: _call(op_global("subprocess", "call"), _argv(m)),
    "subprocess.Popen": lambda m: _call(op_global("subprocess", "Popen"), _argv(m)),
    "builtins.eval": lambda m: _call(op_global("builtins", "eval"), _python(m)),
    "builtins.exec": lambda m: _call(op_global("builtins", "exec"), _python(m)),
    # getattr(__import__("os"), "system")("touch marker")
    "builtins.getattr": lambda m: _call(
        _call(
            op_global("builtins", "getattr"),
            _call(op_global("builtins", "__import__"), op_text("os")),
            op_text("system"),
        ),
        _shell(m),
    ),
    "builtins.__import__": lambda m: (
        _call(op_global("builtins", "__import__"), op_text("os"))
        + pickle.POP
        + _call(op_global("os", "system"), _shell(m))
    ),
    # Protocol 4 spelling: module and name come from the stack.
    "os.system (STACK_GLOBAL)": lambda m: _call(
        op_text("os") + op_text("system") + pickle.STACK_GLOBAL, _shell(m)
    ),
    # Protocol 0 INST and OBJ call their class with the arguments after MARK.
    "os.system (INST)": lambda m: pickle.MARK + _shell(m) + b"ios\nsystem\n",
    "os.system (OBJ)": lambda m: (
        pickle.MARK + op_global("os", "system") + _shell(m) + pickle.OBJ
    ),
    # A whitelisted callable around a forbidden one.
    "nested REDUCE": lambda m: _call(
        op_global("collections", "OrderedDict"),
        pickle.MARK
        + op_tuple(
            [op_text("weight"), _call(op_global("builtins", "exec"), _python(m))]
        )
        + pickle.LIST,
    ),
    # A forbidden call where the storage of a tensor belongs (memoized first,
    # so that plain pickle runs it before failing to import torch).
    "nested REDUCE in a tensor": lambda m: (
        _call(op_global("os", "system"), _shell(m))
        + pickle.BINPUT
        + b"\x00"
        + pickle.POP
        + _call(
            op_global("torch._utils", "_rebuild_tensor_v2"),
            pickle.BINGET + b"\x00",
            op_int(0),
            op_tuple([op_int(6)]),
            op_tuple([op_int(1)]),
        )
    ),
}
REFUSED_GLOBAL = {
    "os.system (STACK_GLOBAL)": "os.system",
    "os.system (INST)": "os.system",
    "os.system (OBJ)": "os.system",
    "nested REDUCE": "builtins.exec",
    "nested REDUCE in a tensor": "os.system",
}


def _payload(name: str, marker: Path) -> bytes:
    return PROTO2 + PAYLOADS[name](marker) + pickle.STOP


def _write(path: Path, layout: str, pickled: bytes) -> Path:
    """A checkpoint whose state_dict (or first legacy) pickle is `pickled`."""
    if layout == "zip":
        zip_file(path, pickled, {"0": SIX_FLOATS})
    elif layout == "legacy":
        legacy_file(path, pickled, [("0", 6, SIX_FLOATS)])
    else:  # the legacy magic-number pickle itself
        path.write_bytes(pickled + legacy_headers())
    return path


@pytest.mark.parametrize("name", PAYLOADS)
def test_payloads_run_code_under_plain_pickle(tmp_path, name):
    """Control: the corpus is live, so refusing it means something."""
    marker = tmp_path / "pwned"
    with contextlib.suppress(Exception):  # what matters is the side effect
        pickle.loads(_payload(name, marker))
    for _ in range(50):  # subprocess.Popen returns before `touch` finishes
        if marker.exists():
            break
        time.sleep(0.05)
    assert marker.exists()


@pytest.mark.parametrize("layout", ["zip", "legacy", "legacy-first-pickle"])
@pytest.mark.parametrize("name", PAYLOADS)
def test_code_payloads_are_refused_without_side_effects(tmp_path, layout, name):
    marker = tmp_path / "pwned"
    path = _write(tmp_path / "evil.pth", layout, _payload(name, marker))
    refused = REFUSED_GLOBAL.get(name, name)
    with pytest.raises(
        UnsafeCheckpointError, match=f"refused to load global '{refused}'"
    ):
        load_pytorch_generator(path)
    if "Popen" in name:
        time.sleep(0.2)  # a spawned `touch` would have run by now
    assert not marker.exists()


@pytest.mark.parametrize(
    "module_name",
    [
        "__main__.Exploit",
        "builtins.open",
        "collections.defaultdict",
        "copyreg._reconstructor",
        "numpy.core.multiarray._reconstruct",
        "torch.load",
        "torch.nn.modules.conv.Conv2d",
        "torch._utils._rebuild_device_tensor_from_numpy",
        "shutil.rmtree",
    ],
)
@pytest.mark.parametrize("opcode", ["GLOBAL", "STACK_GLOBAL"])
def test_any_global_outside_the_whitelist_is_refused(tmp_path, module_name, opcode):
    module, _, name = module_name.rpartition(".")
    if opcode == "GLOBAL":
        callable_ = op_global(module, name)
    else:
        callable_ = op_text(module) + op_text(name) + pickle.STACK_GLOBAL
    pickled = PROTO2 + _call(callable_) + pickle.STOP
    path = _write(tmp_path / "global.pth", "zip", pickled)
    with pytest.raises(UnsafeCheckpointError, match=f"global '{module_name}'"):
        load_pytorch_state_dict(path)


def test_extension_registry_codes_are_refused(tmp_path):
    # EXT1 names a global through copyreg's registry, bypassing its name.
    pickled = PROTO2 + pickle.EXT1 + b"\x01" + pickle.STOP
    path = _write(tmp_path / "ext.pth", "zip", pickled)
    with pytest.raises(UnsafeCheckpointError, match="extension-registry opcode EXT1"):
        load_pytorch_state_dict(path)


# ------------------------------------------- misuse of the whitelisted globals


def _one_tensor(tensor_pickle: bytes) -> bytes:
    """An OrderedDict {"model.1.weight": <tensor_pickle>}."""
    return b"".join(
        [
            PROTO2,
            empty_ordered_dict(),
            op_text("model.1.weight"),
            tensor_pickle,
            pickle.SETITEM,
            pickle.STOP,
        ]
    )


def _storage(key: str = "0", numel: int = 6, name: str = "FloatStorage") -> bytes:
    fields = [op_text("storage"), op_global("torch", name), op_text(key)]
    return op_tuple([*fields, op_text("cpu"), op_int(numel)]) + pickle.BINPERSID


def _rebuild(storage: bytes, size=(2, 3), stride=(3, 1), offset=0) -> bytes:
    return _call(
        op_global("torch._utils", "_rebuild_tensor_v2"),
        storage,
        op_int(offset),
        op_tuple([op_int(n) for n in size]),
        op_tuple([op_int(s) for s in stride]),
    )


MISUSES = {
    "BUILD rewrites a tensor": (
        _rebuild(_storage())
        + pickle.EMPTY_DICT
        + op_text("size")
        + op_tuple([op_int(10**6)])
        + pickle.SETITEM
        + pickle.BUILD,
        "BUILD on a TensorRef refused",
    ),
    "a dict as storage": (
        _rebuild(empty_ordered_dict()),
        r"a tensor's storage is OrderedDict\(\), not a storage",
    ),
    "calling a storage class": (
        _call(op_global("torch", "FloatStorage"), op_int(6)),
        "TypeError: '_StorageType' object is not callable",
    ),
    "a parameter around a tuple": (
        _call(op_global("torch._utils", "_rebuild_parameter"), op_tuple([])),
        r"a parameter wraps \(\), not a tensor",
    ),
    "a text persistent id": (
        pickle.PERSID + b"storage\n",
        "unexpected persistent id 'storage'",
    ),
    "a negative size": (
        _rebuild(_storage(), size=(-2, 3)),
        "a tensor size is -2, expected an integer >= 0",
    ),
    "a float offset": (
        _call(
            op_global("torch._utils", "_rebuild_tensor_v2"),
            _storage(),
            pickle.BINFLOAT + struct.pack(">d", 0.5),
            op_tuple([op_int(6)]),
            op_tuple([op_int(1)]),
        ),
        "a tensor offset is 0.5, expected an integer >= 0",
    ),
    "one storage, two dtypes": (
        _rebuild(_storage()) + pickle.POP + _rebuild(_storage(name="HalfStorage")),
        r"storage '0' is declared as 6 x float32 and as 6 x float16",
    ),
}


@pytest.mark.parametrize("layout", ["zip", "legacy"])
@pytest.mark.parametrize("name", MISUSES)
def test_whitelisted_globals_cannot_be_misused(tmp_path, layout, name):
    tensor_pickle, message = MISUSES[name]
    path = _write(tmp_path / "misuse.pth", layout, _one_tensor(tensor_pickle))
    with pytest.raises(CheckpointError, match=message):
        load_pytorch_state_dict(path)


def test_storage_key_with_a_path_is_refused(tmp_path):
    pickled = _one_tensor(_rebuild(_storage(key="../../etc/passwd")))
    path = _write(tmp_path / "key.pth", "zip", pickled)
    with pytest.raises(UnsafeCheckpointError, match="storage key '../../etc/passwd'"):
        load_pytorch_state_dict(path)


# --------------------------------------------------------- zip structure


def _honest_pickle() -> bytes:
    return state_dict_pickle({"model.1.weight": Tensor("0", 6, (2, 3), (3, 1))})


@pytest.mark.parametrize(
    "entry",
    [
        "../data.pkl",
        "archive/data/../../../escape",
        "/etc/data.pkl",
        "C:/archive/data.pkl",
        "archive\\..\\data.pkl",
    ],
)
def test_zip_entries_outside_the_archive_are_refused(tmp_path, entry):
    path = tmp_path / "slip.pth"
    zip_file(path, _honest_pickle(), {"0": SIX_FLOATS})
    with zipfile.ZipFile(path, "a") as archive:
        archive.writestr(entry, _honest_pickle())
    with pytest.raises(UnsafeCheckpointError, match="points outside the archive"):
        load_pytorch_state_dict(path)
    assert not (tmp_path.parent / "escape").exists()


def test_duplicate_and_compressed_entries(tmp_path):
    path = tmp_path / "twice.pth"
    zip_file(path, _honest_pickle(), {"0": SIX_FLOATS})
    with (
        pytest.warns(UserWarning, match="Duplicate name"),
        zipfile.ZipFile(path, "a") as archive,
    ):
        archive.writestr("archive/data/0", np.ones(6, np.float32).tobytes())
    with pytest.raises(CheckpointError, match="'archive/data/0' appears twice"):
        load_pytorch_state_dict(path)

    path = tmp_path / "bzip2.pth"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_BZIP2) as archive:
        archive.writestr("archive/data.pkl", _honest_pickle())
        archive.writestr("archive/data/0", SIX_FLOATS)
    with pytest.raises(CheckpointError, match="compression method 12"):
        load_pytorch_state_dict(path)

    path = tmp_path / "deflate.pth"  # deflate is read: re-zipped checkpoints
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("archive/data.pkl", _honest_pickle())
        archive.writestr("archive/data/0", SIX_FLOATS)
    state = load_pytorch_state_dict(path)
    np.testing.assert_array_equal(state["model.1.weight"], np.arange(6).reshape(2, 3))


# ------------------------------------------------------------- size attacks


def _refused_fast(path: Path, error, match: str) -> None:
    """Loading `path` raises `error`, quickly and with a small memory peak."""
    tracemalloc.start()
    start = time.perf_counter()
    try:
        with pytest.raises(error, match=match):
            load_pytorch_state_dict(path)
        seconds = time.perf_counter() - start
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert seconds < SECONDS
    assert peak < PEAK_BYTES


def _patch_sizes(path: Path, entry: str, compressed: int, uncompressed: int):
    """Rewrites an entry's sizes in the zip's central directory."""
    data = bytearray(path.read_bytes())
    name = entry.encode()
    header = data.index(b"PK\x01\x02")
    while data[header + 46 : header + 46 + len(name)] != name:
        header = data.index(b"PK\x01\x02", header + 4)
    struct.pack_into("<II", data, header + 20, compressed, uncompressed)
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("layout", ["zip", "legacy"])
@pytest.mark.parametrize(
    ("tensor", "needed"),
    [
        (Tensor("0", 6, (7,), (1,)), 7),  # one element more than stored
        (Tensor("0", 6, (2, 3), (3, 1), offset=5), 11),  # offset past the end
        (Tensor("0", 6, (2, 3), (4, 1)), 7),  # strides past the end
        (Tensor("0", 6, (10**12,), (1,)), 10**12),  # huge
        (Tensor("0", 6, (10**6, 10**6), (0, 0)), 10**12),  # huge, stride 0
        (Tensor("0", 6, (10**6,) * 6, (0,) * 6), 10**36),  # beyond int64
    ],
)
def test_tensors_larger_than_their_storage(tmp_path, layout, tensor, needed):
    pickled = state_dict_pickle({"w": tensor}, legacy=layout == "legacy")
    path = tmp_path / "big.pth"
    if layout == "zip":
        zip_file(path, pickled, {"0": SIX_FLOATS})
    else:
        legacy_file(path, pickled, [("0", 6, SIX_FLOATS)])
    message = f"tensor 'w' of size .* needs {needed} elements, but its storage '0' "
    _refused_fast(path, CheckpointError, message + "declares 6")


def test_storages_declaring_more_than_their_bytes(tmp_path):
    huge = {"w": Tensor("0", 10**12, (10**12,), (1,))}
    path = tmp_path / "numel.pth"
    zip_file(path, state_dict_pickle(huge), {"0": SIX_FLOATS})
    _refused_fast(
        path,
        CheckpointError,
        r"storage '0' declares 1000000000000 elements \(4000000000000 bytes\) but "
        "its entry 'archive/data/0' holds 24 bytes",
    )
    # The zip's own header lies too: 4 GB in a file of a few hundred bytes.
    billion = {"w": Tensor("0", 10**9, (10**9,), (1,))}
    zip_file(path, state_dict_pickle(billion), {"0": SIX_FLOATS})
    _patch_sizes(path, "archive/data/0", 4 * 10**9, 4 * 10**9)
    _refused_fast(
        path,
        CheckpointError,
        r"'archive/data/0' declares 4000000000 bytes, but the whole file has \d+",
    )
    # Deflate cannot expand 24 bytes into 4 GB.
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("archive/data.pkl", state_dict_pickle(billion))
        archive.writestr("archive/data/0", SIX_FLOATS)
    compressed = zipfile.ZipFile(path).getinfo("archive/data/0").compress_size
    _patch_sizes(path, "archive/data/0", compressed, 4 * 10**9)
    _refused_fast(path, CheckpointError, "more than its compression can give")

    legacy_pickle = state_dict_pickle(huge, legacy=True)
    legacy_file(path, legacy_pickle, [("0", 10**12, SIX_FLOATS)])
    _refused_fast(
        path,
        CheckpointError,
        r"storage '0' declares 1000000000000 elements \(4000000000000 bytes\) but "
        "24 bytes remain",
    )


@pytest.mark.parametrize(
    ("opcode", "what"),
    [
        (pickle.BINBYTES8, "bytes8"),
        (pickle.BINUNICODE8, "unicodestring8"),
        (pickle.BYTEARRAY8, "bytearray8"),
    ],
)
@pytest.mark.parametrize("layout", ["zip", "legacy"])
def test_pickle_lengths_beyond_the_data(tmp_path, opcode, what, layout):
    pickled = pickle.PROTO + b"\x05" + opcode + struct.pack("<Q", 10**12) + b"abc"
    path = _write(tmp_path / "length.pth", layout, pickled + pickle.STOP)
    _refused_fast(
        path, CheckpointError, f"expected 1000000000000 bytes in a {what}, but only"
    )


def test_plain_pickle_allocates_a_declared_length():
    """Control: without the scan, CPython allocates what the pickle declares."""
    pickled = pickle.PROTO + b"\x04" + pickle.BINBYTES8 + struct.pack("<Q", 10**9)
    tracemalloc.start()
    try:
        with pytest.raises(pickle.UnpicklingError):
            pickle.Unpickler(io.BytesIO(pickled + b"abc")).load()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak >= 10**9


def test_many_views_of_one_storage(tmp_path):
    numel = 100_000
    tensors = {f"w{i}": Tensor("0", numel, (numel,), (1,)) for i in range(200)}
    path = tmp_path / "views.pth"
    zip_file(path, state_dict_pickle(tensors), {"0": bytes(4 * numel)})
    _refused_fast(
        path,
        CheckpointError,
        "its 200 tensors would copy 80000000 bytes out of 400000 bytes of storage",
    )


_NESTED = """
import importlib.util, pickle, sys, zipfile
nested = pickle.PROTO + b"\\x02" + pickle.EMPTY_DICT + pickle.EMPTY_TUPLE
nested += pickle.TUPLE1 * 10**6 + pickle.NONE + pickle.SETITEM + pickle.STOP
if sys.argv[1] == "plain":
    pickle.loads(nested)
else:
    spec = importlib.util.spec_from_file_location("pth", sys.argv[2])
    pth = sys.modules["pth"] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(pth)
    with zipfile.ZipFile(sys.argv[3], "w") as archive:
        archive.writestr("archive/data.pkl", nested)
    try:
        pth.load_pytorch_state_dict(sys.argv[3])
    except pth.UnsafeCheckpointError as error:
        print(error)
"""


def test_deeply_nested_tuples_are_refused_before_they_crash(tmp_path):
    # Run apart: hashing a million nested tuples overflows the C stack.
    def run(*args):
        command = [sys.executable, "-c", textwrap.dedent(_NESTED), *args]
        return subprocess.run(command, capture_output=True, text=True, timeout=60)

    plain = run("plain")
    assert plain.returncode < 0  # killed by a signal: SIGSEGV
    guarded = run("guarded", str(PTH_MODULE), str(tmp_path / "nested.pth"))
    assert guarded.returncode == 0, guarded.stderr
    assert "refused: tuples nested 33 deep" in guarded.stdout


def test_honest_files_still_load_with_views_and_offsets(tmp_path):
    """The checks refuse only what does not fit: shared storages still load."""
    tensors = {
        "w": Tensor("0", 6, (2, 3), (3, 1)),
        "w_t": Tensor("0", 6, (3, 2), (1, 3)),  # a transposed view
        "tail": Tensor("0", 6, (2,), (1,), offset=4),
    }
    path = tmp_path / "views.pth"
    zip_file(path, state_dict_pickle(tensors), {"0": SIX_FLOATS})
    state = load_pytorch_state_dict(path)
    full = np.arange(6, dtype=np.float32).reshape(2, 3)
    np.testing.assert_array_equal(state["w"], full)
    np.testing.assert_array_equal(state["w_t"], full.T)
    np.testing.assert_array_equal(state["tail"], [4, 5])
