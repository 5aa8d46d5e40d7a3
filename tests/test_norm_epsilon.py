"""InstanceNormalization with one epsilon per channel."""

import numpy as np
import pytest

from keras_layers import InstanceNormalization


def test_per_channel_epsilon_matches_numpy():
    rng = np.random.default_rng(0)
    x = rng.normal(0.0, 1.0, (2, 8, 8, 3)).astype("float32") * [1.0, 1e-3, 0.1]
    epsilon = [1e-5, 1e-6, 1e-2]
    layer = InstanceNormalization(epsilon=epsilon)
    mean = x.mean(axis=(1, 2), keepdims=True)
    variance = x.var(axis=(1, 2), keepdims=True)
    expected = (x - mean) / np.sqrt(variance + np.asarray(epsilon))
    np.testing.assert_allclose(np.asarray(layer(x)), expected, atol=1e-4)
    assert InstanceNormalization.from_config(layer.get_config()).epsilon == epsilon


def test_scaled_input_with_scaled_epsilon_is_the_same_function():
    rng = np.random.default_rng(1)
    x = rng.normal(0.0, 1e-3, (1, 8, 8, 2)).astype("float32")
    factors = np.asarray([1000.0, 3.0], np.float32)
    plain = InstanceNormalization(epsilon=1e-5)(x)
    scaled = InstanceNormalization(epsilon=list(1e-5 * factors**2))(x * factors)
    np.testing.assert_allclose(np.asarray(scaled), np.asarray(plain), atol=1e-4)


def test_bad_epsilons_are_refused():
    with pytest.raises(ValueError, match="2 per-channel epsilons for 3 channels"):
        InstanceNormalization(epsilon=[1e-5, 1e-5])(np.zeros((1, 4, 4, 3), "float32"))
    with pytest.raises(ValueError, match="epsilon must be positive"):
        InstanceNormalization(epsilon=[1e-5, 0.0])
