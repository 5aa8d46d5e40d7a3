"""Named intermediate features ("taps") for distillation.

- ResNet and mobile ResNet generators (METHODS.md): the output of down2
  (`down2_relu`) and of ResBlocks n/3, 2n/3 and n (`block3_add`,
  `block6_add`, `block9_add` for 9 blocks): all 4*ngf wide at 1/4 of the
  input size.
- U-Net generator (this project's choice): the outputs of the decoder units
  at 1/16, 1/8, 1/4 and 1/2 of the input size (up units 5, 4, 3, 2, just
  before their skip concatenation): the features the image is synthesised
  from, each with a spatial extent useful for attention maps (the
  innermost units are 1x1 to 8x8 at 256x256).
- PatchGAN discriminator: the LeakyReLU outputs of layers 2 and 3 (DMAD's
  co-attention uses the second one).
"""

from __future__ import annotations

import re

import keras


def _has(model: keras.Model, name: str) -> bool:
    return any(layer.name == name for layer in model.layers)


def _resnet_taps(model: keras.Model) -> list[str]:
    n_blocks = sum(
        bool(re.fullmatch(r"block\d+_add", layer.name)) for layer in model.layers
    )
    blocks = sorted({max(1, round(n_blocks * k / 3)) for k in (1, 2, 3)})
    return ["down2_relu"] + [f"block{b}_add" for b in blocks]


def _unet_taps(model: keras.Model) -> list[str]:
    names = []
    for i in (5, 4, 3, 2):
        for suffix in ("dropout", "gate", "norm"):
            if _has(model, f"up{i}_{suffix}"):
                names.append(f"up{i}_{suffix}")
                break
    return names


def tap_names(model: keras.Model) -> list[str]:
    """The names of the layers whose outputs are `model`'s distillation taps.

    Works on any model built by `tfgancompress.models` (and on slimmed copies
    that keep the layer names).

    Args:
        model: A ResNet, mobile ResNet or U-Net generator, or a PatchGAN.

    Returns:
        Layer names, shallow to deep for ResNets, deep to shallow for U-Nets.

    Raises:
        ValueError: If `model` has none of the zoo's layer names.

    Example:

    >>> tap_names(resnet_generator(ngf=8, n_blocks=9))
    ['down2_relu', 'block3_add', 'block6_add', 'block9_add']
    """
    if _has(model, "block1_add") and _has(model, "down2_relu"):
        return _resnet_taps(model)
    if _has(model, "up2_conv") and _has(model, "skip1"):
        return _unet_taps(model)
    if _has(model, "layer3_lrelu") and _has(model, "out_conv"):
        return ["layer2_lrelu", "layer3_lrelu"]
    raise ValueError(
        f"Model {model.name!r} has no known distillation taps: it has no "
        "'block1_add' (ResNet), 'skip1' (U-Net) or 'layer3_lrelu' (PatchGAN) "
        "layer."
    )


def with_taps(model: keras.Model, names: list[str] | None = None) -> keras.Model:
    """A model sharing `model`'s layers whose outputs are `[output, *taps]`.

    Args:
        model: A functional model.
        names: Layer names to expose; defaults to `tap_names(model)`.

    Returns:
        A `keras.Model` with the same inputs and weights as `model`.

    Raises:
        ValueError: If a name is not a layer of `model`.

    Example:

    >>> tapped = with_taps(resnet_generator(ngf=8))
    >>> image, *features = tapped(keras.ops.zeros((1, 64, 64, 3)))
    >>> [tuple(f.shape) for f in features]
    [(1, 16, 16, 32), (1, 16, 16, 32), (1, 16, 16, 32), (1, 16, 16, 32)]
    """
    names = tap_names(model) if names is None else list(names)
    missing = [name for name in names if not _has(model, name)]
    if missing:
        raise ValueError(f"Model {model.name!r} has no layer named {missing}.")
    taps = [model.get_layer(name).output for name in names]
    return keras.Model(model.input, [model.output, *taps], name=f"{model.name}_taps")
