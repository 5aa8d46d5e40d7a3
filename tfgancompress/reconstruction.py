"""Least-squares reconstruction of a pruned student from its teacher.

Filter pruning leaves every convolution of the student with fewer inputs
than the teacher trained it for, and the errors add up layer after layer:
the vintage teacher L1-pruned to 1/4 width scores 9 dB PSNR against the
unpruned teacher. `reconstruct` refits the student's convolutions one at a
time, in graph order, by linear least squares (channel pruning as in He et
al., 2017, "Channel Pruning for Accelerating Very Deep Neural Networks", and
ThiNet): each layer's inputs are the student's own activations, so it
compensates for what the layers before it lost, and its targets are the
teacher's pre-activation outputs on the channels the student kept. The
output layer is fitted to the teacher's final output through its tanh,
around whatever the student adds outside it (a colour skip). No gradient
steps: one ridge-regularised normal-equation solve per layer.

```python
gated = tgc.pruning.add_gates(teacher, "binary")
tgc.pruning.prune_gates_by_l1(gated, 0.25)
student = tgc.slim(gated)
tgc.reconstruction.reconstruct(
    student, teacher, images, tgc.surgery.kept_channels(gated)
)
```
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping

import keras
import numpy as np
import tensorflow as tf
from absl import logging

_OUTPUT_LIMIT = 0.99


@dataclasses.dataclass
class LayerFit:
    """How well one layer was reconstructed.

    Attributes:
        name: The layer.
        samples: Output positions the least squares used.
        relative_error: Residual sum of squares over the targets' total sum
            of squares about their mean (0: exact, 1: no better than the
            mean).
    """

    name: str
    samples: int
    relative_error: float


def _is_fittable(layer) -> bool:
    if isinstance(layer, keras.layers.Conv2DTranspose):
        return True
    return isinstance(layer, keras.layers.Conv2D) and layer.groups == 1


def _linear_clone(layer, **overrides) -> keras.layers.Layer:
    """A new layer with `layer`'s configuration, no activation, and overrides."""
    config = {**layer.get_config(), "activation": None, **overrides}
    config.pop("name", None)
    return layer.__class__.from_config(config)


def _transposed_patches(layer, input_shape) -> keras.layers.Layer:
    """A layer mapping a `Conv2DTranspose`'s input to one feature per tap.

    It is `layer` with a 0/1 kernel: its output at each position holds what
    kernel tap `(i, j)` contributes from input channel `c`, as feature
    `(i * kernel_width + j) * channels + c`.
    """
    height, width = layer.kernel_size
    channels = input_shape[-1]
    patches = _linear_clone(layer, filters=height * width * channels, use_bias=False)
    patches.build(input_shape)
    kernel = np.zeros(patches.kernel.shape, np.float32)
    taps = np.arange(height * width)
    for c in range(channels):
        kernel[taps // width, taps % width, taps * channels + c, c] = 1.0
    patches.kernel.assign(kernel)
    return patches


def _patch_function(layer, input_shape) -> tuple[Callable, int]:
    """Input batch -> features whose product with the flat kernel is the output.

    Feature `(i * kernel_width + j) * channels + c` at an output position is
    what kernel tap `(i, j)` multiplies with input channel `c` there, so the
    layer's pre-activation output is the features times its kernel
    (flattened to `(features, filters)`) plus its bias.
    """
    height, width = layer.kernel_size
    features = height * width * input_shape[-1]
    if isinstance(layer, keras.layers.Conv2DTranspose):
        patches = _transposed_patches(layer, input_shape)
        return (lambda x: np.asarray(patches(x))), features
    strides = [1, *layer.strides, 1]
    rates = [1, *layer.dilation_rate, 1]
    padding = layer.padding.upper()

    def extract(x):
        return tf.image.extract_patches(
            x, [1, height, width, 1], strides, rates, padding
        ).numpy()

    return extract, features


def _to_kernel(layer, weights: np.ndarray) -> np.ndarray:
    """Flattened least-squares weights `(features, filters)` -> `layer`'s kernel."""
    shape = tuple(layer.kernel.shape)
    if isinstance(layer, keras.layers.Conv2DTranspose):
        height, width, filters, channels = shape
        return weights.reshape(height, width, channels, filters).transpose(0, 1, 3, 2)
    return weights.reshape(shape)


class _NormalEquations:
    """Accumulates `X'X`, `X'Y` and target statistics of a linear fit."""

    def __init__(self, features: int, outputs: int, bias: bool):
        size = features + int(bias)
        self.bias = bias
        self.gram = np.zeros((size, size))
        self.cross = np.zeros((size, outputs))
        self.target_sum = np.zeros(outputs)
        self.target_squares = 0.0
        self.count = 0

    def add(self, features: np.ndarray, targets: np.ndarray) -> None:
        x = features.astype(np.float64)
        if self.bias:
            x = np.concatenate([x, np.ones((len(x), 1))], axis=1)
        y = targets.astype(np.float64)
        self.gram += x.T @ x
        self.cross += x.T @ y
        self.target_sum += y.sum(0)
        self.target_squares += float((y**2).sum())
        self.count += len(x)

    def solve(self, ridge: float) -> tuple[np.ndarray, float]:
        """Weights `(size, outputs)` and the fit's relative error."""
        features = self.gram.shape[0] - int(self.bias)
        regularised = self.gram.copy()
        diagonal = np.arange(features)
        strength = ridge * max(float(np.mean(self.gram[diagonal, diagonal])), 1e-12)
        regularised[diagonal, diagonal] += strength
        weights = np.linalg.solve(regularised, self.cross)
        residual = (
            self.target_squares
            - 2.0 * float(np.sum(weights * self.cross))
            + float(np.sum(weights * (self.gram @ weights)))
        )
        total = self.target_squares - float(np.sum(self.target_sum**2)) / self.count
        return weights, max(residual, 0.0) / max(total, 1e-12)


def _check_arguments(student, teacher, images, kept, output_layer) -> list:
    """The student's layers to fit, after checking every argument."""
    channels = student.input_shape[-1]
    if images.ndim != 4 or images.shape[-1] != channels:
        raise ValueError(
            f"images must be a batch (N, H, W, {channels}) for the student's "
            f"input {student.input_shape}, got shape {images.shape}."
        )
    if len(images) == 0:
        raise ValueError("images is empty: reconstruction needs calibration images.")
    names = {layer.name for layer in student.layers}
    if output_layer is not None and output_layer not in names:
        raise ValueError(
            f"output_layer {output_layer!r} is not a layer of {student.name!r}."
        )
    teacher_names = {layer.name for layer in teacher.layers}
    layers = []
    for layer in student.layers:
        if not isinstance(layer, keras.layers.Conv2D | keras.layers.Conv2DTranspose):
            continue
        if layer.name not in teacher_names:
            continue
        if not _is_fittable(layer):
            logging.warning("reconstruct: %s (grouped) is left as pruned.", layer.name)
            continue
        filters = layer.filters
        if kept is None:
            wanted = teacher.get_layer(layer.name).filters
            source = "the teacher's layer has"
        else:
            wanted = len(kept.get(layer.name, ()))
            source = "kept lists"
        if wanted != filters:
            raise ValueError(
                f"Layer {layer.name!r} of the student has {filters} filters but "
                f"{source} {wanted}: pass the kept_channels of the gated model "
                "the student was slimmed from."
            )
        layers.append(layer)
    if not layers:
        raise ValueError(
            f"No convolution of {student.name!r} has a namesake in "
            f"{teacher.name!r}: the student must be the teacher, pruned."
        )
    return layers


def _sample_positions(
    shape: tuple[int, ...], per_image: int, rng: np.random.Generator
) -> np.ndarray:
    """`(N, per_image)` flat spatial positions, without repeats in an image."""
    positions = shape[1] * shape[2]
    count = min(per_image, positions)
    return np.stack(
        [rng.choice(positions, count, replace=False) for _ in range(shape[0])]
    )


def _gather(maps: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """`(N, H, W, C)` maps at `(N, K)` flat positions -> `(N * K, C)`."""
    flat = maps.reshape(len(maps), -1, maps.shape[-1])
    return np.concatenate([f[p] for f, p in zip(flat, positions, strict=True)])


def _run(model, images: np.ndarray, batch_size: int) -> np.ndarray:
    """`model` in inference mode on `images`, batch by batch."""
    return np.concatenate(
        [
            np.asarray(model(images[start : start + batch_size], training=False))
            for start in range(0, len(images), batch_size)
        ]
    )


def _teacher_targets(teacher, layers, images, kept, batch_size, per_image, rng):
    """Per layer: sampled positions and the teacher's pre-activation targets."""
    sources = [teacher.get_layer(layer.name) for layer in layers]
    taps = keras.Model(teacher.input, [source.input for source in sources])
    linear = []
    for source in sources:
        clone = _linear_clone(source)
        clone.build(source.input.shape)
        clone.set_weights(source.get_weights())
        linear.append(clone)
    outputs: list[list[np.ndarray]] = [[] for _ in layers]
    for start in range(0, len(images), batch_size):
        inputs = taps(images[start : start + batch_size], training=False)
        inputs = inputs if isinstance(inputs, list | tuple) else [inputs]
        for k, (clone, x) in enumerate(zip(linear, inputs, strict=True)):
            y = np.asarray(clone(x))
            indices = kept.get(layers[k].name) if kept is not None else None
            outputs[k].append(y if indices is None else y[..., indices])
    targets = {}
    for layer, maps in zip(layers, outputs, strict=True):
        maps = np.concatenate(maps)
        positions = _sample_positions(maps.shape, per_image, rng)
        targets[layer.name] = (positions, _gather(maps, positions))
    return targets


def _output_targets(student, teacher, layer, images, batch_size, per_image, rng):
    """Positions and pre-tanh targets of the output layer, around the rest."""
    saved = layer.get_weights()
    layer.set_weights([np.zeros_like(w) for w in saved])
    base = _run(student, images, batch_size)
    layer.set_weights(saved)
    wanted = _run(teacher, images, batch_size)
    residual = np.clip(wanted - base, -_OUTPUT_LIMIT, _OUTPUT_LIMIT)
    positions = _sample_positions(residual.shape, per_image, rng)
    return positions, np.arctanh(_gather(residual, positions))


def _fit_layer(student, layer, images, positions, targets, batch_size, ridge):
    """Solves `layer`'s kernel and bias; returns its relative error."""
    inputs = _run(keras.Model(student.input, layer.input), images, batch_size)
    patches, count = _patch_function(layer, (None, *inputs.shape[1:]))
    equations = _NormalEquations(count, targets.shape[-1], layer.use_bias)
    per_image = positions.shape[1]
    for start in range(0, len(images), batch_size):
        features = patches(inputs[start : start + batch_size])
        block = positions[start : start + batch_size]
        rows = slice(start * per_image, (start + len(block)) * per_image)
        equations.add(_gather(features, block), targets[rows])
    weights, error = equations.solve(ridge)
    kernel = _to_kernel(layer, weights[:count].astype(np.float32))
    if layer.use_bias:
        layer.set_weights([kernel, weights[-1].astype(np.float32)])
    else:
        layer.set_weights([kernel])
    return error


def reconstruct(
    student: keras.Model,
    teacher: keras.Model,
    images: np.ndarray,
    kept: Mapping[str, np.ndarray] | None = None,
    *,
    output_layer: str | None = "out_conv",
    samples_per_layer: int = 100_000,
    ridge: float = 1e-3,
    batch_size: int = 8,
    seed: int = 0,
    verbose: bool = True,
) -> list[LayerFit]:
    """Refits a pruned student's convolutions to its teacher, in place.

    Every `Conv2D` (ungrouped) and `Conv2DTranspose` of `student` that has a
    namesake in `teacher` is refitted in graph order: least squares from the
    student's own inputs to that layer (computed with the layers already
    refitted) to the teacher layer's pre-activation output on the channels
    `kept` names. Other layers (norms, a colour skip, ...) keep their
    weights.

    Args:
        student: A flat functional model: the teacher with fewer channels
            per layer (e.g. `tgc.slim` of a pruned gated teacher), optionally
            wrapped by `tgc.models.with_colour_skip`.
        teacher: The model it was pruned from (same layer names).
        images: `(N, H, W, C)` calibration inputs in the models' range, e.g.
            a few dozen training views; any size the models accept.
        kept: `{layer name: indices of the teacher's channels it kept}`, from
            `tgc.surgery.kept_channels`; `None` when the widths are equal.
        output_layer: The student's last convolution, whose output reaches
            the model's output as `rest(x) + tanh(output)` (the zoo's
            generators, with or without a colour skip as `rest`): it is
            fitted so the student's output matches the teacher's. `None`
            fits it like any other layer.
        samples_per_layer: Output positions per layer (spread evenly over
            the images) used by the least squares.
        ridge: Ridge strength, relative to the mean diagonal of `X'X`.
        batch_size: Images per forward pass.
        seed: Seed of the sampled positions.
        verbose: Show a progress bar.

    Returns:
        One `LayerFit` per refitted layer, in order.

    Raises:
        ValueError: If `images` does not fit the student, no layer matches
            the teacher, a layer's width differs from its `kept` list, or
            `output_layer` is not a layer of the student.
    """
    images = np.asarray(images, np.float32)
    layers = _check_arguments(student, teacher, images, kept, output_layer)
    rng = np.random.default_rng(seed)
    per_image = max(1, -(-samples_per_layer // len(images)))
    inner = [layer for layer in layers if layer.name != output_layer]
    targets = _teacher_targets(teacher, inner, images, kept, batch_size, per_image, rng)
    progress = keras.utils.Progbar(
        len(layers),
        verbose=int(verbose),
        stateful_metrics=["relative_error"],
        unit_name="layer",
    )
    fits = []
    for step, layer in enumerate(layers, start=1):
        if layer.name == output_layer:
            positions, wanted = _output_targets(
                student, teacher, layer, images, batch_size, per_image, rng
            )
        else:
            positions, wanted = targets[layer.name]
        error = _fit_layer(student, layer, images, positions, wanted, batch_size, ridge)
        fits.append(LayerFit(layer.name, int(wanted.shape[0]), error))
        progress.update(step, [("relative_error", error)], finalize=step == len(layers))
    return fits
