"""`training.train --strategy=multi_worker`: two worker processes on 127.0.0.1.

A tiny task (a one-block ngf-8 teacher, 32-pixel views, 4 steps of global
batch 4, no shipping) is trained by one process, then by two workers
(`TF_CONFIG` on free local ports). One of the two workers is killed
(SIGKILL) once the chief has backed up an epoch; the job is restarted and
resumes from that backup. Its student equals the single-process one
within a stated tolerance on their outputs: the two workers split each
global batch, their summed gradients are the single process's, and the
resumed run sees the batches it would have seen.
Every process is bounded in time and always reaped.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import keras
import numpy as np
import pytest
from tiny_tasks import VIEW_SETTINGS, write_photos, write_pth_teacher

from training import train

ROOT = Path(__file__).resolve().parents[1]
STEPS = 4
TIMEOUT = 180  # seconds a process may take (CI is slow; the test is ~1 min)


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    folder = tmp_path_factory.mktemp("task")
    write_pth_teacher(folder / "G.pth")
    write_photos(folder / "photos", 8)
    write_photos(folder / "held_out", 2, seed=5)
    return folder


def _settings(task: Path, output_dir: Path) -> dict:
    return {
        **VIEW_SETTINGS,
        "teacher": str(task / "G.pth"),
        "photos": str(task / "photos"),
        "held_out": str(task / "held_out"),
        "output_dir": str(output_dir),
        "steps": STEPS,
        "steps_per_epoch": 1,
        "match_steps": 0,
        "batch_size": 4,
        "ndf": 8,
        "reconstruction_views": 4,
        "jit_compile": False,
    }


def _command(task: Path, output_dir: Path) -> list[str]:
    """`training.train` on the task with `_settings`, as a worker."""
    flags = [
        f"--{key}={value}"
        for key, value in _settings(task, output_dir).items()
        if key != "jit_compile"
    ]
    command = [sys.executable, "-m", "training.train", *flags]
    return [*command, "--nojit_compile", "--noship", "--strategy=multi_worker"]


def _environment(task: Path, **extra) -> dict:
    return {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "TFGANCOMPRESS_CACHE": str(task / "cache"),
        "TF_CPP_MIN_LOG_LEVEL": "3",
        **extra,
    }


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for each in sockets:
            each.bind(("127.0.0.1", 0))
        return [each.getsockname()[1] for each in sockets]
    finally:
        for each in sockets:
            each.close()


def _start_workers(task: Path, output_dir: Path, logs: Path) -> list:
    workers = [f"127.0.0.1:{port}" for port in _free_ports(2)]
    processes = []
    for index in range(2):
        config = {
            "cluster": {"worker": workers},
            "task": {"type": "worker", "index": index},
        }
        scratch = logs / f"tmp{index}"  # the worker's scratch copies go here
        scratch.mkdir(parents=True, exist_ok=True)
        environment = _environment(
            task, TF_CONFIG=json.dumps(config), TMPDIR=str(scratch)
        )
        log = open(logs / f"worker{index}.log", "w")  # noqa: SIM115 - closed in _reap
        processes.append(
            subprocess.Popen(
                _command(task, output_dir),
                cwd=ROOT,
                env=environment,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        )
        processes[-1].log = log
    return processes


def _reap(processes) -> None:
    for process in processes:
        if process.poll() is None:
            process.kill()
        process.wait()
        process.log.close()


def _wait(processes, logs: Path) -> None:
    deadline = time.monotonic() + TIMEOUT
    for index, process in enumerate(processes):
        process.wait(timeout=max(1.0, deadline - time.monotonic()))
        text = (logs / f"worker{index}.log").read_text()
        assert process.returncode == 0, text[-3000:]


def _backed_up_epochs(output_dir: Path) -> int:
    for path in output_dir.glob("checkpoints/*/backup_finetune/training_metadata.json"):
        try:
            return json.loads(path.read_text())["epoch"]
        except (OSError, ValueError):  # being replaced
            return 0
    return 0


def _outputs(path: Path, images: np.ndarray) -> np.ndarray:
    return np.asarray(keras.models.load_model(path)(images.astype(np.float32)))


def test_two_workers_equal_one_and_resume_after_a_worker_is_killed(
    task, tmp_path, monkeypatch
):
    single = tmp_path / "single"
    monkeypatch.setenv("TFGANCOMPRESS_CACHE", str(task / "cache"))
    train.run(**_settings(task, single), strategy="default", ship=False)

    shared = tmp_path / "shared"  # the cluster's shared storage
    logs = tmp_path / "killed"
    workers = _start_workers(task, shared, logs)
    try:
        deadline = time.monotonic() + TIMEOUT
        while _backed_up_epochs(shared) < 1:
            assert time.monotonic() < deadline, "no backup was written"
            assert all(w.poll() is None for w in workers), (
                logs / "worker0.log"
            ).read_text()[-3000:]
            time.sleep(0.05)
        workers[1].send_signal(signal.SIGKILL)
        workers[1].wait()
        killed_at = _backed_up_epochs(shared)
    finally:
        _reap(workers)  # the chief cannot go on without its peer
    assert 1 <= killed_at < STEPS
    assert not (shared / "student.keras").exists()

    logs = tmp_path / "resumed"
    workers = _start_workers(task, shared, logs)
    try:
        _wait(workers, logs)
    finally:
        _reap(workers)
    chief = (logs / "worker0.log").read_text()
    assert "2 replicas, batch 4 in all" in chief
    assert "resuming from the refitted student" in chief
    epochs = [
        int(line.split()[1].split("/")[0])
        for line in chief.splitlines()
        if line.startswith("Epoch ")
    ]
    # Resumed after the backed-up epochs, ending at the last step.
    assert epochs[0] > 1 and epochs[-1] == STEPS, epochs
    assert "trained steps: finetune 4" in chief

    # Only the chief wrote files: one student, no half-written file, and
    # the other worker's scratch copies are gone.
    names = sorted(path.name for path in shared.iterdir())
    assert names == ["checkpoints", "run.json", "student.keras"], names
    assert not list(shared.rglob("*partial*"))
    assert not list((logs / "tmp1").iterdir())

    # The students' outputs agree: the two runs differ by summation order
    # only. (Their weights differ more: Adam rescales the near-zero
    # gradients of directions the instance norms ignore, e.g. a kernel's
    # scale, which do not change the outputs.)
    images = np.random.default_rng(0).uniform(-1, 1, (4, 32, 32, 3))
    refitted = next(single.glob("checkpoints/*/refitted/generator.keras"))
    start, expected, distributed = (
        _outputs(path, images)
        for path in (refitted, single / "student.keras", shared / "student.keras")
    )
    change = float(np.mean(np.abs(expected - start)))
    difference = float(np.mean(np.abs(expected - distributed)))
    assert change > 1e-3  # training moved the student
    # Measured: 0.05 of the change (0.03 with a 5x wider student).
    assert difference < 0.15 * change, (difference, change)


def test_strategies_by_name_and_a_clear_tf_config_error(monkeypatch):
    from training import distribute

    assert distribute.strategy("default").num_replicas_in_sync == 1
    assert distribute.is_chief(distribute.strategy("default"))
    with pytest.raises(ValueError, match=r"Unknown strategy 'nccl'.*multi_worker"):
        distribute.strategy("nccl")
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(ValueError, match="TF_CONFIG, which is not set"):
        distribute.strategy("multi_worker")
    monkeypatch.setenv("TF_CONFIG", "{cluster")
    with pytest.raises(ValueError, match="TF_CONFIG is not JSON"):
        distribute.strategy("multi_worker")
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": {"worker": ["a:1"]}}))
    with pytest.raises(ValueError, match="task type and index"):
        distribute.strategy("multi_worker")


def test_a_rerun_with_other_settings_is_refused_unless_overwrite(
    task, tmp_path, monkeypatch
):
    monkeypatch.setenv("TFGANCOMPRESS_CACHE", str(task / "cache"))
    out = tmp_path / "out"
    settings = {**_settings(task, out), "steps": 2, "progress": 0, "ship": False}
    train.run(**settings)
    (out / "report.json").write_text("{}")  # as if the first run had shipped
    before = (out / "student.keras").read_bytes()
    with pytest.raises(FileExistsError, match=r"steps: 2 -> 3.*--overwrite"):
        train.run(**{**settings, "steps": 3})
    assert (out / "student.keras").read_bytes() == before  # untouched
    assert json.loads((out / "run.json").read_text())["steps"] == 2
    train.run(**{**settings, "steps": 3, "overwrite": True})
    assert json.loads((out / "run.json").read_text())["steps"] == 3
    assert not (out / "report.json").exists()  # the other run's report is gone
