"""The student-quality ablation harness (`benchmarks.quality`)."""

import types

import keras
import numpy as np
import pytest

from benchmarks import quality
from tfgancompress import metrics


def test_training_view_psnr_uses_every_view_when_there_are_fewer_than_asked():
    rng = np.random.default_rng(0)
    inputs = rng.uniform(-1, 1, (6, 8, 8, 3)).astype(np.float32)
    targets = np.clip(inputs + rng.normal(0, 0.1, inputs.shape), -1, 1)
    task = types.SimpleNamespace(reference=(inputs, targets.astype(np.float32)))
    image = keras.Input((8, 8, 3))
    identity = keras.Model(image, keras.layers.Identity()(image))
    psnr = quality.Task.train_psnr(task, identity, count=45)
    assert psnr == pytest.approx(np.mean(metrics.psnr(targets, inputs)), abs=1e-4)
    first_two = np.mean(metrics.psnr(targets[::3][:2], inputs[::3][:2]))
    assert quality.Task.train_psnr(task, identity, count=2) == pytest.approx(
        first_two, abs=1e-4
    )
