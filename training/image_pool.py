"""CycleGAN's history buffer of generated images, as an XLA-friendly layer."""

from __future__ import annotations

import keras
import tensorflow as tf


@keras.saving.register_keras_serializable(package="tfgancompress")
class ImagePool(keras.layers.Layer):
    """A buffer of previously generated images shown to the discriminator.

    CycleGAN's `ImagePool` (Shrivastava et al. 2017): while the pool is not
    full each image is stored and returned unchanged; afterwards each image
    is, with probability 1/2, swapped with a random stored image (the stored
    one is returned, the new one takes its place), else returned unchanged.
    Images are processed in order within a batch, exactly like the PyTorch
    code, by a `tf.while_loop` over the batch.

    The buffer and the fill count are non-trainable variables, so the pool is
    saved and restored with the model's weights (e.g. by
    `keras.callbacks.BackupAndRestore`). Randomness is stateless: the caller
    passes a `seed` (e.g. derived from the optimizer's step), so the layer
    runs under XLA and `tf.distribute`. Under a distribution strategy the
    replicas share one buffer, written from the first replica's batch.

    Args:
        pool_size: Number of stored images (CycleGAN: 50), >= 1.
        image_shape: `(H, W, C)` of the images, fully known.
        **kwargs: Base layer keyword arguments.

    Example:

    >>> pool = ImagePool(2, (8, 8, 3))
    >>> images = keras.ops.ones((4, 8, 8, 3))
    >>> pool(images, seed=keras.ops.array([0, 1], "int32")).shape
    TensorShape([4, 8, 8, 3])
    >>> int(pool.count.numpy())
    2
    """

    def __init__(self, pool_size: int, image_shape: tuple, **kwargs):
        super().__init__(**kwargs)
        if isinstance(pool_size, bool) or not isinstance(pool_size, int):
            raise ValueError(f"pool_size must be an int, got {pool_size!r}.")
        if pool_size < 1:
            raise ValueError(f"pool_size must be >= 1, got {pool_size}.")
        image_shape = tuple(image_shape)
        if len(image_shape) != 3 or not all(
            isinstance(d, int) and d > 0 for d in image_shape
        ):
            raise ValueError(
                "ImagePool needs a fully known image_shape (H, W, C) to allocate "
                f"its buffer, got {image_shape}."
            )
        self.pool_size = pool_size
        self.image_shape = image_shape
        self.buffer = self.add_weight(
            shape=(pool_size, *image_shape),
            initializer="zeros",
            trainable=False,
            aggregation="only_first_replica",
            name="buffer",
        )
        self.count = self.add_weight(
            shape=(),
            initializer="zeros",
            dtype="int32",
            trainable=False,
            aggregation="only_first_replica",
            name="count",
        )
        self.built = True

    def call(self, images, seed):
        """Returns the images to show the discriminator and updates the pool.

        Args:
            images: `(B, H, W, C)` generated images (gradients are stopped).
            seed: A `(2,)` int32 seed for `tf.random.stateless_*`.

        Returns:
            A `(B, H, W, C)` tensor of new and stored images.
        """
        images = tf.stop_gradient(tf.cast(images, self.buffer.dtype))
        if tuple(images.shape[1:]) != self.image_shape:
            raise ValueError(
                f"ImagePool {self.name!r} holds images of shape {self.image_shape},"
                f" got a batch of shape {tuple(images.shape)}."
            )
        batch = tf.shape(images)[0]
        swap_seed, index_seed = tf.unstack(
            tf.random.experimental.stateless_split(tf.cast(seed, tf.int32), 2)
        )
        coins = tf.random.stateless_uniform([batch], swap_seed)
        picks = tf.random.stateless_uniform(
            [batch], index_seed, minval=0, maxval=self.pool_size, dtype=tf.int32
        )

        # tf.gather, not [i]: XLA would make data-dependent slice starts
        # compile-time constants and recompile the step for every seed.
        def body(i, buffer, count, outputs):
            image = tf.gather(images, i)
            fill = count < self.pool_size
            swap = tf.logical_and(tf.logical_not(fill), tf.gather(coins, i) < 0.5)
            slot = tf.where(fill, count, tf.gather(picks, i))
            stored = tf.gather(buffer, slot)
            returned = tf.where(swap, stored, image)
            written = tf.where(tf.logical_or(fill, swap), image, stored)
            buffer = tf.tensor_scatter_nd_update(buffer, [[slot]], written[None])
            outputs = tf.tensor_scatter_nd_update(outputs, [[i]], returned[None])
            return i + 1, buffer, count + tf.cast(fill, tf.int32), outputs

        _, buffer, count, outputs = tf.while_loop(
            lambda i, *_: i < batch,
            body,
            (
                tf.constant(0),
                tf.convert_to_tensor(self.buffer),
                tf.convert_to_tensor(self.count),
                images,
            ),
        )
        self.buffer.assign(buffer)
        self.count.assign(count)
        return outputs

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update({"pool_size": self.pool_size, "image_shape": self.image_shape})
        return config
