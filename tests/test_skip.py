"""The global colour skip: fit, initial function, export parity, errors."""

import numpy as np
import pytest

import tfgancompress as tgc
from tfgancompress import export, models


def _images(n, seed, size=32):
    return (
        np.random.default_rng(seed)
        .uniform(-1, 1, (n, size, size, 3))
        .astype(np.float32)
    )


def _check_added_macs_and_litert(student, core, added, x, directory):
    """`student` costs `core`'s MACs + `added`; its LiteRT file computes it."""
    shape = (32, 32, 3)
    assert tgc.profile(student, shape).macs == tgc.profile(core, shape).macs + added
    path = export.to_litert(student, directory / "student.tflite", input_shape=shape)
    np.testing.assert_allclose(
        export.run_litert(path, x[:1]), student.predict(x[:1], verbose=0), atol=1e-4
    )


def test_fit_colour_map_recovers_a_known_map():
    x = _images(4, seed=0) * 0.5
    matrix = np.array([[0.9, 0.1, 0.0], [0.05, 0.8, 0.1], [0.0, 0.2, 0.7]])
    bias = np.array([0.1, -0.05, 0.02])
    fitted_matrix, fitted_bias = models.fit_colour_map(x, x @ matrix + bias)
    np.testing.assert_allclose(fitted_matrix, matrix, atol=1e-5)
    np.testing.assert_allclose(fitted_bias, bias, atol=1e-5)
    with pytest.raises(ValueError, match=r"\(4, 32, 32, 3\) and \(4, 32, 32, 1\)"):
        models.fit_colour_map(x, x[..., :1])


def test_skip_starts_as_the_colour_map_then_adds_the_generator(tmp_path):
    core = models.resnet_generator(ngf=8, n_blocks=2)
    matrix = np.diag([0.5, 0.7, 0.9]).astype(np.float32)
    bias = np.array([0.2, 0.0, -0.1], np.float32)
    student = models.with_colour_skip(core, (matrix, bias))
    x = _images(2, seed=1)
    np.testing.assert_allclose(
        student.predict(x, verbose=0), np.clip(x @ matrix + bias, -1, 1), atol=1e-6
    )
    out_conv = core.get_layer("out_conv")
    out_conv.set_weights([w + 0.05 for w in out_conv.get_weights()])
    expected = np.clip(x @ matrix + bias + core.predict(x, verbose=0), -1, 1)
    np.testing.assert_allclose(student.predict(x, verbose=0), expected, atol=1e-5)
    _check_added_macs_and_litert(student, core, 32 * 32 * 9, x, tmp_path)


def test_skip_errors_name_the_problem():
    core = models.resnet_generator(ngf=8, n_blocks=1)
    with pytest.raises(ValueError, match="'final' is not a layer"):
        models.with_colour_skip(core, zero_layer="final")
    gray = models.resnet_generator(ngf=8, n_blocks=1, output_channels=1)
    with pytest.raises(ValueError, match="3 channels in and out"):
        models.with_colour_skip(gray)


def _blurred(x, sigma):
    kernel = models.gaussian_kernel(sigma)
    radius = len(kernel) // 2
    padded = np.pad(x, ((0, 0), (radius, radius), (radius, radius), (0, 0)), "reflect")
    rows = sum(w * padded[:, :, i : i + x.shape[2], :] for i, w in enumerate(kernel))
    return sum(w * rows[:, i : i + x.shape[1], :, :] for i, w in enumerate(kernel))


def test_detail_skip_adds_the_inputs_detail_and_no_tone(tmp_path):
    core = models.resnet_generator(ngf=8, n_blocks=1)
    student = models.with_detail_skip(core, sigma=1.5, gain=0.5)
    x = _images(2, seed=2) * 0.4
    expected = np.clip(core.predict(x, verbose=0) + 0.5 * (x - _blurred(x, 1.5)), -1, 1)
    np.testing.assert_allclose(student.predict(x, verbose=0), expected, atol=1e-5)
    flat = np.full((1, 32, 32, 3), [0.3, -0.2, 0.6], np.float32)
    np.testing.assert_allclose(
        student.predict(flat, verbose=0), core.predict(flat, verbose=0), atol=1e-6
    )
    assert [w.name for w in student.trainable_weights if "detail" in w.path] == [
        "kernel"
    ]
    size = len(models.gaussian_kernel(1.5))
    assert size == 11  # radius ceil(3 sigma)
    blur = (32 + size - 1) * 32 * 3 * size + 32 * 32 * 3 * size  # rows, columns
    _check_added_macs_and_litert(student, core, blur + 32 * 32 * 3 * 3, x, tmp_path)


def test_detail_skip_errors_name_the_problem():
    core = models.resnet_generator(ngf=8, n_blocks=1)
    with pytest.raises(ValueError, match="sigma > 0 pixels, got 0"):
        models.with_detail_skip(core, sigma=0)
    gray = models.resnet_generator(ngf=8, n_blocks=1, output_channels=1)
    with pytest.raises(ValueError, match="as many output channels as input"):
        models.with_detail_skip(gray)
