"""A global colour skip around a generator: `y = clip(colour_map(x) + g(x))`.

Many image-to-image teachers (photo styles, enhancement) keep most of the
input: on the vintage task the identity is already 23 dB PSNR from the
teacher. A thin student trained from a pruned teacher must first relearn to
copy its input through its down- and up-sampling path, which the few
thousand steps affordable on a CPU do not buy. With the skip the student
starts as the best global colour map (a 1x1 convolution, fitted by least
squares) and its generator, whose last convolution starts at zero, learns
only what the teacher adds: the local, image-dependent part.

The result is a plain functional model: the skip is one 1x1 `Conv2D`
(3 -> 3), an `Add` and a `hard_tanh` clip, so `tgc.profile`, `tgc.slim` and
the LiteRT/ONNX exporters see ordinary layers (RELU_N1_TO_1 in LiteRT).

The detail skip (`with_detail_skip`) passes only the input's fine detail,
`x - blur(x)`, through a 3x3 colour matrix to the output: it carries
edges and texture, not tone (a constant image adds nothing through it),
so the student's tone stays its own layers' while its detail can come
from the input, as a teacher that keeps most of its input keeps it.
"""

from __future__ import annotations

import keras
import numpy as np

from keras_layers import ReflectionPadding2D


def fit_colour_map(
    inputs: np.ndarray, targets: np.ndarray, samples: int = 20000, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares colour map `targets ~ inputs @ matrix + bias`.

    Args:
        inputs: `(..., 3)` images.
        targets: Images of the same shape.
        samples: Pixels drawn at random (without replacement) for the fit.
        seed: Seed of the draw.

    Returns:
        `(matrix (3, 3), bias (3,))`, float32.

    Raises:
        ValueError: If the shapes differ or the last axis is not 3.
    """
    inputs, targets = np.asarray(inputs), np.asarray(targets)
    if inputs.shape != targets.shape or inputs.shape[-1] != 3:
        raise ValueError(
            "A colour map needs inputs and targets of one shape (..., 3), got "
            f"{inputs.shape} and {targets.shape}."
        )
    x = inputs.reshape(-1, 3).astype(np.float64)
    y = targets.reshape(-1, 3).astype(np.float64)
    chosen = np.random.default_rng(seed).choice(
        len(x), size=min(samples, len(x)), replace=False
    )
    design = np.concatenate([x[chosen], np.ones((len(chosen), 1))], axis=1)
    solution, *_ = np.linalg.lstsq(design, y[chosen], rcond=None)
    return solution[:3].astype(np.float32), solution[3].astype(np.float32)


def with_colour_skip(
    generator: keras.Model,
    colour_map: tuple[np.ndarray, np.ndarray] | None = None,
    zero_layer: str | None = "out_conv",
    name: str | None = None,
) -> keras.Model:
    """Wraps a 3-channel generator as `hard_tanh(colour_map(x) + generator(x))`.

    Args:
        generator: A functional image-to-image model, 3 channels in and out.
            Its layers are shared with the result (not copied).
        colour_map: `(matrix (3, 3), bias (3,))` of the skip (e.g. from
            `fit_colour_map`); default the identity.
        zero_layer: Name of the generator's layer whose weights are zeroed so
            the generator's contribution starts at zero (`"out_conv"` in the
            zoo's generators, before their tanh); `None` keeps them.
        name: The model's name (default `<generator>_colour_skip`).

    Returns:
        A flat functional model with one more 1x1 `Conv2D` named
        `"colour_skip"`.

    Raises:
        ValueError: If the generator is not 3 channels in and out, or
            `zero_layer` is not one of its layers.

    Example:

    >>> core = tgc.pruning.l1_prune(tgc.models.pretrained("vintage"), 0.25)
    >>> student = with_colour_skip(core, fit_colour_map(photos, teacher_outputs))
    """
    if generator.input_shape[-1] != 3 or generator.output_shape[-1] != 3:
        raise ValueError(
            "with_colour_skip needs a generator with 3 channels in and out, got "
            f"{generator.input_shape} -> {generator.output_shape}."
        )
    if zero_layer is not None:
        names = [layer.name for layer in generator.layers]
        if zero_layer not in names:
            raise ValueError(
                f"zero_layer {zero_layer!r} is not a layer of {generator.name!r}; "
                f"its last layers are {names[-4:]}."
            )
        layer = generator.get_layer(zero_layer)
        layer.set_weights([np.zeros_like(w) for w in layer.get_weights()])
    matrix, bias = (
        (np.eye(3, dtype=np.float32), np.zeros(3, np.float32))
        if colour_map is None
        else colour_map
    )
    skip = keras.layers.Conv2D(3, 1, name="colour_skip")
    x = generator.input
    summed = keras.layers.Add(name="colour_skip_add")([skip(x), generator.output])
    y = keras.layers.Activation("hard_tanh", name="colour_skip_clip")(summed)
    skip.set_weights(
        [
            np.asarray(matrix, np.float32).reshape(1, 1, 3, 3),
            np.asarray(bias, np.float32).reshape(3),
        ]
    )
    return keras.Model(x, y, name=name or f"{generator.name}_colour_skip")


def gaussian_kernel(sigma: float) -> np.ndarray:
    """A normalised 1-D Gaussian of radius `ceil(3 * sigma)`, float32."""
    radius = int(np.ceil(3 * sigma))
    offsets = np.arange(-radius, radius + 1, dtype=np.float64)
    kernel = np.exp(-0.5 * (offsets / sigma) ** 2)
    return (kernel / kernel.sum()).astype(np.float32)


def with_detail_skip(
    generator: keras.Model,
    sigma: float = 2.0,
    gain: float = 1.0,
    name: str | None = None,
) -> keras.Model:
    """Wraps a generator as `hard_tanh(generator(x) + A (x - blur(x)))`.

    `blur` is a fixed Gaussian of standard deviation `sigma` pixels
    (separable: two depthwise convolutions on the reflection-padded input);
    `A` is a trainable 1x1 `Conv2D` without bias, starting at `gain` times
    the identity. The generator keeps its output layer: refit it around
    the skip (`tgc.reconstruction.reconstruct` fits the output layer to
    what the rest leaves), or start with `gain=0`.

    Args:
        generator: A functional image-to-image model with as many channels
            out as in. Its layers are shared with the result (not copied).
        sigma: The blur's standard deviation in pixels (> 0); detail finer
            than about `sigma` passes.
        gain: `A`'s starting diagonal.
        name: The model's name (default `<generator>_detail_skip`).

    Returns:
        A flat functional model with the layers `detail_pad`,
        `detail_blur_rows`, `detail_blur_columns` (not trainable),
        `detail_high`, `detail_skip` (`A`), `detail_skip_add` and
        `detail_skip_clip`.

    Raises:
        ValueError: If `sigma` is not positive or the generator's input and
            output channels differ.

    Example:

    >>> student = with_detail_skip(tgc.slim(gated), sigma=2.0)
    """
    channels = generator.input_shape[-1]
    if not sigma > 0:
        raise ValueError(f"with_detail_skip needs sigma > 0 pixels, got {sigma}.")
    if generator.output_shape[-1] != channels:
        raise ValueError(
            "with_detail_skip needs as many output channels as input channels, "
            f"got {generator.input_shape} -> {generator.output_shape}."
        )
    kernel = gaussian_kernel(sigma)
    radius = len(kernel) // 2
    rows = keras.layers.DepthwiseConv2D(
        (1, len(kernel)), use_bias=False, trainable=False, name="detail_blur_rows"
    )
    columns = keras.layers.DepthwiseConv2D(
        (len(kernel), 1), use_bias=False, trainable=False, name="detail_blur_columns"
    )
    mix = keras.layers.Conv2D(channels, 1, use_bias=False, name="detail_skip")
    x = generator.input
    padded = ReflectionPadding2D(radius, name="detail_pad")(x)
    high = keras.layers.Subtract(name="detail_high")([x, columns(rows(padded))])
    summed = keras.layers.Add(name="detail_skip_add")([mix(high), generator.output])
    y = keras.layers.Activation("hard_tanh", name="detail_skip_clip")(summed)
    rows.set_weights([np.tile(kernel.reshape(1, -1, 1, 1), (1, 1, channels, 1))])
    columns.set_weights([np.tile(kernel.reshape(-1, 1, 1, 1), (1, 1, channels, 1))])
    mix.set_weights([gain * np.eye(channels, dtype=np.float32)[None, None]])
    return keras.Model(x, y, name=name or f"{generator.name}_detail_skip")
