"""Callbacks that drive and watch compression, on a small gated generator."""

import glob
import os

import keras
import numpy as np
import pytest
from PIL import Image

import tfgancompress as tgc
from tfgancompress import schedules
from training import callbacks

RNG = np.random.default_rng(0)


def _data(n=4, size=16):
    x = RNG.uniform(-1, 1, (n, size, size, 3)).astype("float32")
    return x, np.tanh(x * 0.5)


def _gated(mode="binary"):
    model = tgc.models.resnet_generator(ngf=4, n_blocks=1, gated=mode)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mae", jit_compile=False)
    return model


def test_update_compression_step_follows_schedule():
    model = _gated()
    x, y = _data()
    schedule = schedules.ChannelSparsity(
        0.0, 0.5, begin_step=0, end_step=2, frequency=1
    )
    update = callbacks.UpdateCompressionStep(schedule, tgc.pruning.l1_importance)
    model.fit(x, y, batch_size=2, epochs=2, verbose=0, callbacks=[update])
    for gate in callbacks.gates_of(model):
        assert gate.keep_mask().sum() == schedules.keep_count(0.5, gate.channels)


def test_budget_reached_stops_training():
    model = _gated()
    full = callbacks.current_macs(model, (16, 16, 3))
    for gate in callbacks.gates_of(model):
        schedules.apply_sparsity(gate, 0.5)
    budget = callbacks.BudgetReached(full // 2, (16, 16, 3), check_every_n_batches=1)
    x, y = _data(8)
    history = model.fit(x, y, batch_size=2, epochs=3, verbose=0, callbacks=[budget])
    assert budget.reached_at_step == 1
    assert len(history.history["loss"]) == 1


def test_budget_reached_freezes_gates():
    model = _gated()
    for gate in callbacks.gates_of(model):
        schedules.apply_sparsity(gate, 0.75)
    budget = callbacks.BudgetReached(10**12, (16, 16, 3), "freeze", 1)
    x, y = _data()
    model.fit(x, y, batch_size=2, epochs=2, verbose=0, callbacks=[budget])
    assert all(not gate.trainable for gate in callbacks.gates_of(model))
    assert budget.reached_at_step == 1


class _PoisonWeights(keras.callbacks.Callback):
    """Makes the weights NaN at the start of the second epoch."""

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == 1:
            self.model.set_weights([w * np.nan for w in self.model.get_weights()])


def test_stop_on_nan_raises_and_keeps_backup(tmp_path):
    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(1)(inputs))
    model.compile(optimizer="sgd", loss="mse", jit_compile=False)
    x = RNG.normal(size=(8, 4)).astype("float32")
    y = np.ones((8, 1), "float32")
    backup = keras.callbacks.BackupAndRestore(str(tmp_path / "backup"))
    stop = callbacks.StopOnNaN()
    with pytest.raises(callbacks.NonFiniteLossError, match="'loss' is nan at step 3"):
        model.fit(
            x,
            y,
            batch_size=4,
            epochs=5,
            verbose=0,
            callbacks=[_PoisonWeights(), stop, backup],
        )
    assert os.listdir(tmp_path / "backup")


def test_snapshots_summaries_and_evaluate(tmp_path):
    model = _gated()
    for gate in callbacks.gates_of(model):
        schedules.apply_sparsity(gate, 0.5)
    x, y = _data()
    evaluate = callbacks.Evaluate(x, y, best_path=str(tmp_path / "best.keras"))
    cbs = [
        callbacks.ImageSnapshots(x[:2], str(tmp_path / "snaps")),
        callbacks.CompressionSummaries(str(tmp_path / "logs"), (16, 16, 3)),
        evaluate,
    ]
    history = model.fit(x, y, batch_size=2, epochs=2, verbose=0, callbacks=cbs)
    grid = np.asarray(Image.open(tmp_path / "snaps" / "epoch2.png"))
    assert grid.shape == (2 * 16, 2 * 16, 3)
    assert glob.glob(str(tmp_path / "logs" / "events.out.tfevents.*"))
    assert os.path.getsize(tmp_path / "logs" / "channels_epoch2.png") > 0
    expected = np.mean(tgc.metrics.psnr(y, model.predict(x, verbose=0)))
    assert history.history["val_psnr"][-1] == pytest.approx(expected, abs=1e-3)
    best = keras.models.load_model(tmp_path / "best.keras")
    assert best.count_params() == model.count_params()
