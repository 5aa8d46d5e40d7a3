"""Hand-written PyTorch `.pth` files for the tests (no torch).

A pickle writer that emits torch's globals and storage persistent ids
opcode by opcode, so that tests can write honest checkpoints (`write_zip`,
`write_legacy`) and hostile ones (any tensor size, stride, offset, element
count or storage key; any bytes as storage), plus random state_dicts with
the key layout of pix2pix's ResnetGenerator and UnetGenerator.
"""

from __future__ import annotations

import dataclasses
import io
import pickle
import struct
import zipfile
from collections import OrderedDict

import numpy as np

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
STORAGE_NAMES = {
    np.dtype("float32"): "FloatStorage",
    np.dtype("float16"): "HalfStorage",
    np.dtype("int64"): "LongStorage",
}


def op_global(module: str, name: str) -> bytes:
    return pickle.GLOBAL + f"{module}\n{name}\n".encode()


def op_text(value: str) -> bytes:
    data = value.encode()
    return pickle.BINUNICODE + struct.pack("<I", len(data)) + data


def op_int(value: int) -> bytes:
    if -(2**31) <= value < 2**31:
        return pickle.BININT + struct.pack("<i", value)
    return pickle.LONG1 + bytes([9]) + value.to_bytes(9, "little", signed=True)


def op_tuple(items: list[bytes]) -> bytes:
    return pickle.MARK + b"".join(items) + pickle.TUPLE


def empty_ordered_dict() -> bytes:
    return op_global("collections", "OrderedDict") + pickle.EMPTY_TUPLE + pickle.REDUCE


@dataclasses.dataclass
class Tensor:
    """One pickled tensor: a view `size`/`stride`/`offset` of a storage."""

    storage_key: str
    numel: int
    size: tuple
    stride: tuple
    offset: int = 0
    storage_name: str = "FloatStorage"

    @classmethod
    def of(cls, array: np.ndarray, storage_key: str) -> Tensor:
        strides = tuple(s // array.itemsize for s in array.strides)
        name = STORAGE_NAMES[array.dtype]
        return cls(storage_key, array.size, array.shape, strides, 0, name)

    def pickled(self, legacy: bool) -> bytes:
        """`torch._utils._rebuild_tensor_v2(...)` as torch pickles it."""
        storage_id = [
            op_text("storage"),
            op_global("torch", self.storage_name),
            op_text(self.storage_key),
            op_text("cpu"),
            op_int(self.numel),
        ]
        if legacy:
            storage_id.append(pickle.NONE)
        args = [
            op_tuple(storage_id) + pickle.BINPERSID,
            op_int(self.offset),
            op_tuple([op_int(n) for n in self.size]),
            op_tuple([op_int(s) for s in self.stride]),
            pickle.NEWFALSE,
            op_global("collections", "OrderedDict")
            + pickle.EMPTY_TUPLE
            + pickle.REDUCE,
        ]
        rebuild = op_global("torch._utils", "_rebuild_tensor_v2")
        return rebuild + op_tuple(args) + pickle.REDUCE


def state_dict_pickle(tensors: dict[str, Tensor], legacy: bool = False) -> bytes:
    """Protocol-2 pickle of an OrderedDict of tensors as torch writes it."""
    out = [pickle.PROTO + b"\x02", empty_ordered_dict(), pickle.MARK]
    for key, tensor in tensors.items():
        out += [op_text(key), tensor.pickled(legacy)]
    out += [pickle.SETITEMS, pickle.STOP]
    return b"".join(out)


def zip_file(
    path, data_pkl: bytes, storages: dict[str, bytes], prefix: str = "archive"
) -> None:
    """A zip-layout checkpoint with these pickle bytes and storage entries."""
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(f"{prefix}/data.pkl", data_pkl)
        archive.writestr(f"{prefix}/byteorder", "little")
        for key, raw in storages.items():
            archive.writestr(f"{prefix}/data/{key}", raw)
        archive.writestr(f"{prefix}/version", "3\n")


def legacy_headers() -> bytes:
    """The magic number, protocol and sys-info pickles of the legacy layout."""
    buffer = io.BytesIO()
    sys_info = {"protocol_version": 1001, "little_endian": True, "type_sizes": {}}
    for header in (LEGACY_MAGIC, 1001, sys_info):
        pickle.dump(header, buffer, protocol=2)
    return buffer.getvalue()


def legacy_file(path, state_pkl: bytes, storages: list[tuple[str, int, bytes]]):
    """A legacy checkpoint; each storage is `(key, declared numel, raw bytes)`."""
    keys = pickle.dumps([key for key, _, _ in storages], protocol=2)
    records = b"".join(struct.pack("<q", n) + raw for _, n, raw in storages)
    with open(path, "wb") as file:
        file.write(legacy_headers() + state_pkl + keys + records)


def write_zip(path, state: dict, prefix: str = "archive") -> None:
    state = {k: np.ascontiguousarray(v) for k, v in state.items()}
    tensors = {k: Tensor.of(v, str(i)) for i, (k, v) in enumerate(state.items())}
    storages = {str(i): v.tobytes() for i, v in enumerate(state.values())}
    zip_file(path, state_dict_pickle(tensors), storages, prefix)


def write_legacy(path, state: dict) -> None:
    state = {k: np.ascontiguousarray(v) for k, v in state.items()}
    tensors = {k: Tensor.of(v, str(i)) for i, (k, v) in enumerate(state.items())}
    storages = [(str(i), v.size, v.tobytes()) for i, v in enumerate(state.values())]
    legacy_file(path, state_dict_pickle(tensors, legacy=True), storages)


def random_resnet_state(
    rng, ngf=8, n_blocks=2, affine=False, norm="instance", block_key="conv_block"
):
    """A state_dict with the shapes/keys of PyTorch's ResnetGenerator."""
    state = OrderedDict()
    bias = norm == "instance"

    def conv(name, out_c, in_c, k, transposed=False, with_bias=bias):
        shape = (in_c, out_c, k, k) if transposed else (out_c, in_c, k, k)
        state[f"{name}.weight"] = rng.normal(0, 0.2, shape).astype(np.float32)
        if with_bias:
            state[f"{name}.bias"] = rng.normal(0, 0.1, out_c).astype(np.float32)

    def norm_params(name, c):
        if affine or norm == "batch":
            state[f"{name}.weight"] = rng.uniform(0.5, 1.5, c).astype(np.float32)
            state[f"{name}.bias"] = rng.normal(0, 0.1, c).astype(np.float32)
        if norm == "batch":
            state[f"{name}.running_mean"] = rng.normal(0, 0.1, c).astype(np.float32)
            state[f"{name}.running_var"] = rng.uniform(0.5, 2, c).astype(np.float32)
            state[f"{name}.num_batches_tracked"] = np.array(7, np.int64)

    conv("model.1", ngf, 3, 7)
    norm_params("model.2", ngf)
    conv("model.4", 2 * ngf, ngf, 3)
    norm_params("model.5", 2 * ngf)
    conv("model.7", 4 * ngf, 2 * ngf, 3)
    norm_params("model.8", 4 * ngf)
    for b in range(n_blocks):
        blk = f"model.{10 + b}.{block_key}"
        conv(f"{blk}.1", 4 * ngf, 4 * ngf, 3)
        norm_params(f"{blk}.2", 4 * ngf)
        conv(f"{blk}.5", 4 * ngf, 4 * ngf, 3)
        norm_params(f"{blk}.6", 4 * ngf)
    base = 10 + n_blocks
    conv(f"model.{base}", 2 * ngf, 4 * ngf, 3, transposed=True)
    norm_params(f"model.{base + 1}", 2 * ngf)
    conv(f"model.{base + 3}", ngf, 2 * ngf, 3, transposed=True)
    norm_params(f"model.{base + 4}", ngf)
    conv(f"model.{base + 7}", 3, ngf, 7, with_bias=True)
    return state


def random_unet_state(rng, ngf=4, num_downs=5):
    """State_dict of PyTorch's UnetGenerator with BatchNorm, key layout included."""
    state = OrderedDict()
    widths = [ngf * min(2**i, 8) for i in range(num_downs)]

    def add(name, shape):
        state[name] = rng.normal(0, 0.2, shape).astype(np.float32)

    def bn(name, c):
        state[f"{name}.weight"] = rng.uniform(0.5, 1.5, c).astype(np.float32)
        state[f"{name}.bias"] = rng.normal(0, 0.1, c).astype(np.float32)
        state[f"{name}.running_mean"] = rng.normal(0, 0.1, c).astype(np.float32)
        state[f"{name}.running_var"] = rng.uniform(0.5, 2, c).astype(np.float32)

    prefix = "model.model."
    for i in range(1, num_downs + 1):
        inner = widths[i - 1]
        outer = widths[i - 2] if i > 1 else 3
        in_c = 3 if i == 1 else outer
        up_in = inner if i == num_downs else 2 * inner
        if i == 1:
            add(f"{prefix}0.weight", (inner, in_c, 4, 4))
            add(f"{prefix}3.weight", (up_in, outer, 4, 4))
            add(f"{prefix}3.bias", (outer,))
            prefix += "1.model."
        elif i == num_downs:
            add(f"{prefix}1.weight", (inner, in_c, 4, 4))
            add(f"{prefix}3.weight", (up_in, outer, 4, 4))
            bn(f"{prefix}4", outer)
        else:
            add(f"{prefix}1.weight", (inner, in_c, 4, 4))
            bn(f"{prefix}2", inner)
            add(f"{prefix}5.weight", (up_in, outer, 4, 4))
            bn(f"{prefix}6", outer)
            prefix += "3.model."
    return state
