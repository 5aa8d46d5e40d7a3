"""tgc.density: neighbourhoods on the teacher's outputs and the KDE term."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfgancompress.density import (
    NeighbourBank,
    augment,
    kde_structure_loss,
    output_features,
)

RNG = np.random.default_rng(0)


def _neighbourhoods(n=4, k=3, d=48):
    centres = tf.constant(RNG.normal(size=(n, d)), tf.float32)
    neighbours = centres[:, None] + tf.constant(
        0.3 * RNG.normal(size=(n, k, d)), tf.float32
    )
    return centres, neighbours


def test_kde_term_is_zero_for_identical_neighbourhoods():
    centres, neighbours = _neighbourhoods()
    assert float(kde_structure_loss(centres, neighbours, centres, neighbours)) == 0.0
    # A neighbourhood moved as a whole keeps its structure.
    shifted = kde_structure_loss(centres, neighbours, centres + 2.0, neighbours + 2.0)
    assert float(shifted) == pytest.approx(0.0, abs=1e-10)


def test_kde_term_grows_with_perturbation():
    centres, neighbours = _neighbourhoods()
    noise_c = tf.constant(RNG.normal(size=centres.shape), tf.float32)
    noise_n = tf.constant(RNG.normal(size=neighbours.shape), tf.float32)
    values = [
        float(
            kde_structure_loss(
                centres, neighbours, centres + s * noise_c, neighbours + s * noise_n
            )
        )
        for s in (0.0, 0.03, 0.1, 0.3, 1.0)
    ]
    assert values[0] == 0.0
    assert all(a < b for a, b in zip(values[:-1], values[1:], strict=True)), values
    # A student neighbourhood that collapses onto its centre is penalised too.
    collapsed = tf.repeat(centres[:, None], neighbours.shape[1], axis=1)
    assert float(kde_structure_loss(centres, neighbours, centres, collapsed)) > 0.05


def test_kde_term_gradient_reaches_the_student():
    centres, neighbours = _neighbourhoods()
    student = tf.Variable(neighbours + 0.1)
    with tf.GradientTape() as tape:
        loss = kde_structure_loss(centres, neighbours, centres, student)
    assert float(tf.reduce_max(tf.abs(tape.gradient(loss, student)))) > 0.0


def test_kde_term_shape_errors():
    centres, neighbours = _neighbourhoods()
    with pytest.raises(ValueError, match=r"centres \(N, D\)"):
        kde_structure_loss(centres, neighbours, centres, neighbours[:, :2])
    with pytest.raises(ValueError, match=r"centres \(N, D\)"):
        kde_structure_loss(neighbours, neighbours, neighbours, neighbours)


def test_output_features_pool_and_check_the_grid():
    images = tf.constant(RNG.uniform(-1, 1, (2, 16, 16, 3)), tf.float32)
    features = output_features(images, 4)
    assert features.shape == (2, 48)
    expected = images.numpy().reshape(2, 4, 4, 4, 4, 3).mean((2, 4)).reshape(2, -1)
    np.testing.assert_allclose(features.numpy(), expected, atol=1e-6)
    with pytest.raises(ValueError, match="must divide the image size 16x16"):
        output_features(images, 5)


def _pairs(n=6, size=16):
    x = RNG.uniform(-1, 1, (n, size, size, 3)).astype("float32")
    return x, np.tanh(2 * x[..., ::-1]).astype("float32")


def test_bank_returns_the_nearest_other_pairs():
    x, y = _pairs(size=32)
    bank = NeighbourBank(neighbours=2, capacity=8, grid=4)
    x_nb, y_nb = bank(x, y)
    assert x_nb.shape == (6, 2, 32, 32, 3) and y_nb.shape == (6, 2, 32, 32, 3)
    f = output_features(y, 4).numpy()
    distances = ((f[:, None] - f[None]) ** 2).mean(-1)
    np.fill_diagonal(distances, np.inf)
    nearest = np.argsort(distances, axis=1)[:, :2]
    for i in range(6):
        for j in range(2):
            np.testing.assert_array_equal(x_nb[i, j], x[nearest[i, j]])
            np.testing.assert_array_equal(y_nb[i, j], y[nearest[i, j]])


def test_bank_ring_buffer_and_stand_ins():
    x, y = _pairs(n=2)
    bank = NeighbourBank(neighbours=3, capacity=4, grid=4)
    x_nb, _ = bank(x, y)
    # One other pair stored: it is the first neighbour, the centre stands in.
    np.testing.assert_array_equal(x_nb[0, 0], x[1])
    np.testing.assert_array_equal(x_nb[0, 1], x[0])
    np.testing.assert_array_equal(x_nb[0, 2], x[0])
    # The same batch again: exact copies are never neighbours.
    x_nb, _ = bank(x, y)
    np.testing.assert_array_equal(x_nb[1, 0], x[0])
    assert int(bank.position.numpy()) == 0
    x2, y2 = _pairs(n=3)
    bank(x2, y2)  # overwrites slots 0, 1 and 2
    np.testing.assert_array_equal(bank.stored_inputs.numpy()[3], x[1])
    np.testing.assert_array_equal(bank.stored_inputs.numpy()[:3], x2)


def test_bank_in_xla_and_keras_round_trip(tmp_path):
    x, y = _pairs(n=4)
    bank = NeighbourBank(neighbours=2, capacity=8, grid=4, name="bank")
    inputs = [keras.Input((16, 16, 3), batch_size=4) for _ in range(2)]
    model = keras.Model(inputs, bank(*inputs, update=False))
    step = tf.function(lambda a, b: bank(a, b), jit_compile=True)
    eager = NeighbourBank(neighbours=2, capacity=8, grid=4)
    for _ in range(3):
        compiled = step(x, y)
        expected = eager(x, y)
    np.testing.assert_array_equal(compiled[0], expected[0])
    path = str(tmp_path / "bank.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    assert loaded.get_layer("bank").get_config()["capacity"] == 8
    expected = model.predict([x, y], verbose=0)
    for a, b in zip(expected, loaded.predict([x, y], verbose=0), strict=True):
        np.testing.assert_array_equal(a, b)


def test_bank_errors():
    with pytest.raises(ValueError, match="capacity > neighbours"):
        NeighbourBank(neighbours=4, capacity=4)
    with pytest.raises(ValueError, match="fixed"):
        NeighbourBank(2).build((None, None, None, 3), (None, None, None, 3))


def test_augment_is_a_seeded_colour_jitter():
    x, _ = _pairs(n=3)
    a = augment(x, tf.constant([1, 2]), 0.1).numpy()
    np.testing.assert_array_equal(a, augment(x, tf.constant([1, 2]), 0.1).numpy())
    assert not np.array_equal(a, augment(x, tf.constant([1, 3]), 0.1).numpy())
    assert a.min() >= -1.0 and a.max() <= 1.0
    difference = np.abs(a - x).mean()
    assert 0.005 < difference < 0.3
