"""Benchmarks: `python -m benchmarks.<name>` (speed, ops, ...), results in results/."""

# First: the console filter of the command-line tools starts before TensorFlow.
from tfgancompress import console  # noqa: F401
