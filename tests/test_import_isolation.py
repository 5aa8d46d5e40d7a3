"""Importing the project never changes what `tf.keras` is for the user.

tfmot sets `TF_USE_LEGACY_KERAS=1` on import, which would turn `tf.keras`
into Keras 2 (`tf_keras`). Each case runs in a fresh interpreter, so the
state of this test process does not matter; the control case proves the
check can fail.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

REPORT = """
import json, os
import tensorflow as tf

def version(module):
    return getattr(module, "__version__", "tf_keras " + module.__name__)

print("REPORT=" + json.dumps({
    "env": os.environ.get("TF_USE_LEGACY_KERAS"),
    "tf.keras": version(tf.keras),
    "tf.compat.v2.keras": version(tf.compat.v2.keras),
    "dense": tf.keras.layers.Dense.__module__,
    "v1_dense": tf.compat.v1.keras.layers.Dense.__module__,
}))
"""

PROJECT = """
import tfgancompress, keras_layers, training
from tfgancompress import schedules
from keras_layers import ChannelGate
gate = ChannelGate(mode="binary")
gate.build((None, 4))
schedules.apply_schedule([gate], schedules.MacsBudget(4.0, 1.0, 0, 10, frequency=5), 10)
assert int(gate.keep_mask().sum()) == 2
"""

DIRECT_TFMOT = "import tensorflow_model_optimization\n"


def _start(code: str, legacy: str | None) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="3")
    env.pop("TF_USE_LEGACY_KERAS", None)
    if legacy is not None:
        env["TF_USE_LEGACY_KERAS"] = legacy
    return subprocess.Popen(
        [sys.executable, "-c", code + REPORT],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _report(process: subprocess.Popen) -> dict:
    stdout, stderr = process.communicate(timeout=300)
    assert process.returncode == 0, stderr[-3000:]
    line = [x for x in stdout.splitlines() if x.startswith("REPORT=")][-1]
    return json.loads(line[len("REPORT=") :])


@pytest.fixture(scope="module")
def reports() -> dict:
    """Every case at once, in parallel subprocesses."""
    cases = {
        "project, unset": (PROJECT, None),
        "project, user 1": (PROJECT, "1"),
        "project, user 0": (PROJECT, "0"),
        "tfmot directly, unset": (DIRECT_TFMOT, None),
    }
    processes = {name: _start(code, env) for name, (code, env) in cases.items()}
    return {name: _report(process) for name, process in processes.items()}


def test_project_import_keeps_keras_3_and_the_unset_variable(reports):
    report = reports["project, unset"]
    assert report["env"] is None
    assert report["tf.keras"].startswith("3")
    assert report["tf.compat.v2.keras"].startswith("3")
    assert report["dense"].startswith("keras.")
    assert report["v1_dense"].startswith("keras.")


def test_a_users_own_setting_is_kept(reports):
    assert reports["project, user 1"]["env"] == "1"
    assert reports["project, user 1"]["dense"].startswith("tf_keras.")
    assert reports["project, user 0"]["env"] == "0"
    assert reports["project, user 0"]["tf.keras"].startswith("3")


def test_importing_tfmot_directly_flips_tf_keras(reports):
    report = reports["tfmot directly, unset"]
    assert report["env"] == "1"
    assert not report["tf.keras"].startswith("3")
    assert report["dense"].startswith("tf_keras.")
