"""Local density structure of a generator's outputs: neighbourhoods and a KDE term.

Ganjdanesh et al. (AAAI 2024) compress an image-to-image GAN by asking the
pruned generator to keep the *local density structure* of the original
one on its learned manifold: the manifold is partitioned into local
neighbourhoods around the teacher's generated samples (a "centre" and its
neighbours), and within each neighbourhood the student's samples must be
distributed like the teacher's. The paper publishes no code; this module
is this project's reading of it (see `training.methods.local_density` for
the whole method).

**Neighbourhoods.** For a training input `x_c` (the centre, with the
teacher's output `T(x_c)`), the neighbours are inputs `x_j` whose teacher
outputs lie near `T(x_c)`:

- *nearest* neighbours: the `k` training pairs `(x_j, T(x_j))` of recent
  batches whose teacher outputs are closest to `T(x_c)` in a feature space
  (`output_features`: the output average-pooled to a `grid x grid` image).
  They come from a `NeighbourBank` of the last `capacity` pairs, whose
  teacher outputs are the cached training targets: **no teacher forward**.
  An exact copy of the centre (distance ~0, e.g. the same view seen again)
  is never its own neighbour; while the bank holds fewer than `k` other
  pairs, the centre stands in for the missing ones (a zero-distance
  neighbour adds nothing to the KDE term).
- *augmented* neighbours (`augment`): `T(x_c')` for colour-jittered copies
  `x_c'` of the input; each costs **one teacher forward per image**, the
  price of a full-width generator forward, so they are off by default in
  the method.

Either way, the student runs on every neighbour too: a neighbourhood of
`k` costs `k` more student forward/backward passes per centre.

**KDE term** (`kde_structure_loss`). Kernel density estimation describes
a neighbourhood by Gaussian kernels around its samples. With `f` the
features of a sample (`output_features` at a finer grid), the teacher's
structure of neighbourhood `c` is the vector of kernel similarities
between its centre and each neighbour,
`K_T[c, j] = exp(-|f(T(x_c)) - f(T(x_j))|^2 / (2 h_c^2))`, and the
student's is the same with `S` for `T`. The bandwidth `h_c^2` is the
neighbourhood's mean squared teacher distance (per neighbourhood, no
gradient), so similarities are of order `exp(-1/2)` whatever the local
scale. The term is `mean((K_T - K_S)^2)`: zero when the student's
neighbourhood has the teacher's shape, growing as it deforms. It is blind
to moving the whole neighbourhood; the adversarial and pixel terms of the
method pin that down.
"""

from __future__ import annotations

import keras
import tensorflow as tf

_EPSILON = 1e-8


def output_features(images, grid: int) -> tf.Tensor:
    """Images average-pooled to `grid x grid` and flattened: `(B, grid^2 * C)`.

    Args:
        images: `(B, H, W, C)` float images; `H` and `W` multiples of `grid`.
        grid: Side of the pooled image.

    Raises:
        ValueError: If the image size is not a multiple of `grid`.

    Example:

    >>> output_features(tf.ones((2, 64, 64, 3)), 8).shape
    TensorShape([2, 192])
    """
    images = tf.convert_to_tensor(images, tf.float32)
    height, width = images.shape[1], images.shape[2]
    if grid < 1 or (height or grid) % grid or (width or grid) % grid:
        raise ValueError(
            f"Feature grid {grid} must divide the image size {height}x{width}."
        )
    window = (height // grid, width // grid)
    pooled = tf.nn.avg_pool2d(images, window, window, "VALID")
    return tf.reshape(pooled, (tf.shape(images)[0], -1))


def _squared_distances(centres, neighbours):
    """`(N, K)` mean squared distance per feature, centre to each neighbour."""
    return tf.reduce_mean(tf.square(centres[:, None, :] - neighbours), axis=-1)


def kernel_similarities(centres, neighbours, bandwidth_sq) -> tf.Tensor:
    """`exp(-d^2 / (2 h^2))` between each centre and its neighbours: `(N, K)`.

    Args:
        centres: `(N, D)` features.
        neighbours: `(N, K, D)` features.
        bandwidth_sq: `(N, 1)` (or broadcastable) squared bandwidths.
    """
    distances = _squared_distances(centres, neighbours)
    return tf.exp(-distances / (2.0 * bandwidth_sq))


def neighbourhood_bandwidth(teacher_centres, teacher_neighbours) -> tf.Tensor:
    """`(N, 1)` squared bandwidth per neighbourhood: mean squared teacher distance."""
    distances = _squared_distances(teacher_centres, teacher_neighbours)
    mean = tf.reduce_mean(distances, axis=1, keepdims=True)
    return tf.stop_gradient(mean) + _EPSILON


def kde_structure_loss(
    teacher_centres,
    teacher_neighbours,
    student_centres,
    student_neighbours,
) -> tf.Tensor:
    """The local density structure term (module docstring).

    Args:
        teacher_centres: `(N, D)` features of the teacher's centre samples.
        teacher_neighbours: `(N, K, D)` features of the teacher's neighbours.
        student_centres: `(N, D)` the student's, on the same inputs.
        student_neighbours: `(N, K, D)` the student's.

    Returns:
        A float32 scalar `mean((K_T - K_S)^2)`, 0 for identical teacher and
        student neighbourhoods.

    Raises:
        ValueError: On mismatched shapes.

    Example:

    >>> t, n = tf.random.normal((4, 8)), tf.random.normal((4, 3, 8))
    >>> float(kde_structure_loss(t, n, t, n))
    0.0
    """
    given = (teacher_centres, teacher_neighbours, student_centres, student_neighbours)
    tensors = [tf.convert_to_tensor(t, tf.float32) for t in given]
    t_centres, t_neighbours, s_centres, s_neighbours = tensors
    if (
        t_centres.shape.rank != 2
        or t_neighbours.shape.rank != 3
        or not t_centres.shape.is_compatible_with(s_centres.shape)
        or not t_neighbours.shape.is_compatible_with(s_neighbours.shape)
    ):
        raise ValueError(
            "kde_structure_loss takes centres (N, D) and neighbours (N, K, D) for "
            f"teacher and student alike; got {[tuple(t.shape) for t in tensors]}."
        )
    bandwidth_sq = neighbourhood_bandwidth(t_centres, t_neighbours)
    teacher = kernel_similarities(t_centres, t_neighbours, bandwidth_sq)
    student = kernel_similarities(s_centres, s_neighbours, bandwidth_sq)
    return tf.reduce_mean(tf.square(teacher - student))


def augment(images, seed, strength: float = 0.1) -> tf.Tensor:
    """Colour-jittered copies of images in [-1, 1] (augmented neighbours).

    Per image: brightness shift in `[-strength, strength]`, contrast and
    per-channel gain in `[1 - 2 strength, 1 + 2 strength]`; clipped to
    [-1, 1]. Stateless in `seed` (a `(2,)` int tensor).
    """
    images = tf.convert_to_tensor(images, tf.float32)
    batch = tf.shape(images)[0]
    channels = images.shape[-1]
    seeds = tf.random.experimental.stateless_split(seed, 3)
    shift = tf.random.stateless_uniform((batch, 1, 1, 1), seeds[0], -strength, strength)
    contrast = tf.random.stateless_uniform(
        (batch, 1, 1, 1), seeds[1], 1 - 2 * strength, 1 + 2 * strength
    )
    gain = tf.random.stateless_uniform(
        (batch, 1, 1, channels), seeds[2], 1 - strength, 1 + strength
    )
    mean = tf.reduce_mean(images, axis=(1, 2, 3), keepdims=True)
    jittered = (images - mean) * contrast * gain + mean + shift
    return tf.clip_by_value(jittered, -1.0, 1.0)


@keras.saving.register_keras_serializable(package="tfgancompress")
class NeighbourBank(keras.layers.Layer):
    """The last `capacity` training pairs, searched for nearest neighbours.

    A ring buffer of `(input, teacher output)` pairs and of the teacher
    outputs' features (`output_features` at `grid`), in non-trainable
    variables (a checkpoint of the trainer holds it). Called on a batch of
    centres, it stores them, then returns each centre's `neighbours`
    nearest stored pairs (an exact copy of the centre excluded; the centre
    stands in while fewer are stored).

    Args:
        neighbours: `k`, neighbours per centre.
        capacity: Pairs kept (more than the batch size).
        grid: Side of the pooled teacher outputs the search compares.
        **kwargs: Base layer keyword arguments.

    Call arguments:
        inputs: `(B, H, W, C_in)` inputs of the centres.
        targets: `(B, H, W, C_out)` their teacher outputs.
        update: Store the batch before searching.

    Returns:
        `(inputs, targets)` of the neighbours, `(B, k, H, W, C)` each,
        nearest first.

    Example:

    >>> bank = NeighbourBank(neighbours=2, capacity=32)
    >>> x_nb, y_nb = bank(x, y)  # (B, 2, H, W, C) each
    """

    def __init__(
        self, neighbours: int = 2, capacity: int = 64, grid: int = 8, **kwargs
    ):
        super().__init__(**kwargs)
        if neighbours < 1 or capacity <= neighbours or grid < 1:
            raise ValueError(
                "NeighbourBank needs neighbours >= 1, capacity > neighbours and "
                f"grid >= 1, got {neighbours}, {capacity} and {grid}."
            )
        self.neighbours = int(neighbours)
        self.capacity = int(capacity)
        self.grid = int(grid)

    def build(self, inputs_shape, targets_shape):
        for what, shape in (("input", inputs_shape), ("target", targets_shape)):
            shape = tuple(shape)
            if len(shape) != 4 or None in shape[1:]:
                raise ValueError(
                    f"NeighbourBank needs fixed (H, W, C) {what} images, got shape "
                    f"{shape}."
                )
        output_features(tf.zeros((1, *targets_shape[1:])), self.grid)
        cells = self.grid * self.grid
        slots = (self.capacity,)

        def variable(name, shape, dtype="float32"):
            return self.add_weight(
                shape=shape,
                initializer="zeros",
                dtype=dtype,
                trainable=False,
                name=name,
            )

        self.stored_inputs = variable("inputs", slots + tuple(inputs_shape[1:]))
        self.stored_targets = variable("targets", slots + tuple(targets_shape[1:]))
        self.features = variable("features", (self.capacity, cells * targets_shape[3]))
        self.filled = variable("filled", slots)
        self.position = variable("position", (), "int32")
        self.built = True

    def update(self, inputs, targets) -> None:
        """Stores a batch of pairs, overwriting the oldest."""
        batch = tf.shape(inputs)[0]
        indices = ((self.position + tf.range(batch)) % self.capacity)[:, None]
        targets = tf.cast(targets, tf.float32)
        updates = (
            (self.stored_inputs, tf.cast(inputs, tf.float32)),
            (self.stored_targets, targets),
            (self.features, output_features(targets, self.grid)),
            (self.filled, tf.ones((batch,))),
        )
        for variable, values in updates:
            variable.assign(tf.tensor_scatter_nd_update(variable, indices, values))
        self.position.assign((self.position + batch) % self.capacity)

    def call(self, inputs, targets, update=True):
        if update:
            self.update(inputs, targets)
        features = output_features(targets, self.grid)
        distances = tf.reduce_mean(
            tf.square(features[:, None, :] - self.features[None]), axis=-1
        )
        usable = (self.filled[None] > 0) & (distances > 1e-10)
        distances = tf.where(usable, distances, float("inf"))
        negative, indices = tf.math.top_k(-distances, self.neighbours)
        found = tf.math.is_finite(negative)[:, :, None, None, None]

        def gathered(stored, centres):
            centres = tf.cast(centres, tf.float32)[:, None]
            return tf.where(found, tf.gather(stored, indices), centres)

        return (
            gathered(self.stored_inputs, inputs),
            gathered(self.stored_targets, targets),
        )

    def compute_output_shape(self, inputs_shape, targets_shape):
        k = (self.neighbours,)
        return (
            (inputs_shape[0], *k, *inputs_shape[1:]),
            (targets_shape[0], *k, *targets_shape[1:]),
        )

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "neighbours": self.neighbours,
                "capacity": self.capacity,
                "grid": self.grid,
            }
        )
        return config
