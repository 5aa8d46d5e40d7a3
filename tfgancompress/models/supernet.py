"""Once-for-all supernets of the ResNet generators (GAN Compression).

A supernet is a ResNet or mobile-ResNet generator (`resnet.py`, same layer
names) whose width-carrying convolutions are super layers
(`keras_layers.SuperConv2D`, `SuperTorchConv2DTranspose`) followed by super
norms: every sub-network shares the weights of the *first k channels* of
each layer. A sub-network is named by the paper's 8-number channel
configuration `c0_c1_..._c7` (`ChannelConfig`), in units of the
generator's `ngf`:

| number | layers | width |
|---|---|---|
| c0 | `stem_conv` | c0 |
| c1 | `down1_conv` | 2·c1 |
| c2 | `down2_conv`, every block's second conv (residual stream) | 4·c2 |
| c3, c4, c5 | first conv of the blocks in each third | 4·c3, 4·c4, 4·c5 |
| c6 | `up1_conv` | 2·c6 |
| c7 | `up2_conv` | c7 |

(`n_blocks // 3` blocks in each of the first two thirds, the rest in the
last.) The residual width is one number because the residual adds tie it.
In the mobile generator "conv" is the pointwise `pwconv`: its separable
unit has a norm between the depthwise and the pointwise convolution, which
`keras_layers.SuperSeparableConv2D` (Keras' `SeparableConv2D`) cannot hold,
so the depthwise convolution stays a plain full-width layer: the channels
beyond the active width reach it as zeros and its non-affine norm keeps
them at zero.

`set_config` switches a supernet to a sub-network: the super layers zero the
channels beyond their width, so the supernet then computes exactly what the
sliced plain model computes; `extract` returns that plain model
(`tgc.slim`, whose layers keep the supernet's names). `config_macs` counts a
configuration's MACs in closed form, equal to `tgc.profile` of the extracted
model. `supernet_from` builds the supernet from a trained plain student with
every layer's filters sorted by L1 norm, so that the first k are the best k.

Example:

```python
from tfgancompress.models import supernet

net = supernet.super_generator(ngf=32, mobile=True)
config = supernet.ChannelConfig.parse("16_16_32_16_32_32_16_16")
small = supernet.extract(net, config)  # a plain Keras model
supernet.config_macs(config, (256, 256, 3))  # 2525233152
```
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import re
from collections.abc import Iterator, Sequence

import keras
import numpy as np

from keras_layers import (
    InstanceNormalization,
    SuperBatchNormalization,
    SuperConv2D,
    SuperInstanceNormalization,
)
from keras_layers.conv import SUPER_LAYERS
from tfgancompress.models.layers import SuperTorchConv2DTranspose, TorchConv2DTranspose
from tfgancompress.models.resnet import mobile_resnet_generator, resnet_generator
from tfgancompress.surgery import slim

CONFIG_LENGTH = 8


@dataclasses.dataclass(frozen=True)
class ChannelConfig:
    """The paper's 8-number channel configuration of a ResNet sub-network.

    Attributes:
        channels: `(c0, ..., c7)`, positive ints in units of `ngf` (see the
            module docstring for the layer widths they give).

    Example:

    >>> config = ChannelConfig.parse("16_16_32_16_32_32_16_16")
    >>> str(config), config.channels[2]
    ('16_16_32_16_32_32_16_16', 32)
    """

    channels: tuple[int, ...]

    def __post_init__(self):
        channels = tuple(self.channels)
        if len(channels) != CONFIG_LENGTH or not all(
            isinstance(c, int | np.integer) and not isinstance(c, bool) and c > 0
            for c in channels
        ):
            raise ValueError(
                f"A channel configuration is {CONFIG_LENGTH} positive ints "
                f"(c0..c7), got {self.channels!r}."
            )
        object.__setattr__(self, "channels", tuple(int(c) for c in channels))

    @classmethod
    def parse(cls, text: str) -> ChannelConfig:
        """Reads the string form `"16_16_32_16_32_32_16_16"`.

        Raises:
            ValueError: If `text` is not 8 positive ints joined by `_`.
        """
        if not re.fullmatch(rf"\d+(_\d+){{{CONFIG_LENGTH - 1}}}", text.strip()):
            raise ValueError(
                f"A channel configuration string is {CONFIG_LENGTH} positive "
                f"ints joined by '_' (e.g. '16_16_32_16_32_32_16_16'), got {text!r}."
            )
        return cls(tuple(int(c) for c in text.strip().split("_")))

    @classmethod
    def of(cls, config) -> ChannelConfig:
        """A `ChannelConfig` from itself, its string, or 8 ints.

        Raises:
            ValueError: If `config` is none of these.
        """
        if isinstance(config, ChannelConfig):
            return config
        if isinstance(config, str):
            return cls.parse(config)
        return cls(tuple(config))

    def __str__(self) -> str:
        return "_".join(str(c) for c in self.channels)


@dataclasses.dataclass(frozen=True)
class ConfigSpace:
    """The candidate values of each of the 8 numbers of a channel configuration.

    Attributes:
        choices: 8 tuples of candidate values, each sorted largest first.

    Example:

    >>> space = ConfigSpace.uniform([32, 24, 16])  # the paper's channels-32
    >>> len(space), str(space.largest()), str(space.sample(step=7))
    (6561, '32_32_32_32_32_32_32_32', '16_32_32_16_24_16_24_24')
    """

    choices: tuple[tuple[int, ...], ...]

    def __post_init__(self):
        choices = tuple(
            tuple(sorted({int(v) for v in values}, reverse=True))
            for values in self.choices
        )
        if len(choices) != CONFIG_LENGTH or not all(
            values and values[-1] > 0 for values in choices
        ):
            raise ValueError(
                f"A config space has {CONFIG_LENGTH} non-empty lists of positive "
                f"ints, got {self.choices!r}."
            )
        object.__setattr__(self, "choices", choices)

    @classmethod
    def uniform(cls, values: Sequence[int]) -> ConfigSpace:
        """The same candidate values for all 8 numbers."""
        return cls(tuple(tuple(values) for _ in range(CONFIG_LENGTH)))

    def __len__(self) -> int:
        return math.prod(len(values) for values in self.choices)

    def __contains__(self, config) -> bool:
        pairs = zip(ChannelConfig.of(config).channels, self.choices, strict=True)
        return all(c in values for c, values in pairs)

    def largest(self) -> ChannelConfig:
        """Every number at its largest candidate."""
        return ChannelConfig(tuple(values[0] for values in self.choices))

    def smallest(self) -> ChannelConfig:
        """Every number at its smallest candidate."""
        return ChannelConfig(tuple(values[-1] for values in self.choices))

    def grid(self) -> Iterator[ChannelConfig]:
        """Every configuration of the space, largest first."""
        for channels in itertools.product(*self.choices):
            yield ChannelConfig(channels)

    def random(self, rng: np.random.Generator) -> ChannelConfig:
        """A configuration drawn uniformly, each number independently."""
        return ChannelConfig(
            tuple(values[rng.integers(len(values))] for values in self.choices)
        )

    def sample(self, step: int, seed: int = 0) -> ChannelConfig:
        """The configuration of a training step: a pure function of `(seed, step)`.

        Args:
            step: Training step (any int >= 0).
            seed: Seed of the run.

        Returns:
            A configuration drawn uniformly from the space.
        """
        return self.random(np.random.default_rng([int(seed), int(step)]))

    def mutate(
        self, config, probability: float, rng: np.random.Generator
    ) -> ChannelConfig:
        """Redraws each number with `probability` (evolutionary search)."""
        channels = list(ChannelConfig.of(config).channels)
        for index, values in enumerate(self.choices):
            if rng.random() < probability:
                channels[index] = values[rng.integers(len(values))]
        return ChannelConfig(tuple(channels))

    def crossover(self, first, second, rng: np.random.Generator) -> ChannelConfig:
        """Takes each number from either parent with equal chance."""
        pairs = zip(
            ChannelConfig.of(first).channels,
            ChannelConfig.of(second).channels,
            strict=True,
        )
        return ChannelConfig(tuple(pair[rng.integers(2)] for pair in pairs))


@dataclasses.dataclass(frozen=True)
class _ChannelGroup:
    """Channels that one permutation reorders: who makes, carries, reads them."""

    producers: tuple[str, ...]
    followers: tuple[str, ...]
    consumers: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class ResnetFamily:
    """Which ResNet generator a configuration describes (for names and MACs).

    Attributes:
        n_blocks: Number of ResBlocks.
        mobile: Whether the blocks use separable convolutions
            (`mobile_resnet_generator`).
        output_channels: Channels of the output image.
    """

    n_blocks: int = 9
    mobile: bool = True
    output_channels: int = 3

    @classmethod
    def of(cls, model: keras.Model) -> ResnetFamily:
        """Reads the family of a plain or super ResNet generator from its layers.

        Raises:
            ValueError: If `model` lacks a layer the ResNet builders name.
        """
        names = {layer.name for layer in model.layers}
        n_blocks = 0
        while f"block{n_blocks + 1}_add" in names:
            n_blocks += 1
        family = cls(
            n_blocks=n_blocks,
            mobile="block1_pwconv1" in names,
            output_channels=_layer(model, "out_conv").filters,
        )
        missing = [name for name in family.layer_names() if name not in names]
        if missing:
            raise ValueError(
                f"Model {model.name!r} is not a ResNet generator as built by "
                f"tgc.models.resnet_generator/mobile_resnet_generator: it has no "
                f"layer(s) {missing[:4]}."
            )
        return family

    def block_group(self, block: int) -> int:
        """0, 1 or 2: which third of the blocks block `block` (1-based) is in."""
        third = self.n_blocks // 3
        return 0 if block <= third else 1 if block <= 2 * third else 2

    def _block_conv(self, block: int, index: int) -> str:
        kind = "pwconv" if self.mobile else "conv"
        return f"block{block}_{kind}{index}"

    def layer_widths(self, config) -> dict[str, int]:
        """`{convolution name: output width}` of a configuration's sub-network."""
        c = ChannelConfig.of(config).channels
        widths = {"stem_conv": c[0], "down1_conv": 2 * c[1], "down2_conv": 4 * c[2]}
        for block in range(1, self.n_blocks + 1):
            widths[self._block_conv(block, 1)] = 4 * c[3 + self.block_group(block)]
            widths[self._block_conv(block, 2)] = 4 * c[2]
        widths["up1_conv"] = 2 * c[6]
        widths["up2_conv"] = c[7]
        return widths

    def norm_of(self, conv_name: str) -> str:
        """The name of the norm that follows a width-carrying convolution."""
        return re.sub(r"_(pw)?conv", "_norm", conv_name)

    def layer_names(self) -> list[str]:
        """Every layer the configuration sets, convolutions and their norms."""
        convs = list(self.layer_widths((1,) * CONFIG_LENGTH))
        return convs + [self.norm_of(name) for name in convs] + ["out_conv"]

    def channel_groups(self) -> list[_ChannelGroup]:
        """The channel groups, residual stream as one (for L1 sorting)."""
        blocks = range(1, self.n_blocks + 1)
        first = [self._block_conv(b, 1) for b in blocks]
        second = [self._block_conv(b, 2) for b in blocks]
        groups = [
            _ChannelGroup(("stem_conv",), ("stem_norm",), ("down1_conv",)),
            _ChannelGroup(("down1_conv",), ("down1_norm",), ("down2_conv",)),
            _ChannelGroup(
                ("down2_conv", *second),
                ("down2_norm", *[f"block{b}_norm2" for b in blocks])
                + tuple(f"block{b}_dwconv1" for b in blocks if self.mobile),
                (*first, "up1_conv"),
            ),
        ]
        for b in blocks:
            followers = (f"block{b}_norm1",)
            if self.mobile:
                followers += (f"block{b}_dwconv2",)
            groups.append(_ChannelGroup((first[b - 1],), followers, (second[b - 1],)))
        groups += [
            _ChannelGroup(("up1_conv",), ("up1_norm",), ("up2_conv",)),
            _ChannelGroup(("up2_conv",), ("up2_norm",), ("out_conv",)),
        ]
        return groups

    def macs(self, config, input_shape: Sequence[int] = (256, 256, 3)) -> int:
        """MACs of a configuration's sub-network, counted like `tgc.profile`.

        Every convolution costs `output elements * C_in * k * k` (depthwise:
        `output elements * k * k`; transposed ones on their output grid);
        norms, activations, pads and adds cost 0.

        Args:
            config: A `ChannelConfig`, its string, or 8 ints.
            input_shape: `(height, width, channels)` of the input image.

        Returns:
            The MACs per image.
        """
        height, width, channels = (int(d) for d in input_shape)
        w = self.layer_widths(config)
        stem, down1, residual = w["stem_conv"], w["down1_conv"], w["down2_conv"]
        half = ((height - 1) // 2 + 1) * ((width - 1) // 2 + 1)
        h2, w2 = (height - 1) // 4 + 1, (width - 1) // 4 + 1
        quarter = h2 * w2
        macs = height * width * channels * 49 * stem
        macs += half * stem * 9 * down1
        macs += quarter * down1 * 9 * residual
        for block in range(1, self.n_blocks + 1):
            inner = w[self._block_conv(block, 1)]
            if self.mobile:
                per_pixel = residual * 9 + residual * inner + inner * 9
                macs += quarter * (per_pixel + inner * residual)
            else:
                macs += quarter * 2 * residual * 9 * inner
        up1, up2 = w["up1_conv"], w["up2_conv"]
        macs += 4 * quarter * residual * 9 * up1
        macs += 16 * quarter * up1 * 9 * up2
        macs += 16 * quarter * up2 * 49 * self.output_channels
        return macs


def config_macs(
    config,
    input_shape: Sequence[int] = (256, 256, 3),
    family: ResnetFamily | None = None,
) -> int:
    """MACs of a configuration's sub-network in closed form (no model built).

    Equals `tgc.profile(extract(supernet, config), input_shape).macs`.

    Args:
        config: A `ChannelConfig`, its string, or 8 ints.
        input_shape: `(height, width, channels)` of the input image.
        family: The generator; defaults to the 9-block mobile ResNet with
            3 output channels (the paper's CycleGAN/pix2pix student).

    Returns:
        The MACs per image (torchprofile's rule, see `tgc.profile`).

    Example:

    >>> config_macs("16_16_32_16_32_32_16_16", (256, 256, 3))
    2525233152
    """
    return (family or ResnetFamily()).macs(config, input_shape)


def _layer(model: keras.Model, name: str) -> keras.layers.Layer:
    try:
        return model.get_layer(name)
    except ValueError as error:
        raise ValueError(
            f"Model {model.name!r} has no layer {name!r}: expected a ResNet "
            "generator as built by tgc.models.resnet_generator or "
            "mobile_resnet_generator."
        ) from error


def _super_class(layer) -> type:
    if isinstance(layer, TorchConv2DTranspose):
        return SuperTorchConv2DTranspose
    if isinstance(layer, keras.layers.Conv2D):
        return SuperConv2D
    if isinstance(layer, InstanceNormalization):
        return SuperInstanceNormalization
    if isinstance(layer, keras.layers.BatchNormalization):
        return SuperBatchNormalization
    raise ValueError(
        f"Layer {layer.name!r} ({type(layer).__name__}) has no super version; "
        "expected Conv2D, TorchConv2DTranspose, InstanceNormalization or "
        "BatchNormalization."
    )


def _copy_weights(source: keras.layers.Layer, target: keras.layers.Layer) -> None:
    """Assigns `source`'s variables to `target`'s variables of the same name."""
    targets = {variable.name: variable for variable in target.weights}
    for variable in source.weights:
        targets[variable.name].assign(variable)


def to_supernet(model: keras.Model, name: str | None = None) -> keras.Model:
    """A supernet copy of a plain ResNet generator, with the same weights.

    Every width-carrying convolution (see the module docstring) becomes a
    super layer and the norm after it a super norm; all other layers are
    copied as they are. At full width (the initial state) the supernet
    computes what `model` computes.

    Args:
        model: A plain generator from `resnet_generator` or
            `mobile_resnet_generator` (or with their layer names).
        name: Name of the supernet; defaults to `"<model name>_super"`.

    Returns:
        The supernet (`model` is left untouched).

    Raises:
        ValueError: If `model` is not a plain ResNet generator (a layer is
            missing, or it is a supernet already).
    """
    family = ResnetFamily.of(model)
    supers = set(family.layer_names()) - {"out_conv"}
    already = [layer.name for layer in model.layers if isinstance(layer, SUPER_LAYERS)]
    if already:
        raise ValueError(
            f"Model {model.name!r} is a supernet already (super layers {already[:3]})."
        )

    def clone(layer):
        cls = _super_class(layer) if layer.name in supers else type(layer)
        return cls.from_config(layer.get_config())

    supernet = keras.models.clone_model(model, clone_function=clone)
    supernet.name = name or f"{model.name}_super"
    for layer in model.layers:
        _copy_weights(layer, supernet.get_layer(layer.name))
    return supernet


def super_generator(
    ngf: int = 32,
    n_blocks: int = 9,
    mobile: bool = True,
    input_channels: int = 3,
    output_channels: int = 3,
    norm: str = "instance",
    affine: bool | None = None,
    input_shape: tuple | None = None,
    name: str | None = None,
) -> keras.Model:
    """A freshly initialised ResNet or mobile-ResNet supernet.

    Args:
        ngf: Width of the largest sub-network (configs go up to `ngf`).
        n_blocks: Number of ResBlocks.
        mobile: Separable ResBlocks (`mobile_resnet_generator`, the paper's
            supernet) or plain ones (`resnet_generator`).
        input_channels: Channels of the input image.
        output_channels: Channels of the output image.
        norm: `"instance"` or `"batch"`.
        affine: Whether the norms are affine (`None`: the builders' default).
        input_shape: `(height, width, input_channels)`; defaults to
            `(None, None, input_channels)`.
        name: Model name.

    Returns:
        The supernet, at full width.

    Example:

    >>> net = super_generator(ngf=16, n_blocks=3)
    >>> set_config(net, "8_8_16_8_12_16_8_8")
    """
    build = mobile_resnet_generator if mobile else resnet_generator
    plain = build(
        ngf=ngf,
        n_blocks=n_blocks,
        input_channels=input_channels,
        output_channels=output_channels,
        norm=norm,
        affine=affine,
        input_shape=input_shape,
    )
    default = f"super_{'mobile_' if mobile else ''}resnet_generator"
    return to_supernet(plain, name=name or default)


def _super_layer(supernet: keras.Model, name: str):
    layer = _layer(supernet, name)
    if not isinstance(layer, SUPER_LAYERS):
        raise ValueError(
            f"Layer {name!r} of {supernet.name!r} is a plain "
            f"{type(layer).__name__}: expected a supernet (tgc.models.supernet."
            "to_supernet / super_generator)."
        )
    return layer


def set_config(supernet: keras.Model, config) -> None:
    """Switches a supernet to the sub-network of a channel configuration.

    Assigns each super layer's `active_filters` (plain Python: call it
    between steps, e.g. from a callback; the variables are read inside
    compiled steps).

    Args:
        supernet: A model from `to_supernet`/`super_generator`/`supernet_from`.
        config: A `ChannelConfig`, its string, or 8 ints.

    Raises:
        ValueError: If a width exceeds the supernet's, or `supernet` is not
            one.
    """
    config = ChannelConfig.of(config)
    family = ResnetFamily.of(supernet)
    for conv_name, width in family.layer_widths(config).items():
        conv = _super_layer(supernet, conv_name)
        if width > conv.filters:
            raise ValueError(
                f"Config {config} gives {conv_name!r} {width} channels; the "
                f"supernet {supernet.name!r} has {conv.filters} there."
            )
        conv.set_active_filters(width)
        _super_layer(supernet, family.norm_of(conv_name)).set_active_filters(width)


def _config_of(model: keras.Model, width) -> ChannelConfig:
    """The configuration whose layer widths `width(layer name)` gives."""
    family = ResnetFamily.of(model)
    inner = []
    for group in range(3):
        blocks = [
            b for b in range(1, family.n_blocks + 1) if family.block_group(b) == group
        ]
        first = family._block_conv(blocks[0], 1) if blocks else None
        inner.append(width(first) // 4 if first else width("stem_conv"))
    return ChannelConfig(
        (
            width("stem_conv"),
            width("down1_conv") // 2,
            width("down2_conv") // 4,
            *inner,
            width("up1_conv") // 2,
            width("up2_conv"),
        )
    )


def largest_config(model: keras.Model) -> ChannelConfig:
    """The configuration of a supernet's full width (or a plain generator's).

    A number that sets no layer (a third of the blocks that is empty when
    `n_blocks < 3`) is given the stem's width.
    """
    return _config_of(model, lambda name: _layer(model, name).filters)


def current_config(supernet: keras.Model) -> ChannelConfig:
    """The configuration a supernet is switched to (`set_config`).

    Numbers that set no layer are given the stem's width, as in
    `largest_config`.
    """

    def active(name: str) -> int:
        layer = _super_layer(supernet, name)
        return int(keras.ops.convert_to_numpy(layer.active_filters))

    return _config_of(supernet, active)


def extract(supernet: keras.Model, config=None, name: str | None = None) -> keras.Model:
    """The plain sub-network of a configuration (or of the supernet's state).

    The supernet's weights sliced to the configuration's widths, as a plain
    functional model (Conv2D, TorchConv2DTranspose, InstanceNormalization,
    ...) with the supernet's layer names; built by `tgc.slim`. It computes
    what the supernet computes with `set_config(supernet, config)`, and
    `tgc.profile` counts `config_macs(config, ...)` for it. The supernet's
    own widths are left as they were.

    Args:
        supernet: A supernet.
        config: The configuration; `None` extracts the current widths.
        name: Name of the result; defaults to `"<supernet>_<config>"`.

    Returns:
        The plain sub-network.
    """
    supers = [layer for layer in supernet.layers if isinstance(layer, SUPER_LAYERS)]
    saved = [int(keras.ops.convert_to_numpy(layer.active_filters)) for layer in supers]
    try:
        if config is not None:
            set_config(supernet, config)
        plain = slim(supernet)
    finally:
        for layer, width in zip(supers, saved, strict=True):
            layer.active_filters.assign(width)
    suffix = "current" if config is None else str(ChannelConfig.of(config))
    plain.name = name or f"{supernet.name}_{suffix}"
    return plain


def _filter_l1(layer) -> np.ndarray:
    kernel = np.abs(keras.ops.convert_to_numpy(layer.kernel))
    if isinstance(layer, keras.layers.Conv2DTranspose):
        return kernel.sum(axis=(0, 1, 3))
    return kernel.sum(axis=(0, 1, 2))


def _permute_variables(layer, permutation: np.ndarray, role: str) -> None:
    """Reorders one layer's channels: its outputs, carried channels or inputs."""
    transposed = isinstance(layer, keras.layers.Conv2DTranspose)
    for variable in layer.weights:
        if variable.name == "kernel":
            if isinstance(layer, keras.layers.DepthwiseConv2D):
                axis = 2
            elif role == "consumer":
                axis = 3 if transposed else 2
            else:
                axis = 2 if transposed else 3
        elif role == "consumer":
            continue
        else:
            axis = 0
        values = keras.ops.convert_to_numpy(variable)
        variable.assign(np.take(values, permutation, axis=axis))


def l1_channel_orders(model: keras.Model) -> dict[str, np.ndarray]:
    """Per width-carrying convolution: its channels, largest filter L1 first.

    Each channel group is ranked once (a layer's output; the residual stream
    as one group, ranked by its producers' summed filter L1 norms), and every
    producer of the group gets the group's order.

    Args:
        model: A plain or super ResNet generator (`ResnetFamily.of`).

    Returns:
        `{convolution name: permutation of its output channels}` for every
        convolution a configuration sets (not `out_conv`).
    """
    family = ResnetFamily.of(model)
    orders = {}
    for group in family.channel_groups():
        importance = sum(_filter_l1(model.get_layer(n)) for n in group.producers)
        permutation = np.argsort(-importance, kind="stable")
        orders.update({name: permutation for name in group.producers})
    return orders


def sort_channels_by_l1(model: keras.Model) -> keras.Model:
    """A copy of a plain ResNet generator with filters sorted by L1 norm.

    In every channel group (each layer's output; the residual stream as one
    group ranked by its producers' summed L1) the filter with the largest
    L1 norm comes first (`l1_channel_orders`), and the norms, depthwise
    convolutions and consumers of the group are reordered alike: the copy
    computes the same function, and slicing its first k channels keeps the
    top-k filters by L1 (GAN Compression's initialisation of a student from
    its teacher).

    Args:
        model: A plain generator from `resnet_generator` or
            `mobile_resnet_generator`.

    Returns:
        The sorted copy (`model` is left untouched).

    Raises:
        ValueError: If `model` is not such a generator, or has per-channel
            norm epsilons (export-time copies only).
    """
    family = ResnetFamily.of(model)
    for layer in model.layers:
        if isinstance(getattr(layer, "epsilon", None), list):
            raise ValueError(
                f"Layer {layer.name!r} has per-channel epsilons; sort the "
                "training model, not its export copy."
            )
    orders = l1_channel_orders(model)
    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    for group in family.channel_groups():
        permutation = orders[group.producers[0]]
        for role in ("producer", "follower", "consumer"):
            for name in getattr(group, f"{role}s"):
                _permute_variables(copy.get_layer(name), permutation, role)
    return copy


def l1_cut(
    teacher: keras.Model, config, name: str | None = None
) -> tuple[keras.Model, dict[str, np.ndarray]]:
    """The teacher cut to a configuration's widths, keeping top filters by L1.

    GAN Compression's student initialisation: every layer keeps its `k`
    filters of largest L1 norm (residual channels ranked together), largest
    first, and the next layer keeps the matching input channels.

    Args:
        teacher: A plain ResNet or mobile-ResNet generator.
        config: The widths (a `ChannelConfig`, its string or 8 ints), at
            most the teacher's.
        name: Name of the student; defaults to `"<teacher>_<config>"`.

    Returns:
        `(student, kept)`: the plain student, and `{convolution name:
        indices of the teacher's channels it kept}` (in the student's
        channel order; `out_conv` keeps all), the map
        `tgc.reconstruction.reconstruct` takes.

    Raises:
        ValueError: If `teacher` is not such a generator or `config` is
            wider than it.
    """
    config = ChannelConfig.of(config)
    family = ResnetFamily.of(teacher)
    orders = l1_channel_orders(teacher)
    widths = family.layer_widths(config)
    sorted_net = to_supernet(sort_channels_by_l1(teacher))
    student = extract(sorted_net, config, name=name or f"{teacher.name}_{config}")
    kept = {conv: orders[conv][:width] for conv, width in widths.items()}
    kept["out_conv"] = np.arange(family.output_channels)
    return student, kept


def supernet_from(student: keras.Model, sort_by_l1: bool = True) -> keras.Model:
    """A supernet initialised from a trained plain student.

    Args:
        student: A plain (e.g. pre-distilled) ResNet or mobile-ResNet
            generator; its width is the supernet's largest configuration.
        sort_by_l1: Sort each layer's filters by L1 norm first
            (`sort_channels_by_l1`), so that every sub-network keeps the
            student's best filters.

    Returns:
        The supernet; at full width it computes what `student` computes.
    """
    source = sort_channels_by_l1(student) if sort_by_l1 else student
    return to_supernet(source, name=f"{student.name}_super")
