"""The tone/detail split of a student's error (`benchmarks.tone`)."""

import keras
import numpy as np
import pytest

from benchmarks import tone
from tfgancompress import metrics


def _images(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.uniform(-0.8, 0.8, (3, 16, 16, 3)).astype("float32")


def test_gain_offset_psnr_undoes_a_per_channel_gain_and_offset_exactly():
    targets = _images()
    gains = np.array([0.5, 1.2, 0.9], "float32")
    outputs = (targets - 0.1) / gains
    assert np.all(tone.gain_offset_psnr(targets, outputs) > 80.0)
    assert np.all(np.asarray(metrics.psnr(targets, outputs)) < 25.0)
    # Noise is not a colour transform: the fit can only shrink it a little.
    noisy = targets + np.random.default_rng(1).normal(0, 0.05, targets.shape)
    gained = tone.gain_offset_psnr(targets, noisy.astype("float32"))
    plain = np.asarray(metrics.psnr(targets, noisy))
    assert np.all(plain <= gained) and np.all(gained < plain + 0.3)


def test_score_split_orders_the_three_psnrs_and_reports_the_offset():
    inputs, targets = _images(2), _images(3)
    student = keras.Sequential([keras.Input((None, None, 3)), keras.layers.Dense(3)])
    scores = tone.score_split(student, inputs, targets)
    for index in range(len(inputs)):
        assert (
            scores["psnr"][index]
            <= scores["detail_psnr"][index]
            <= scores["gain_offset_psnr"][index] + 1e-3
        )
    outputs = np.clip(student.predict(inputs, verbose=0), -1, 1)
    offsets = np.abs((targets - outputs).mean(axis=(1, 2))).mean(axis=1)
    np.testing.assert_allclose(scores["colour_offset"], offsets, atol=1e-3)
    assert scores["identity"] == pytest.approx(
        np.asarray(metrics.psnr(targets, inputs)).tolist(), abs=1e-3
    )


def test_a_missing_student_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.keras"):
        tone.run(str(tmp_path / "nothing.keras"), str(tmp_path), "tone")


def test_a_student_of_other_data_is_refused(tmp_path):
    (tmp_path / "student.keras").write_bytes(b"not read")
    (tmp_path / "run.json").write_text('{"data": "other-data"}')
    with pytest.raises(ValueError, match="trained on data other-data.*--photo_set"):
        tone.check_same_data(str(tmp_path / "student.keras"), "this-data")
    (tmp_path / "run.json").write_text('{"data": "this-data"}')
    tone.check_same_data(str(tmp_path / "student.keras"), "this-data")
