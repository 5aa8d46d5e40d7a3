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

`reconstruct_blocks` goes on from there with gradient steps, one block at
a time: each block of the student (by default the stem, every residual
block and the output path of a ResNet) is trained to reproduce the
teacher's output of that block on the kept channels, from the student's own
input to it, on activations computed once. A step trains one block on
small feature maps, so a few hundred steps per block cost a fraction of
end-to-end training steps.

```python
gated = tgc.pruning.add_gates(teacher, "binary")
tgc.pruning.prune_gates_by_l1(gated, 0.25)
student = tgc.slim(gated)
kept = tgc.surgery.kept_channels(gated)
tgc.reconstruction.reconstruct(student, teacher, images, kept)
tgc.reconstruction.reconstruct_blocks(student, teacher, images, kept)
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


def _same_padding(size: int, kernel: int, stride: int, rate: int) -> tuple[int, int]:
    """TensorFlow's `"same"` padding (before, after) along one axis."""
    out = -(-size // stride)
    total = max((out - 1) * stride + (kernel - 1) * rate + 1 - size, 0)
    return total // 2, total - total // 2


def _window_features(layer, x: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """A `Conv2D`'s input windows at `(N, K)` flat output positions.

    Only the sampled windows are read (not every patch of the map):
    `(N * K, kernel_height * kernel_width * channels)`.
    """
    height, width = layer.kernel_size
    stride_h, stride_w = layer.strides
    rate_h, rate_w = layer.dilation_rate
    if layer.padding == "same":
        pad_h = _same_padding(x.shape[1], height, stride_h, rate_h)
        pad_w = _same_padding(x.shape[2], width, stride_w, rate_w)
        x = np.pad(x, ((0, 0), pad_h, pad_w, (0, 0)))
    out_w = (x.shape[2] - (width - 1) * rate_w - 1) // stride_w + 1
    rows = (positions // out_w)[..., None] * stride_h + np.arange(height) * rate_h
    cols = (positions % out_w)[..., None] * stride_w + np.arange(width) * rate_w
    images = np.arange(len(x))[:, None, None, None]
    windows = x[images, rows[:, :, :, None], cols[:, :, None, :]]
    return windows.reshape(-1, height * width * x.shape[-1])


def _patch_function(layer, input_shape) -> tuple[Callable, int]:
    """(Input batch, positions) -> features whose product with the flat kernel
    is the output there.

    Feature `(i * kernel_width + j) * channels + c` at an output position is
    what kernel tap `(i, j)` multiplies with input channel `c` there, so the
    layer's pre-activation output at `(N, K)` flat output positions is the
    features `(N * K, features)` times its kernel (flattened to `(features,
    filters)`) plus its bias.
    """
    height, width = layer.kernel_size
    features = height * width * input_shape[-1]
    if isinstance(layer, keras.layers.Conv2DTranspose):
        patches = _transposed_patches(layer, input_shape)
        return (lambda x, at: _gather(np.asarray(patches(x)), at)), features
    return (lambda x, at: _window_features(layer, np.asarray(x), at)), features


def _to_kernel(layer, weights: np.ndarray) -> np.ndarray:
    """Flattened least-squares weights `(features, filters)` -> `layer`'s kernel."""
    shape = tuple(layer.kernel.shape)
    if isinstance(layer, keras.layers.Conv2DTranspose):
        height, width, filters, channels = shape
        return weights.reshape(height, width, channels, filters).transpose(0, 1, 3, 2)
    return weights.reshape(shape)


class NormalEquations:
    """Sufficient statistics of a linear least-squares fit `targets ~ features`.

    Accumulates `X'X` and `X'Y` (with a constant column last when `bias`),
    and each target column's sum and sum of squares, batch by batch.

    Args:
        features: Columns of `X` (without the constant).
        outputs: Columns of `Y`.
        bias: Append a constant column to `X`.
        dtype: Precision of each batch's products (`float32` is about twice
            as fast; the sums are float64 either way).

    Attributes:
        gram: `X'X`, float64 `(features + bias, features + bias)`.
        cross: `X'Y`, float64 `(features + bias, outputs)`.
        target_sum: Column sums of `Y`.
        target_squares: Column sums of `Y ** 2`.
        count: Rows seen.
    """

    def __init__(self, features: int, outputs: int, bias: bool, dtype=np.float64):
        size = features + int(bias)
        self.bias = bias
        self.dtype = dtype
        self.gram = np.zeros((size, size))
        self.cross = np.zeros((size, outputs))
        self.target_sum = np.zeros(outputs)
        self.target_squares = np.zeros(outputs)
        self.count = 0

    def add(self, features: np.ndarray, targets: np.ndarray) -> None:
        """Adds rows: `features (n, features)`, `targets (n, outputs)`."""
        x = features.astype(self.dtype)
        if self.bias:
            x = np.concatenate([x, np.ones((len(x), 1), self.dtype)], axis=1)
        y = targets.astype(self.dtype)
        self.gram += x.T @ x
        self.cross += x.T @ y
        y = y.astype(np.float64)
        self.target_sum += y.sum(0)
        self.target_squares += (y**2).sum(0)
        self.count += len(x)

    def solve(self, ridge: float) -> tuple[np.ndarray, float]:
        """Weights `(size, outputs)` and the fit's relative error.

        Args:
            ridge: Added to the feature diagonal of `X'X`, relative to its
                mean (the constant column is not regularised).
        """
        features = self.gram.shape[0] - int(self.bias)
        regularised = self.gram.copy()
        diagonal = np.arange(features)
        strength = ridge * max(float(np.mean(self.gram[diagonal, diagonal])), 1e-12)
        regularised[diagonal, diagonal] += strength
        weights = np.linalg.solve(regularised, self.cross)
        squares = float(np.sum(self.target_squares))
        residual = (
            squares
            - 2.0 * float(np.sum(weights * self.cross))
            + float(np.sum(weights * (self.gram @ weights)))
        )
        total = squares - float(np.sum(self.target_sum**2)) / self.count
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


def layer_equations(
    model: keras.Model,
    names: list[str],
    images: np.ndarray,
    *,
    samples_per_layer: int = 8000,
    batch_size: int = 4,
    seed: int = 0,
    dtype=np.float32,
) -> dict[str, NormalEquations]:
    """Normal equations of convolutions from their input patches to their outputs.

    For each named `Conv2D` / `Conv2DTranspose` of `model`, on sampled output
    positions of `model` run on `images`: features are the layer's input
    patches (feature `(i * kernel_width + j) * channels + c` is what kernel
    tap `(i, j)` multiplies with input channel `c`), targets its
    pre-activation outputs. What a layer can still compute from a subset of
    its input channels follows from them (`tgc.pruning.greedy_paths`).

    Args:
        model: A functional model.
        names: Its convolutions to describe.
        images: `(N, H, W, C)` inputs of `model`.
        samples_per_layer: Output positions per layer, spread over the images.
        batch_size: Images per forward pass.
        seed: Seed of the positions.
        dtype: Precision of the per-batch products (see `NormalEquations`).

    Returns:
        `{name: NormalEquations}` (with a constant column when the layer
        has a bias).

    Raises:
        ValueError: If a name is not an ungrouped convolution of `model`.
    """
    layers = []
    for name in names:
        layer = model.get_layer(name)
        if not _is_fittable(layer):
            raise ValueError(
                f"Layer {name!r} of {model.name!r} is not an ungrouped Conv2D or "
                "Conv2DTranspose."
            )
        layers.append(layer)
    taps = keras.Model(model.input, [layer.input for layer in layers])
    linear, patches, equations = [], [], {}
    for layer in layers:
        clone = _linear_clone(layer)
        clone.build(layer.input.shape)
        clone.set_weights(layer.get_weights())
        linear.append(clone)
        extract, count = _patch_function(layer, layer.input.shape)
        patches.append(extract)
        equations[layer.name] = NormalEquations(
            count, layer.filters, layer.use_bias, dtype
        )
    rng = np.random.default_rng(seed)
    per_image = max(1, -(-samples_per_layer // len(images)))
    for start in range(0, len(images), batch_size):
        inputs = taps(images[start : start + batch_size], training=False)
        inputs = inputs if isinstance(inputs, list | tuple) else [inputs]
        for layer, clone, extract, x in zip(
            layers, linear, patches, inputs, strict=True
        ):
            y = np.asarray(clone(x))
            positions = _sample_positions(y.shape, per_image, rng)
            equations[layer.name].add(extract(x, positions), _gather(y, positions))
    return equations


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
    equations = NormalEquations(count, targets.shape[-1], layer.use_bias)
    per_image = positions.shape[1]
    for start in range(0, len(images), batch_size):
        block = positions[start : start + batch_size]
        rows = slice(start * per_image, (start + len(block)) * per_image)
        equations.add(patches(inputs[start : start + batch_size], block), targets[rows])
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


@dataclasses.dataclass
class BlockFit:
    """How well one block was reconstructed by `reconstruct_blocks`.

    Attributes:
        name: The layer whose output ends the block (`None`: the model's
            output).
        error_before: Mean squared error to the teacher's block output over
            the targets' variance (0: exact, 1: no better than their mean),
            before the block's steps.
        error_after: The same after them.
    """

    name: str | None
    error_before: float
    error_after: float


def residual_boundaries(model: keras.Model) -> list[str]:
    """Where a zoo ResNet generator is cut into blocks: `down2_relu`, `block*_add`.

    The blocks `reconstruct_blocks` fits by default: the stem and the two
    down-samplings, each residual block, and the rest (up-sampling and the
    output, with whatever wraps them such as a colour skip).

    Args:
        model: A ResNet generator of `tgc.models` or a slimmed copy.

    Raises:
        ValueError: If the model has no `down2_relu` or `block1_add` layer.
    """
    names = [layer.name for layer in model.layers]
    if "down2_relu" not in names or "block1_add" not in names:
        raise ValueError(
            f"{model.name!r} is not a zoo ResNet generator (no 'down2_relu' / "
            "'block1_add' layer): pass the block boundaries explicitly."
        )
    blocks = [n for n in names if n.startswith("block") and n.endswith("_add")]
    return ["down2_relu", *sorted(blocks, key=lambda n: int(n[5:-4]))]


def _history(tensor):
    return tensor._keras_history.operation, tensor._keras_history.node_index


def _parents(tensor) -> list:
    operation, index = _history(tensor)
    if isinstance(operation, keras.layers.InputLayer):
        return []
    return list(operation._inbound_nodes[index].arguments.keras_tensors)


def _reaches(tensor, stops: list, wanted) -> bool:
    """Whether `wanted` feeds `tensor` through a path that avoids `stops`."""
    pending, seen = [tensor], set()
    while pending:
        current = pending.pop()
        if current is wanted:
            return True
        if id(current) in seen or any(current is stop for stop in stops):
            continue
        seen.add(id(current))
        pending.extend(_parents(current))
    return False


def _producing_conv(model: keras.Model, name: str) -> str:
    """The convolution whose output channels `name`'s output carries."""
    tensor = model.get_layer(name).output
    while True:
        operation, _ = _history(tensor)
        if isinstance(operation, keras.layers.Conv2D | keras.layers.Conv2DTranspose):
            return operation.name
        parents = _parents(tensor)
        if not parents:
            raise ValueError(
                f"No convolution produces the channels of layer {name!r} of "
                f"{model.name!r}."
            )
        tensor = parents[0]


def _block_model(student: keras.Model, start: str | None, end: str | None):
    """The student's layers from `start`'s output (or its input) to `end`'s."""
    output = student.output if end is None else student.get_layer(end).output
    if start is None:
        return keras.Model(student.input, output), False
    begin = student.get_layer(start).output
    with_input = _reaches(output, [begin], student.input)
    inputs = [begin, student.input] if with_input else begin
    return keras.Model(inputs, output), with_input


def _block_targets(teacher, boundaries, images, kept_by_name, batch_size):
    """The teacher's outputs at every boundary (kept channels) and at the end."""
    taps = keras.Model(
        teacher.input,
        [teacher.get_layer(name).output for name in boundaries] + [teacher.output],
    )
    maps: list[list[np.ndarray]] = [[] for _ in range(len(boundaries) + 1)]
    for start in range(0, len(images), batch_size):
        outputs = taps(images[start : start + batch_size], training=False)
        for k, output in enumerate(outputs):
            indices = kept_by_name.get(k)
            output = np.asarray(output)
            maps[k].append(output if indices is None else output[..., indices])
    return [np.concatenate(m) for m in maps]


def _relative_error(model, inputs, targets, batch_size) -> float:
    outputs = _run_block(model, inputs, batch_size)
    return float(np.mean((outputs - targets) ** 2) / max(np.var(targets), 1e-12))


def _feed(parts: list):
    """A block model's input: one tensor, or the list of two."""
    return parts[0] if len(parts) == 1 else parts


def _run_block(model, inputs, batch_size) -> np.ndarray:
    count = len(inputs[0])
    return np.concatenate(
        [
            np.asarray(
                model(_feed([x[i : i + batch_size] for x in inputs]), training=False)
            )
            for i in range(0, count, batch_size)
        ]
    )


def _train_block(model, inputs, targets, steps, learning_rate, batch_size, rng):
    """`steps` Adam steps of normalised MSE on random batches, cosine-decayed."""
    optimizer = keras.optimizers.Adam(
        keras.optimizers.schedules.CosineDecay(learning_rate, steps)
    )
    variables = model.trainable_variables
    scale = 1.0 / max(float(np.var(targets)), 1e-12)

    @tf.function(reduce_retracing=True)
    def step(batch, wanted):
        with tf.GradientTape() as tape:
            error = model(batch, training=True) - wanted
            loss = scale * tf.reduce_mean(tf.square(error))
        gradients = tape.gradient(loss, variables)
        optimizer.apply_gradients(zip(gradients, variables, strict=True))

    count = len(targets)
    size = min(batch_size, count)
    for _ in range(steps):
        chosen = np.sort(rng.choice(count, size, replace=False))
        batch = _feed([tf.constant(x[chosen]) for x in inputs])
        step(batch, tf.constant(targets[chosen]))


def reconstruct_blocks(
    student: keras.Model,
    teacher: keras.Model,
    images: np.ndarray,
    kept: Mapping[str, np.ndarray] | None = None,
    *,
    boundaries: list[str] | None = None,
    steps: int = 200,
    learning_rate: float = 5e-4,
    batch_size: int = 8,
    seed: int = 0,
    verbose: bool = True,
) -> list[BlockFit]:
    """Trains a pruned student block by block to its teacher's block outputs.

    The student is cut at the outputs of the `boundaries` layers into
    blocks (the first from the input, the last to the output). Block by
    block, in order, its weights take `steps` Adam steps (learning rate
    cosine-decayed to 0) on the mean squared error between its output and
    the teacher's output of the same-named layer on the channels the
    student kept (the model's output for the last block). A block's inputs
    are the student's own activations, computed with the blocks already
    trained, and the teacher runs once: a step costs one block's forward
    and backward pass on a batch. Run it after `reconstruct`.

    Args:
        student: A flat functional model: the teacher with fewer channels
            (e.g. `tgc.slim` of a pruned gated teacher), optionally wrapped
            by `tgc.models.with_colour_skip`; changed in place.
        teacher: The model it was pruned from (same layer names).
        images: `(N, H, W, C)` calibration inputs (e.g. training views).
        kept: `{convolution name: indices of the teacher's channels it
            kept}` (`tgc.surgery.kept_channels`); `None` when the widths
            are equal.
        boundaries: Names of the layers whose outputs end the blocks, in
            graph order; default `residual_boundaries(student)`.
        steps: Gradient steps per block.
        learning_rate: Adam's initial learning rate.
        batch_size: Images per step (and per forward pass).
        seed: Seed of the batches.
        verbose: Show a progress bar.

    Returns:
        One `BlockFit` per block, in order (the last named `None`).

    Raises:
        ValueError: If `images` does not fit the student, a boundary is not
            a layer of both models, or a kept list does not match a width.
    """
    images = np.asarray(images, np.float32)
    channels = student.input_shape[-1]
    if images.ndim != 4 or images.shape[-1] != channels or len(images) == 0:
        raise ValueError(
            f"images must be a non-empty batch (N, H, W, {channels}) for the "
            f"student's input {student.input_shape}, got shape {images.shape}."
        )
    boundaries = residual_boundaries(student) if boundaries is None else boundaries
    teacher_names = {layer.name for layer in teacher.layers}
    student_names = {layer.name for layer in student.layers}
    for name in boundaries:
        if name not in teacher_names or name not in student_names:
            raise ValueError(
                f"Block boundary {name!r} must be a layer of both the student "
                f"{student.name!r} and the teacher {teacher.name!r}."
            )
    kept_by_index = {}
    for k, name in enumerate(boundaries):
        width = student.get_layer(name).output.shape[-1]
        if kept is None:
            if teacher.get_layer(name).output.shape[-1] != width:
                raise ValueError(
                    f"Layer {name!r} is narrower in the student ({width}) than in "
                    "the teacher: pass the kept channels."
                )
            continue
        indices = np.asarray(kept[_producing_conv(student, name)])
        if len(indices) != width:
            raise ValueError(
                f"Layer {name!r} of the student has {width} channels but its kept "
                f"list has {len(indices)}."
            )
        kept_by_index[k] = indices
    targets = _block_targets(teacher, boundaries, images, kept_by_index, batch_size)
    rng = np.random.default_rng(seed)
    progress = keras.utils.Progbar(
        len(targets),
        verbose=int(verbose),
        stateful_metrics=["error"],
        unit_name="block",
    )
    # Models cut at inner tensors leave nodes in their source graph that
    # `student.save` cannot serialise: cut a clone, copy its weights back.
    clone = keras.models.clone_model(student)
    clone.set_weights(student.get_weights())
    ends = [*boundaries, None]
    current = images
    fits = []
    for k, (end, wanted) in enumerate(zip(ends, targets, strict=True)):
        start = boundaries[k - 1] if k else None
        model, with_input = _block_model(clone, start, end)
        inputs = [current, images] if with_input else [current]
        before = _relative_error(model, inputs, wanted, batch_size)
        _train_block(model, inputs, wanted, steps, learning_rate, batch_size, rng)
        current = _run_block(model, inputs, batch_size)
        after = float(np.mean((current - wanted) ** 2) / max(np.var(wanted), 1e-12))
        fits.append(BlockFit(end, before, after))
        progress.update(k + 1, [("error", after)], finalize=k + 1 == len(targets))
    student.set_weights(clone.get_weights())
    return fits
