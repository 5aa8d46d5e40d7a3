"""Keras callbacks that drive and watch a compression run.

They work with any `keras.Model` that exposes the network being compressed
as `model.generator` (the `AdversarialTrainer` convention), optionally its
`model.discriminator` (whose gates the callbacks see too: methods that
prune the discriminator) and a frozen `model.teacher`; a plain generator
model works too (then it is the network itself).

| callback                | does                                              |
|-------------------------|---------------------------------------------------|
| `UpdateCompressionStep` | sets gate keep-ratios from a tfmot schedule       |
| `CompressionSummaries`  | TensorBoard: losses, live channels, MACs (+ PNG)  |
| `ImageSnapshots`        | PNG grids input / teacher / student               |
| `Evaluate`              | held-out metrics every N epochs, keeps the best   |
| `BudgetReached`         | stops or freezes gates once the MACs budget holds |
| `StopOnNaN`             | stops with a clear error, keeping the checkpoint  |
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence

import keras
import numpy as np
import tensorflow as tf

import keras_layers
import tfgancompress as tgc
from tfgancompress import reports, schedules
from tfgancompress.atomic import atomic_write
from training import distribute

NETWORKS = ("generator", "discriminator")


def compressed_network(model: keras.Model) -> keras.Model:
    """The network being compressed: `model.generator`, else `model` itself."""
    return getattr(model, "generator", None) or model


def compressed_networks(model: keras.Model) -> dict[str, keras.Model]:
    """`{"generator": ..., "discriminator": ...}` of a trainer.

    The discriminator is there when `model` has one; a plain model is its
    own generator.
    """
    networks = {"generator": compressed_network(model)}
    discriminator = getattr(model, "discriminator", None)
    if discriminator is not None:
        networks["discriminator"] = discriminator
    return networks


def _check_networks(networks: Sequence[str]) -> tuple[str, ...]:
    networks = tuple(networks)
    if not networks or set(networks) - set(NETWORKS):
        raise ValueError(
            f"networks must be a non-empty subset of {NETWORKS}, got {networks}."
        )
    return networks


def _networks_of(model: keras.Model, names: Sequence[str], who: str) -> dict:
    found = compressed_networks(model)
    missing = [name for name in names if name not in found]
    if missing:
        raise ValueError(f"{who}: {model.name!r} has no {missing[0]}.")
    return {name: found[name] for name in names}


def gates_of(network: keras.Model) -> list[keras_layers.ChannelGate]:
    """All `ChannelGate`s of a network, including those inside composites."""
    gates = []
    for layer in network._flatten_layers(include_self=False, recursive=True):
        if isinstance(layer, keras_layers.ChannelGate):
            gates.append(layer)
    return gates


def training_step(model: keras.Model) -> tf.Variable:
    """The step counter: the generator optimizer's iterations if there is one."""
    optimizer = getattr(model, "g_optimizer", None) or model.optimizer
    if optimizer is None:
        raise ValueError(f"Model {model.name!r} has no optimizer: compile it first.")
    return optimizer.iterations


def current_macs(network: keras.Model, input_shape: Sequence[int]) -> int:
    """MACs of the network once its switched-off channels are removed.

    `tgc.cost.gate_macs`: exact, without slimming (milliseconds).
    """
    return tgc.cost.gate_macs(network, tuple(input_shape))


class UpdateCompressionStep(keras.callbacks.Callback):
    """Drives the gates' keep-ratio from a pruning schedule, every batch.

    Any `tfmot.sparsity.keras.PruningSchedule` works (`PolynomialDecay`,
    `ConstantSparsity`, or `tgc.schedules.ChannelSparsity`/`MacsBudget`):
    whenever the schedule says "prune" at the current step, every gate keeps
    its top channels by `importance` (default: the gate's own parameter).

    Args:
        schedule: The pruning schedule, called with the training step.
        importance: Optional callable `network -> {gate name: scores}`, e.g.
            `tgc.pruning.l1_importance`, evaluated at each update.
        freeze_gates: Make the gates non-trainable for the run, so that the
            schedule alone decides them (an optimizer step could otherwise
            push a gate parameter across its keep threshold).
        networks: Whose gates the schedule drives: `("generator",)`, or
            with `"discriminator"` (a trainer's discriminator) too.
    """

    def __init__(
        self,
        schedule,
        importance: Callable[[keras.Model], dict] | None = None,
        freeze_gates: bool = True,
        networks: Sequence[str] = ("generator",),
    ):
        super().__init__()
        self.schedule = schedule
        self.importance = importance
        self.freeze_gates = freeze_gates
        self.networks = _check_networks(networks)

    def _gated(self) -> dict[str, keras.Model]:
        networks = _networks_of(self.model, self.networks, "UpdateCompressionStep")
        for name, network in networks.items():
            if not gates_of(network):
                raise ValueError(
                    f"UpdateCompressionStep: the {name} {network.name!r} has no "
                    "ChannelGate layers."
                )
        return networks

    def on_train_begin(self, logs=None):
        networks = self._gated()
        if not self.freeze_gates:
            return
        for network in networks.values():
            for gate in gates_of(network):
                gate.trainable = False
        self.model.make_train_function(force=True)

    def on_train_batch_begin(self, batch, logs=None):
        step = training_step(self.model)
        should_prune, sparsity = self.schedule(step)
        if not bool(should_prune):
            return
        for network in self._gated().values():
            scores = self.importance(network) if self.importance else {}
            for gate in gates_of(network):
                schedules.apply_sparsity(gate, sparsity, scores.get(gate.name))


class CompressionSummaries(keras.callbacks.Callback):
    """Writes losses, live channels per layer and MACs to TensorBoard.

    Every `every_n_epochs` it also draws the per-layer live channel counts
    as a PNG (`channels_epoch{N}.png` in `log_dir`). A trainer's gated
    discriminator is reported too: `compression/d_macs`,
    `d_channels/<layer>` and `d_channels_epoch{N}.png`.

    Args:
        log_dir: TensorBoard log directory.
        input_shape: `(H, W, C)` of the generator's input at which MACs are
            counted (the discriminator's: same size, its own channels).
        every_n_epochs: How often to write.
    """

    def __init__(self, log_dir: str, input_shape: Sequence[int], every_n_epochs=1):
        super().__init__()
        self.log_dir = log_dir
        self.input_shape = tuple(input_shape)
        self.every_n_epochs = int(every_n_epochs)
        self._writer = None

    def on_train_begin(self, logs=None):
        os.makedirs(self.log_dir, exist_ok=True)
        self._writer = tf.summary.create_file_writer(self.log_dir)

    def on_epoch_end(self, epoch, logs=None):
        if (epoch + 1) % self.every_n_epochs:
            return
        reported = {
            name: network
            for name, network in compressed_networks(self.model).items()
            if name == "generator" or gates_of(network)
        }
        with self._writer.as_default(step=epoch + 1):
            for name, value in (logs or {}).items():
                tf.summary.scalar(f"loss/{name}", float(value))
        for name, network in reported.items():
            prefix = "" if name == "generator" else "d_"
            shape = (*self.input_shape[:-1], network.input_shape[-1])
            channels = tgc.live_channels(network)
            macs = current_macs(network, shape)
            with self._writer.as_default(step=epoch + 1):
                tf.summary.scalar(f"compression/{prefix}macs", macs)
                for layer in channels:
                    tf.summary.scalar(f"{prefix}channels/{layer.name}", layer.kept)
            path = os.path.join(self.log_dir, f"{prefix}channels_epoch{epoch + 1}.png")
            title = f"{name}, epoch {epoch + 1}: {macs / 1e9:.2f} G MACs"
            reports.plot_channels(channels, path, title=title)
        self._writer.flush()

    def on_train_end(self, logs=None):
        if self._writer is not None:
            self._writer.close()


class ImageSnapshots(keras.callbacks.Callback):
    """Writes `epoch{N}.png` grids: input | teacher | student (per row).

    Args:
        images: A fixed batch of inputs (N, H, W, 3) in [-1, 1].
        output_dir: Where to write the PNGs.
        every_n_epochs: How often to write.
    """

    def __init__(self, images, output_dir: str, every_n_epochs: int = 1):
        super().__init__()
        self.images = np.asarray(images, np.float32)
        self.output_dir = output_dir
        self.every_n_epochs = int(every_n_epochs)

    def on_epoch_end(self, epoch, logs=None):
        if (epoch + 1) % self.every_n_epochs:
            return
        os.makedirs(self.output_dir, exist_ok=True)
        columns = [self.images]
        teacher = getattr(self.model, "teacher", None)
        if teacher is not None:
            columns.append(np.asarray(teacher(self.images, training=False)))
        student = compressed_network(self.model)
        columns.append(np.asarray(student(self.images, training=False)))
        reports.save_image_grid(
            os.path.join(self.output_dir, f"epoch{epoch + 1}.png"), columns
        )


class Evaluate(keras.callbacks.Callback):
    """Held-out metrics every N epochs, added to the logs as `val_<name>`.

    The target of each input is given, or is the teacher's output when the
    dataset has inputs only. The best generator (by `monitor`) is saved.

    Args:
        inputs: Held-out inputs (N, H, W, 3) in [-1, 1].
        targets: Their targets, or `None` to use `model.teacher`.
        metrics: `{name: fn(target, output) -> float}`; defaults to the
            mean `tgc.metrics.psnr` (dB, on [-1, 1] images) and `l1`.
        every_n_epochs: How often to evaluate.
        best_path: Optional `.keras` path for the best generator.
        monitor: Metric name deciding "best".
        mode: `"max"` or `"min"`.
        batch_size: Evaluation batch size.
    """

    def __init__(
        self,
        inputs,
        targets=None,
        metrics: dict | None = None,
        every_n_epochs: int = 1,
        best_path: str | None = None,
        monitor: str = "psnr",
        mode: str = "max",
        batch_size: int = 4,
    ):
        super().__init__()
        if mode not in ("max", "min"):
            raise ValueError(f"mode must be 'max' or 'min', got {mode!r}.")
        self.inputs = np.asarray(inputs, np.float32)
        self.targets = None if targets is None else np.asarray(targets, np.float32)
        self.metrics = metrics or {"psnr": _mean_psnr, "l1": _mean_l1}
        if monitor not in self.metrics:
            raise ValueError(
                f"monitor {monitor!r} is not one of {sorted(self.metrics)}."
            )
        self.every_n_epochs = int(every_n_epochs)
        self.best_path = best_path
        self.monitor = monitor
        self.mode = mode
        self.batch_size = int(batch_size)
        self.best = -math.inf if mode == "max" else math.inf
        self.history: list[dict] = []

    def _targets(self) -> np.ndarray:
        if self.targets is not None:
            return self.targets
        teacher = getattr(self.model, "teacher", None)
        if teacher is None:
            raise ValueError("Evaluate needs targets, or a model with a teacher.")
        self.targets = np.asarray(teacher.predict(self.inputs, self.batch_size, 0))
        return self.targets

    def evaluate(self) -> dict[str, float]:
        """Metrics of the current generator on the held-out set."""
        network = compressed_network(self.model)
        outputs = np.concatenate(
            [
                np.asarray(
                    network(self.inputs[i : i + self.batch_size], training=False)
                )
                for i in range(0, len(self.inputs), self.batch_size)
            ]
        )
        targets = self._targets()
        return {name: float(fn(targets, outputs)) for name, fn in self.metrics.items()}

    def on_epoch_end(self, epoch, logs=None):
        if (epoch + 1) % self.every_n_epochs:
            return
        results = self.evaluate()
        self.history.append({"epoch": epoch + 1, **results})
        if logs is not None:
            logs.update({f"val_{name}": value for name, value in results.items()})
        value = results[self.monitor]
        better = value > self.best if self.mode == "max" else value < self.best
        if better:
            self.best = value
            if self.best_path:
                compressed_network(self.model).save(self.best_path)


def _mean_psnr(target, output) -> float:
    return float(np.mean(tgc.metrics.psnr(target, output)))


def _mean_l1(target, output) -> float:
    return float(np.mean(tgc.metrics.l1(target, output)))


class BudgetReached(keras.callbacks.Callback):
    """Stops training, or freezes the gates, once the MACs budget holds.

    Args:
        target_macs: The budget: MACs of the slimmed generator at
            `input_shape`.
        input_shape: `(H, W, C)` at which MACs are counted.
        action: `"stop"` ends `fit`; `"freeze"` makes the gates
            non-trainable and keeps training the weights (DMAD).
        check_every_n_batches: How often to count.
        networks: Whose gates `"freeze"` freezes: `("generator",)`, or with
            `"discriminator"` too.
    """

    def __init__(
        self,
        target_macs: int,
        input_shape: Sequence[int],
        action: str = "stop",
        check_every_n_batches: int = 50,
        networks: Sequence[str] = ("generator",),
    ):
        super().__init__()
        if action not in ("stop", "freeze"):
            raise ValueError(f"action must be 'stop' or 'freeze', got {action!r}.")
        if target_macs <= 0:
            raise ValueError(f"target_macs must be > 0, got {target_macs}.")
        self.target_macs = int(target_macs)
        self.input_shape = tuple(input_shape)
        self.action = action
        self.check_every_n_batches = int(check_every_n_batches)
        self.networks = _check_networks(networks)
        self.reached_at_step: int | None = None

    def on_train_batch_end(self, batch, logs=None):
        if self.reached_at_step is not None or batch % self.check_every_n_batches:
            return
        network = compressed_network(self.model)
        if current_macs(network, self.input_shape) > self.target_macs:
            return
        self.reached_at_step = int(training_step(self.model).numpy())
        if self.action == "stop":
            self.model.stop_training = True
            return
        for frozen in _networks_of(self.model, self.networks, "BudgetReached").values():
            for gate in gates_of(frozen):
                gate.trainable = False
        self.model.make_train_function(force=True)


class NonFiniteLossError(FloatingPointError):
    """A training loss became NaN or infinite."""


class StopOnNaN(keras.callbacks.Callback):
    """Raises `NonFiniteLossError` naming the loss and step when one is NaN/inf.

    Raising (rather than setting `stop_training`) keeps
    `keras.callbacks.BackupAndRestore`'s last checkpoint on disk, so a fixed
    run resumes from the last good epoch. Put it before `BackupAndRestore` in
    the callback list so a bad batch is never saved.
    """

    def on_train_batch_end(self, batch, logs=None):
        for name, value in (logs or {}).items():
            value = float(value)
            if not math.isfinite(value):
                step = int(training_step(self.model).numpy())
                raise NonFiniteLossError(
                    f"Loss {name!r} is {value} at step {step} (batch {batch}); "
                    "training stopped. The last checkpoint is kept: lower the "
                    "learning rate or check the data, then run again to resume."
                )


class BackupAndRestore(keras.callbacks.BackupAndRestore):
    """Keras' `BackupAndRestore`, written atomically and by the chief only.

    Every worker of a distributed run restores from `backup_dir` (shared
    storage); only the chief (`training.distribute.is_chief`) writes it and
    deletes it when `fit` ends (the others save to a scratch folder: saving
    reads distributed variables, which all workers must do together). The
    weights go to a temporary file renamed over the previous backup, then
    the epoch record (atomically too): a process killed while saving leaves
    the previous, complete backup. If it dies between the two renames, the
    record is one epoch behind the weights; step-counted training
    (`training.pipeline`) still stops at its step, since the optimizer's
    step counter is part of the weights.

    Args:
        backup_dir: The backup folder.
        **kwargs: As `keras.callbacks.BackupAndRestore`.
    """

    def completed_epochs(self) -> int:
        """Epochs the backup on disk has completed (0 without a backup)."""
        if not os.path.exists(self._training_metadata_path):
            return 0
        with open(self._training_metadata_path) as file:
            return int(json.load(file)["epoch"])

    def _save_model(self):
        # Every worker saves (reading distributed variables is a collective
        # operation); the others' copies go to a scratch folder.
        chief = distribute.is_chief(self.model.distribute_strategy)
        folder = self.backup_dir if chief else tempfile.mkdtemp(prefix="backup-")
        os.makedirs(folder, exist_ok=True)
        temporary = os.path.join(folder, f".partial-{os.getpid()}.weights.h5")
        try:
            self.model.save_weights(temporary, overwrite=True)
            if chief:
                os.replace(temporary, self._weights_path)
        finally:
            if chief and os.path.exists(temporary):
                os.remove(temporary)
            if not chief:
                shutil.rmtree(folder, ignore_errors=True)
        if chief:
            with atomic_write(self._training_metadata_path) as file:
                epoch = {"epoch": self._current_epoch, "batch": self._last_batch_seen}
                json.dump(epoch, file)

    def on_train_end(self, logs=None):
        if distribute.is_chief(self.model.distribute_strategy):
            super().on_train_end(logs)
