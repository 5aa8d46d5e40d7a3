"""A readable console for the command-line tools: native log lines filtered out.

TensorFlow and LiteRT write C++ log lines straight to the process's
standard error (file descriptor 2), below Python: TensorFlow a dozen at
import, each LiteRT conversion another dozen, each LiteRT runtime ~20
(accelerator registry, plugins it fails to load, teardown). None of them
is about the user's job. `TF_CPP_MIN_LOG_LEVEL` silences TensorFlow's
INFO/WARNING lines after import, but only when it is set before TensorFlow
loads; TensorFlow 2.21 prints its import-time lines regardless, and
LiteRT's runtime and the int8 calibrator ignore it.

`quiet_native_logs()` therefore does two things: it sets
`TF_CPP_MIN_LOG_LEVEL=2` (unless the user set it) and it routes file
descriptor 2 through a small filter process that drops the known noise
patterns (`NOISE`) and passes every other line through unchanged: Python
warnings, tracebacks, real errors. The filter is a separate process so
that it also sees what the C++ runtimes print while the process tears
down, and it exits when the process does.

The project's command-line tools (`python -m training.train`,
`python -m tfgancompress.demo`, `python -m benchmarks.speed`, the
`tfgancompress-*` scripts, ...) call it before TensorFlow loads: importing
this module does, when the process runs one of them (`is_entry_point`)
without `--verbose`. `tfgancompress` and `training` import it first for
that reason. Importing the library from your own code changes nothing.

This module imports only the standard library.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

# Lines the filter drops. Each alternative is a line TensorFlow or LiteRT
# prints by itself; none carries information about the job.
NOISE = re.compile(
    r"""^(?:
      WARNING:\ All\ log\ messages\ before\ absl::InitializeLog\(\)
    | [IW]0000\ 00:00:\d+\.\d+\s+\d+\ \S+:\d+\]               # C++ INFO/WARNING
    | E0000\ 00:00:\d+\.\d+\s+\d+\ cuda_\w+\.cc:\d+\]          # no GPU here
    | E0000\ 00:00:\d+\.\d+\s+\d+\ meta_optimizer\.cc:\d+\]\ remapper\ failed
    | To\ enable\ the\ following\ instructions:                # cpu_feature_guard
    | (?:INFO|WARNING|VERBOSE):\ \[[\w.]+:\d+\]                # LiteRT runtime
    | INFO:\ Created\ TensorFlow\ Lite\ XNNPACK\ delegate
    | fully_quantize:\ \d+,\ inference_type                    # int8 calibrator
    )""",
    re.VERBOSE,
)
# A LiteRT line may continue on lines starting with this character.
_CONTINUATION = "\u2514"

ENTRY_PACKAGES = ("benchmarks", "tfgancompress", "training")
SCRIPT_PREFIX = "tfgancompress-"

_filter: subprocess.Popen | None = None


def is_noise(line: str) -> bool:
    """Whether the filter drops `line` (without its continuation rule)."""
    return bool(NOISE.match(line))


def _command_line() -> list[str]:
    return list(getattr(sys, "orig_argv", sys.argv))


def is_entry_point() -> bool:
    """Whether this process runs one of the project's command-line tools.

    True for `python -m <module>` with a module of `ENTRY_PACKAGES` and for
    the `tfgancompress-*` console scripts; False in a notebook, under
    pytest, or for any other program that imports the library.
    """
    command = _command_line()
    for index, argument in enumerate(command[1:], 1):
        if argument == "-m" and index + 1 < len(command):
            module = command[index + 1]
        elif argument.startswith("-m") and len(argument) > 2:
            module = argument[2:]
        else:
            continue
        return module.split(".")[0] in ENTRY_PACKAGES
    script = os.path.basename(sys.argv[0]) if sys.argv else ""
    return script.startswith(SCRIPT_PREFIX)


def verbose_requested() -> bool:
    """Whether the command line asks for `--verbose` (absl's spellings)."""
    for argument in sys.argv[1:]:
        if argument in ("--verbose", "-verbose"):
            return True
        if argument.startswith(("--verbose=", "-verbose=")):
            value = argument.split("=", 1)[1].lower()
            return value in ("1", "true", "t", "yes", "y")
    return False


def quiet_native_logs() -> bool:
    """Filters TensorFlow's and LiteRT's C++ log lines out of standard error.

    Sets `TF_CPP_MIN_LOG_LEVEL=2` unless already set (effective only
    before TensorFlow loads) and starts the filter process (see the module
    docstring). Calling it again does nothing.

    Returns:
        Whether the filter is running (False where standard error cannot be
        redirected, e.g. no file descriptor 2).
    """
    global _filter
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if _filter is not None:
        return True
    try:
        original = os.dup(2)
    except OSError:
        return False
    try:
        sys.stderr.flush()
        _filter = subprocess.Popen(
            [sys.executable, "-I", "-S", os.path.abspath(__file__)],
            stdin=subprocess.PIPE,
            stdout=original,
            stderr=original,
            start_new_session=True,  # Ctrl-C stops the job, not its console
        )
        os.dup2(_filter.stdin.fileno(), 2)
        _filter.stdin.close()  # descriptor 2 is now the only writing end
    except OSError:
        _filter = None
        return False
    finally:
        os.close(original)
    return True


def quiet_if_entry_point() -> None:
    """`quiet_native_logs()` in a project tool run without `--verbose`."""
    if is_entry_point() and not verbose_requested():
        quiet_native_logs()


def _filter_lines(lines, write) -> None:
    """Writes every line of `lines` (bytes) that is not noise."""
    dropping = False
    for raw in lines:
        line = raw.decode("utf-8", "replace")
        if is_noise(line):
            dropping = True
            continue
        if dropping and line.startswith(_CONTINUATION):
            continue
        dropping = False
        write(raw)


def _run_filter() -> None:
    """The filter process: standard input to standard output, noise dropped."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    output = sys.stdout.buffer

    def write(raw: bytes) -> None:
        output.write(raw)
        output.flush()

    _filter_lines(iter(sys.stdin.buffer.readline, b""), write)


if __name__ == "__main__":
    _run_filter()
else:
    quiet_if_entry_point()
