"""The command-line tools' console: native log lines out, everything else in."""

import subprocess
import sys

import pytest

from tfgancompress import console

NOISE = [
    "WARNING: All log messages before absl::InitializeLog() is called are written "
    "to STDERR",
    "I0000 00:00:1795795034.516114   18116 port.cc:153] oneDNN custom operations",
    "W0000 00:00:1795795123.140910   18116 tf_tfl_flatbuffer_helpers.cc:364] Ignored",
    "E0000 00:00:1795795043.580487   18116 cuda_platform.cc:52] failed call to cuInit",
    "INFO: [environment.cc:36] Creating LiteRT environment with options",
    "WARNING: [npu_registry.cc:34] NPU accelerator could not be loaded",
    "INFO: Created TensorFlow Lite XNNPACK delegate for CPU.",
    "fully_quantize: 0, inference_type: 6, input_inference_type: FLOAT32",
]
KEPT = [
    "[2/3] compressing with distill()",
    "E0000 00:00:1795795043.580487   18116 loader.cc:52] a real error",
    "W1127 15:47:53.847999 139897195285376 builtin.py:200] Photo source x: missing",
    "/site-packages/keras/src/trainers/epoch_iterator.py:74: UserWarning: shuffle",
    "Traceback (most recent call last):",
]


@pytest.mark.parametrize("line", NOISE)
def test_noise_lines_are_dropped(line):
    assert console.is_noise(line)


@pytest.mark.parametrize("line", KEPT)
def test_other_lines_are_kept(line):
    assert not console.is_noise(line)


def test_filter_drops_a_noise_lines_continuation_only():
    lines = [
        b"WARNING: [compiler_plugin.cc:312] Failed to load plugin\n",
        "\u2514 Could not load shared library\n".encode(),
        b"kept 1\n",
        "\u2514 kept 2: after a kept line\n".encode(),
    ]
    written = []
    console._filter_lines(lines, written.append)
    assert written == lines[2:]


def test_the_filter_process_passes_other_lines_through():
    text = "INFO: [environment.cc:36] x\nkept\nfully_quantize: 0, inference_type\n"
    result = subprocess.run(
        [sys.executable, "-I", "-S", console.__file__],
        input=text.encode(),
        capture_output=True,
        check=True,
    )
    assert result.stdout == b"kept\n"


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        (["python", "-m", "training.train", "--steps=2"], True),
        (["python", "-mbenchmarks.speed"], True),
        (["python", "-m", "pytest", "tests"], False),
        (["python", "script.py"], False),
    ],
)
def test_entry_points_are_the_projects_tools(monkeypatch, command, expected):
    monkeypatch.setattr(sys, "orig_argv", command)
    monkeypatch.setattr(sys, "argv", command[1:])
    assert console.is_entry_point() is expected


def test_console_scripts_and_verbose(monkeypatch):
    monkeypatch.setattr(sys, "orig_argv", ["python", "/usr/bin/tfgancompress-train"])
    monkeypatch.setattr(sys, "argv", ["/usr/bin/tfgancompress-train", "--verbose"])
    assert console.is_entry_point() and console.verbose_requested()
    monkeypatch.setattr(sys, "argv", ["x", "--verbose=false", "--noverbose"])
    assert not console.verbose_requested()
