"""`tf.distribute` strategies by name, and who writes files in a distributed run.

    strategy = distribute.strategy("multi_worker")  # reads TF_CONFIG
    with strategy.scope():
        result = pipeline.compress(..., data=distribute.shard(data))

Names (`STRATEGIES`): `"default"` (one device), `"mirrored"` (every GPU or
CPU of this machine, `tf.distribute.MirroredStrategy`), `"multi_worker"`
(`tf.distribute.MultiWorkerMirroredStrategy`; the cluster comes from the
`TF_CONFIG` environment variable, one process per worker) and `"tpu"`
(`tf.distribute.TPUStrategy` where TensorFlow finds a TPU).

Every worker runs the same program on its shard of each global batch
(`shard`): the dataset yields global batches, each worker keeps its part,
and gradients are summed across workers (the trainers divide every loss by
`num_replicas_in_sync`). Only the chief (`is_chief`) writes checkpoints,
reports and exported files; the other workers must see the chief's
checkpoint folder (shared storage) to resume with it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator

import tensorflow as tf

from tfgancompress.atomic import atomic_path

STRATEGIES = ("default", "mirrored", "multi_worker", "tpu")


def strategy(name: str) -> tf.distribute.Strategy:
    """The `tf.distribute` strategy called `name` (one of `STRATEGIES`).

    Raises:
        ValueError: On an unknown name, `"multi_worker"` with a missing or
            malformed `TF_CONFIG`, or `"tpu"` without a TPU.
    """
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multi_worker":
        cluster_config()  # a clear error before TensorFlow's
        return tf.distribute.MultiWorkerMirroredStrategy()
    if name == "tpu":
        try:
            resolver = tf.distribute.cluster_resolver.TPUClusterResolver()
            tf.config.experimental_connect_to_cluster(resolver)
            tf.tpu.experimental.initialize_tpu_system(resolver)
        except (ValueError, tf.errors.OpError) as error:
            raise ValueError(f"--strategy=tpu: no TPU found ({error}).") from error
        return tf.distribute.TPUStrategy(resolver)
    raise ValueError(f"Unknown strategy {name!r}; known: {', '.join(STRATEGIES)}.")


def cluster_config() -> dict:
    """`TF_CONFIG` of a multi-worker run, checked.

    Returns:
        The parsed `{"cluster": {"worker": [...], ...}, "task": {...}}`.

    Raises:
        ValueError: If `TF_CONFIG` is unset, not JSON, or lacks the
            worker list or this process's task.
    """
    text = os.environ.get("TF_CONFIG")
    example = (
        'TF_CONFIG=\'{"cluster": {"worker": ["host1:12345", "host2:12345"]}, '
        '"task": {"type": "worker", "index": 0}}\''
    )
    if not text:
        raise ValueError(
            f"--strategy=multi_worker reads the cluster from TF_CONFIG, which is "
            f"not set; set it in every worker, e.g. {example}."
        )
    try:
        config = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"TF_CONFIG is not JSON ({error}): {text!r}.") from error
    workers = (
        config.get("cluster", {}).get("worker") if isinstance(config, dict) else None
    )
    task = config.get("task", {}) if isinstance(config, dict) else {}
    if not workers or "type" not in task or "index" not in task:
        raise ValueError(
            f"TF_CONFIG must list cluster.worker and give this process's task "
            f"type and index, e.g. {example}; got {text!r}."
        )
    return config


def is_chief(distribution: tf.distribute.Strategy | None = None) -> bool:
    """Whether this process writes files: always, except a non-chief worker.

    In a multi-worker run the chief is the task of type `"chief"`, or worker
    0 when the cluster has no chief.
    """
    distribution = distribution or tf.distribute.get_strategy()
    resolver = getattr(distribution, "cluster_resolver", None)
    if resolver is None or not in_multi_worker_mode(distribution):
        return True
    task_type, task_id = resolver.task_type, resolver.task_id
    if task_type == "chief":
        return True
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return task_type in (None, "worker") and task_id == 0 and not has_chief


@contextlib.contextmanager
def chief_path(path: str, directory: bool = False) -> Iterator[str]:
    """Where this process saves `path`: only the chief's copy is kept.

    Every worker must save a model whose variables are distributed (reading
    them is a collective operation): on the chief, this is
    `tfgancompress.atomic.atomic_path(path)` (complete or absent); on the
    other workers, a path in a scratch folder deleted afterwards.

    Args:
        path: The destination file (or folder, with `directory=True`).
        directory: Whether the writer makes a folder.

    Yields:
        The path to write to.
    """
    if is_chief():
        with atomic_path(path, directory=directory) as temporary:
            yield temporary
        return
    scratch = tempfile.mkdtemp(prefix="tfgancompress-worker-")
    try:
        target = os.path.join(scratch, os.path.basename(path))
        if directory:
            os.mkdir(target)
        yield target
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def shard(data: tf.data.Dataset) -> tf.data.Dataset:
    """`data` sharded by element across workers (each keeps its part of a batch).

    `tf.data`'s default policy first tries to shard by file, which a dataset
    of in-memory views does not have; this says "by data" up front.
    """
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = (
        tf.data.experimental.AutoShardPolicy.DATA
    )
    return data.with_options(options)


def in_multi_worker_mode(distribution: tf.distribute.Strategy) -> bool:
    """Whether `distribution` spans several worker processes."""
    extended = distribution.extended
    return bool(getattr(extended, "_in_multi_worker_mode", lambda: False)())


class MultiWorkerFit:
    """Mixin for a `keras.Model` that lets `fit` run under multi-worker strategies.

    Keras 3.15's `fit` fails under `MultiWorkerMirroredStrategy` twice
    (keras-team/keras#20585): it builds the model from its first batch by
    reducing that batch across replicas with `strategy.reduce`, which the
    strategy refuses for a structure of per-replica values; and it averages
    each step's logs across workers along an axis 0 that scalar logs do not
    have. The batch only serves to give shapes: this mixin passes this
    worker's own part of it instead. A `train_step`/`test_step` returns its
    logs through `reducible_logs`.
    """

    def reducible_logs(self, logs: dict) -> dict:
        """`logs` as `fit` averages them across workers: scalars get an axis."""
        if not in_multi_worker_mode(self.distribute_strategy):
            return logs
        return {name: tf.reshape(value, [-1]) for name, value in logs.items()}

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        strategy = self.distribute_strategy
        if iterator is not None and in_multi_worker_mode(strategy):
            for _, _, batches in iterator:
                data_batch = tf.nest.map_structure(
                    lambda value: (
                        strategy.experimental_local_results(value)[0]
                        if isinstance(value, tf.distribute.DistributedValues)
                        else value
                    ),
                    next(batches),
                )
                break
            iterator = None
        return super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)
