"""Instance norms frozen into the convolutions (`export.fold_instance_norms`).

Exactness where it must hold (a norm's frozen affine equals the live norm on
an image whose statistics are the frozen ones), the graph it leaves (no
norm ops, int8 everywhere), and its cost stated as a number (not zero on
other images).
"""

from __future__ import annotations

import keras
import numpy as np
import pytest

from keras_layers import InstanceNormalization
from tfgancompress import export, quantization
from tfgancompress.models import resnet_generator, with_colour_skip

SIZE = 32


def _generator() -> keras.Model:
    keras.utils.set_random_seed(6)
    model = with_colour_skip(
        resnet_generator(ngf=4, n_blocks=1, affine=True, input_shape=(SIZE, SIZE, 3)),
        zero_layer=None,
    )
    rng = np.random.default_rng(6)
    for layer in model.layers:
        if isinstance(layer, InstanceNormalization):
            layer.gamma.assign(rng.uniform(0.5, 1.5, layer.gamma.shape))
            layer.beta.assign(rng.uniform(-0.3, 0.3, layer.beta.shape))
    return model


def _images(count: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.uniform(-1, 1, (count, SIZE, SIZE, 3)).astype(np.float32)


def test_one_image_statistics_fold_exactly():
    model = _generator()
    image = _images(1, seed=1)
    folded = export.fold_instance_norms(model, image)
    assert not any(isinstance(x, InstanceNormalization) for x in folded.layers)
    assert {x.name for x in folded.layers} == {
        x.name for x in model.layers if not isinstance(x, InstanceNormalization)
    }
    # Statistics taken on the image itself: the first norm is exact, and so
    # is everything after it (each later norm sees the same inputs).
    np.testing.assert_allclose(
        folded.predict(image, verbose=0), model.predict(image, verbose=0), atol=2e-4
    )
    others = _images(4, seed=2)
    gap = np.abs(folded.predict(others, verbose=0) - model.predict(others, verbose=0))
    assert gap.max() > 1e-2  # frozen statistics: a different function


def test_folded_model_exports_without_norm_ops_and_fully_int8(tmp_path):
    model = _generator()
    calibration = _images(16, seed=3)
    folded = export.fold_instance_norms(model, calibration)
    path = export.to_litert(folded, tmp_path / "f.tflite", "int8", calibration)
    graph = export.litert_graph(path)
    names = {op.name for op in graph}
    assert not names & {"MEAN", "RSQRT", "SUB", "MUL"}
    inner = [op for op in graph if op.name not in ("QUANTIZE", "DEQUANTIZE")]
    assert all(op.output_dtypes == ("int8",) for op in inner), inner
    fp32 = export.to_litert(folded, tmp_path / "f32.tflite")
    image = _images(1, seed=4)
    np.testing.assert_allclose(
        export.run_litert(fp32, image), folded.predict(image, verbose=0), atol=1e-4
    )


def test_models_without_conv_norm_pairs_are_returned_as_is():
    inputs = keras.Input((SIZE, SIZE, 3))
    model = keras.Model(inputs, keras.layers.Conv2D(3, 3, padding="same")(inputs))
    assert export.fold_instance_norms(model, _images(2, seed=5)) is model


def _frozen_moments(folded: keras.Model, conv_names: list[str], images) -> list:
    """Per folded convolution: mean over images of its instance means and
    variances (what the norm that followed it would have seen)."""
    probe = keras.Model(
        folded.inputs[0], [folded.get_layer(name).output for name in conv_names]
    )
    outputs = [np.asarray(o, np.float64) for o in probe(images)]
    return [(o.mean(axis=(1, 2)).mean(0), o.var(axis=(1, 2)).mean(0)) for o in outputs]


def test_sequential_statistics_are_those_of_the_folded_model():
    model = _generator()
    pairs = quantization.conv_norm_pairs(model)
    assert len(pairs) >= 4
    calibration = _images(6, seed=7)
    names = [conv.name for conv, _ in pairs]
    gaps = {}
    for statistics in export.STATISTICS:
        folded = export.fold_instance_norms(model, calibration, statistics)
        moments = _frozen_moments(folded, names, calibration)
        gaps[statistics] = max(
            np.abs(mean - np.asarray(norm.beta)).max()
            for (_, norm), (mean, _) in zip(pairs, moments, strict=True)
        )
        if statistics == "sequential":
            # Every norm frozen at what it sees in the folded model: on the
            # calibration images each folded output is centred on beta, with
            # variance gamma^2 * v / (v + epsilon).
            assert gaps[statistics] < 1e-4
            for (_, norm), (_, variance) in zip(pairs, moments, strict=True):
                gamma = np.asarray(norm.gamma, np.float64)
                assert np.all(variance <= gamma**2 * (1 + 1e-4))
                assert np.all(variance >= gamma**2 * 0.9)
    # Frozen on the unfolded model, the later norms see other inputs.
    assert gaps["joint"] > 1e-2
    np.testing.assert_allclose(  # the first norm sees the same either way
        *(
            export.fold_instance_norms(model, calibration, s)
            .get_layer(names[0])
            .get_weights()[0]
            for s in export.STATISTICS
        ),
        rtol=1e-5,
    )
    with pytest.raises(ValueError, match="statistics must be one of"):
        export.fold_instance_norms(model, calibration, "median")
