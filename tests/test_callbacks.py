"""Callbacks that drive and watch compression, on a small gated generator."""

import glob
import os

import keras
import numpy as np
import pytest
from PIL import Image

import tfgancompress as tgc
from tfgancompress import schedules
from training import AdversarialTrainer, callbacks

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


def test_budget_reached_freezes_gates_only_within_budget():
    x, y = _data()
    for margin, reached in ((0, True), (-1, False)):
        model = _gated()
        for gate in callbacks.gates_of(model):
            schedules.apply_sparsity(gate, 0.75)
        pruned = callbacks.current_macs(model, (16, 16, 3))
        budget = callbacks.BudgetReached(pruned + margin, (16, 16, 3), "freeze", 1)
        model.fit(x, y, batch_size=2, epochs=2, verbose=0, callbacks=[budget])
        frozen = [not gate.trainable for gate in callbacks.gates_of(model)]
        assert frozen == [reached] * len(frozen)
        assert budget.reached_at_step == (1 if reached else None)


def _gated_trainer():
    keras.utils.set_random_seed(0)
    trainer = AdversarialTrainer(
        tgc.models.resnet_generator(ngf=4, n_blocks=1, gated="binary"),
        tgc.models.patchgan_discriminator(
            ndf=4, n_layers=2, conditional=True, gated=True
        ),
        taps=None,
    )
    trainer.compile(
        keras.optimizers.Adam(1e-3), keras.optimizers.Adam(1e-3), jit_compile=False
    )
    return trainer


def test_callbacks_see_the_discriminator_gates(tmp_path):
    trainer = _gated_trainer()
    networks = callbacks.compressed_networks(trainer)
    assert list(networks) == ["generator", "discriminator"]
    d_gates = callbacks.gates_of(trainer.discriminator)
    assert d_gates and not set(d_gates) & set(callbacks.gates_of(trainer.generator))
    schedule = schedules.ChannelSparsity(
        0.0, 0.5, begin_step=0, end_step=1, frequency=1
    )
    update = callbacks.UpdateCompressionStep(
        schedule, networks=("generator", "discriminator")
    )
    d_full = callbacks.current_macs(trainer.discriminator, (16, 16, 6))
    budget = callbacks.BudgetReached(
        10**9, (16, 16, 3), "freeze", 1, networks=("discriminator",)
    )
    summaries = callbacks.CompressionSummaries(str(tmp_path), (16, 16, 3))
    x, y = _data()
    trainer.fit(
        x, y, batch_size=2, epochs=1, verbose=0, callbacks=[update, budget, summaries]
    )
    for network in networks.values():
        for gate in callbacks.gates_of(network):
            assert gate.keep_mask().sum() == schedules.keep_count(0.5, gate.channels)
    assert callbacks.current_macs(trainer.discriminator, (16, 16, 6)) < d_full / 2
    assert all(not gate.trainable for gate in d_gates)
    assert os.path.getsize(tmp_path / "d_channels_epoch1.png") > 0
    assert os.path.getsize(tmp_path / "channels_epoch1.png") > 0

    plain_d = AdversarialTrainer(
        tgc.models.resnet_generator(ngf=4, n_blocks=1, gated="binary"),
        tgc.models.patchgan_discriminator(ndf=4, n_layers=2, conditional=True),
        taps=None,
    )
    with pytest.raises(ValueError, match="the discriminator .* has no ChannelGate"):
        update.set_model(plain_d)
        update.on_train_begin()
    with pytest.raises(ValueError, match="networks must be a non-empty subset"):
        callbacks.UpdateCompressionStep(schedule, networks=("teacher",))


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
