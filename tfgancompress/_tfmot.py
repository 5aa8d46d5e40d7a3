"""The one place that imports `tensorflow_model_optimization` (tfmot).

Importing tfmot 0.8 has two process-wide side effects (measured with
TF 2.21, Keras 3.15, tfmot 0.8.1):

1. `tensorflow_model_optimization/python/core/keras/compat.py` sets
   `os.environ["TF_USE_LEGACY_KERAS"] = "1"` and never restores it.
2. While that variable is `"1"`, tfmot touches `tf.keras`,
   `tf.compat.v1.keras` and `tf.compat.v2.keras` (its clustering registry
   lists `tf.compat.v*.keras.layers.GRUCell`), and `tf_keras` imports
   `tensorflow.compat.v1`/`v2`, which rebinds `tf.compat` to fresh modules.
   TensorFlow resolves each of these lazy `keras` attributes once, on first
   access, from the variable's value at that moment: they all become
   `tf_keras` (Keras 2) for the rest of the process.

`import_tfmot()` therefore imports the `tensorflow.compat` modules and
resolves the three lazy `keras` attributes *before* tfmot runs, under the
caller's own environment, and restores `TF_USE_LEGACY_KERAS` afterwards.
`tf.keras` stays whatever the user's environment selects (Keras 3 unless
they set the variable themselves). tfmot still imports `tf_keras` for its
own use; that does not change `tf.keras`.
"""

from __future__ import annotations

import importlib
import os
import sys
from types import ModuleType

import tensorflow as tf

_LEGACY_KERAS = "TF_USE_LEGACY_KERAS"
_TFMOT = "tensorflow_model_optimization"


def _resolve_tf_keras() -> None:
    """Binds TF's lazy `keras` attributes now, under the current environment."""
    importlib.import_module("tensorflow.compat.v1")
    importlib.import_module("tensorflow.compat.v2")
    for lazy_keras in (tf.keras, tf.compat.v1.keras, tf.compat.v2.keras):
        dir(lazy_keras)


def _restore_env(saved: str | None) -> None:
    if saved is None:
        os.environ.pop(_LEGACY_KERAS, None)
    else:
        os.environ[_LEGACY_KERAS] = saved


def import_tfmot() -> ModuleType:
    """Imports tfmot without changing what `tf.keras` is for the process.

    If tfmot is already imported (by the user), it is returned as is.

    Returns:
        The `tensorflow_model_optimization` module.

    Example:

    >>> tfmot = import_tfmot()
    >>> tf.keras.__version__.startswith("3")
    True
    """
    if _TFMOT in sys.modules:
        return sys.modules[_TFMOT]
    saved = os.environ.get(_LEGACY_KERAS)
    _resolve_tf_keras()
    try:
        return importlib.import_module(_TFMOT)
    finally:
        _restore_env(saved)


tfmot = import_tfmot()
