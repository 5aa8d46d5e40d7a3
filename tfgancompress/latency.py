"""Measured LiteRT latency: whole-model timing and a per-op profile.

    python -m tfgancompress.latency --model=student.tflite
    python -m tfgancompress.latency --model=teacher.keras \\
        --compare=student=student.keras --size=256 --output=outputs/latency

(This is the dedicated entry point issue 3 asks for; `training/bench.py`
belongs to the method benchmark.)

Whole-model timing runs the LiteRT `CompiledModel` on the CPU accelerator
(XNNPACK) with a fixed thread count, warm-up runs, then timed runs: the code
path of LiteRT's own benchmark tool, `litert-benchmark`
(`ai_edge_litert.tools.benchmark_litert_model`), but in process so that each
run is timed (median and p90) and several models are timed interleaved
(A B A B ...) and share the machine's noise. `runner="litert-benchmark"`
runs the console script itself instead and parses its printed results (it
reports p5/p95, not p90, and not per run).

Neither the tool nor the Python interpreter of ai-edge-litert 2.3 has an
op profiler (the tool has no `--enable_op_profiling`, the interpreter no
profiler hook), so the per-op profile is measured op by op: every operator
of the file is cut out into a one-op LiteRT model with its own weights and
timed with the LiteRT interpreter (XNNPACK on, same threads), all ops of a
model interleaved. Whether XNNPACK took the op (a `DELEGATE` node replaced
it) or it ran in the default CPU kernels is read from the same one-op
model. The sum of the op times is reported next to the whole-model median;
it is a little higher (XNNPACK fuses padding into convolutions inside a
partition and skips the hand-offs between ops).

Example:

```python
from tfgancompress import latency

result = latency.measure_latency(student, input_shape=(256, 256, 3))
print(result.median_ms, result.to_markdown())
table = latency.compare_latency({"teacher": teacher, "student": student},
                                input_shape=(256, 256, 3))
table.speedup["student"]  # teacher median / student median
```
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence

import keras
import numpy as np
from absl import app, flags, logging

from tfgancompress import export
from tfgancompress.atomic import atomic_write

RUNNERS = ("compiled_model", "litert-benchmark")

_BENCHMARK_FIELDS = {
    "init_ms": "Model initialization",
    "mean_ms": "Inference (avg)",
    "min_ms": "Inference (min)",
    "max_ms": "Inference (max)",
    "median_ms": "Inference (median)",
    "std_ms": "Inference (std)",
    "p5_ms": "Inference (p5)",
    "p95_ms": "Inference (p95)",
}


@dataclasses.dataclass
class OpStats:
    """Time spent in one op type, summed over its occurrences.

    Attributes:
        op: Builtin op name (`"CONV_2D"`).
        count: How many operators of this type the file has.
        total_ms: Summed median time of those operators.
        percent: Share of the summed time of all operators.
        delegated: How many of them XNNPACK runs (the rest run in the
            default LiteRT CPU kernels).
    """

    op: str
    count: int
    total_ms: float
    percent: float
    delegated: int


@dataclasses.dataclass
class OpTiming:
    """One operator of the file, timed on its own.

    Attributes:
        index: Position in the file's operator list.
        op: Builtin op name.
        output_shape: Shape of its first output.
        dtype: Dtype of its first output.
        ms: Median time of the one-op model.
        delegated: Whether XNNPACK ran it.
    """

    index: int
    op: str
    output_shape: tuple[int, ...]
    dtype: str
    ms: float
    delegated: bool


@dataclasses.dataclass
class LatencyResult:
    """Measured latency of one LiteRT file.

    Attributes:
        name: Label of the model.
        path: The `.tflite` file timed.
        num_threads: CPU threads.
        runner: `"compiled_model"` or `"litert-benchmark"`.
        times_ms: Every timed run (empty for `"litert-benchmark"`).
        median_ms: Median time per run.
        p90_ms: 90th percentile (`None` for `"litert-benchmark"`, which
            reports p95 only).
        p95_ms: 95th percentile.
        mean_ms: Mean time per run.
        fully_accelerated: Whether LiteRT put every op on the accelerator
            (XNNPACK); `None` if not reported.
        delegate_partitions: XNNPACK partitions of the whole graph (every
            op XNNPACK cannot run splits the graph); `None` if not profiled.
        ops: Per-op-type profile, most expensive first (empty if not
            profiled).
        op_timings: Every operator timed on its own, in file order.
    """

    name: str
    path: str
    num_threads: int
    runner: str
    times_ms: list[float]
    median_ms: float
    p90_ms: float | None
    p95_ms: float | None
    mean_ms: float
    fully_accelerated: bool | None = None
    delegate_partitions: int | None = None
    ops: list[OpStats] = dataclasses.field(default_factory=list)
    op_timings: list[OpTiming] = dataclasses.field(default_factory=list)

    @property
    def ops_total_ms(self) -> float:
        """Summed time of all operators timed on their own."""
        return float(sum(op.total_ms for op in self.ops))

    def to_dict(self) -> dict:
        """A JSON-serializable dict of all fields."""
        result = dataclasses.asdict(self)
        result["ops_total_ms"] = self.ops_total_ms
        return result

    def to_markdown(self) -> str:
        """A summary line and the per-op-type table as Markdown."""
        p90 = "n/a" if self.p90_ms is None else f"{self.p90_ms:.1f}"
        lines = [
            f"**{self.name}**: median {self.median_ms:.1f} ms, p90 {p90} ms "
            f"({len(self.times_ms) or 'tool'} runs, {self.num_threads} threads, "
            f"{self.runner})",
        ]
        if self.ops:
            lines[0] += (
                f"; {len(self.op_timings)} ops, "
                f"{self.delegate_partitions} XNNPACK partitions, ops timed "
                f"one by one sum to {self.ops_total_ms:.1f} ms"
            )
            lines += ["", op_table_markdown(self.ops)]
        return "\n".join(lines)


def op_table_markdown(ops: Sequence[OpStats]) -> str:
    """A per-op-type profile as a Markdown table.

    Args:
        ops: `OpStats` rows, e.g. `LatencyResult.ops`.

    Returns:
        The table, one row per op type.
    """
    lines = [
        "| op | count | in XNNPACK | total ms | % |",
        "|---|---:|---:|---:|---:|",
    ]
    for op in ops:
        lines.append(
            f"| {op.op} | {op.count} | {op.delegated}/{op.count} | "
            f"{op.total_ms:.2f} | {op.percent:.1f} |"
        )
    return "\n".join(lines)


def op_comparison_markdown(
    before: Sequence[OpStats],
    after: Sequence[OpStats],
    labels: tuple[str, str] = ("before", "after"),
) -> str:
    """Two per-op profiles of one model side by side, as a Markdown table.

    Args:
        before: `OpStats` rows of the first profile.
        after: `OpStats` rows of the second.
        labels: Column headings of the two.

    Returns:
        One row per op type of either profile (most expensive first, by the
        larger of the two times), with count, milliseconds and share in
        each, and a closing row of totals.
    """
    first = {op.op: op for op in before}
    second = {op.op: op for op in after}
    names = sorted(
        set(first) | set(second),
        key=lambda name: (
            -max(
                first[name].total_ms if name in first else 0.0,
                second[name].total_ms if name in second else 0.0,
            )
        ),
    )
    lines = [
        f"| op | {labels[0]}: count | ms | % | {labels[1]}: count | ms | % |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]

    def cells(stats: OpStats | None) -> str:
        if stats is None:
            return "0 | 0.00 | 0.0"
        return f"{stats.count} | {stats.total_ms:.2f} | {stats.percent:.1f}"

    for name in names:
        lines.append(
            f"| {name} | {cells(first.get(name))} | {cells(second.get(name))} |"
        )
    totals = [sum(op.total_ms for op in ops) for ops in (before, after)]
    counts = [sum(op.count for op in ops) for ops in (before, after)]
    lines.append(
        f"| **total** | {counts[0]} | {totals[0]:.2f} | 100 | {counts[1]} | "
        f"{totals[1]:.2f} | 100 |"
    )
    return "\n".join(lines)


@dataclasses.dataclass
class LatencyPoint:
    """One model on a latency-vs-MACs plot.

    Attributes:
        name: Label.
        macs: Multiply-accumulates per image (`tgc.profile(...).macs`).
        latency_ms: Measured median latency.
        kind: `"fp32"`, `"int8"`, ... (one marker per kind).
    """

    name: str
    macs: float
    latency_ms: float
    kind: str = "fp32"


def speedup_over_macs_ratio(point: LatencyPoint, baseline: LatencyPoint) -> float:
    """How much of its MACs saving a model turns into speed (1 = all of it).

    Args:
        point: The compressed model.
        baseline: The model it is compared with (the teacher).

    Returns:
        `(baseline ms / point ms) / (baseline MACs / point MACs)`.
    """
    speedup = baseline.latency_ms / point.latency_ms
    return speedup / (baseline.macs / point.macs)


def plot_latency_vs_macs(
    points: Sequence[LatencyPoint],
    path: str | os.PathLike,
    baseline: str,
    title: str = "Measured LiteRT latency vs MACs",
) -> str:
    """Draws measured latency against MACs, with the line speed-up = MACs ratio.

    Both axes are logarithmic. The line goes through the baseline (the
    teacher): a model on it turns its whole MACs saving into speed; above
    it, overheads (memory passes, small ops) eat part of the saving. Each
    point is labelled with its speed-up as a fraction of its MACs ratio.

    Args:
        points: The models; one of them is the baseline.
        path: The PNG to write.
        baseline: Name of the baseline point.
        title: Plot title.

    Returns:
        `path` as a string.

    Raises:
        ValueError: If `baseline` is not among the points, or a point has
            non-positive MACs or latency.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_name = {point.name: point for point in points}
    if baseline not in by_name:
        raise ValueError(
            f"baseline {baseline!r} is not one of the points {sorted(by_name)}."
        )
    bad = [p.name for p in points if p.macs <= 0 or p.latency_ms <= 0]
    if bad:
        raise ValueError(f"Points {bad} need positive MACs and latency.")
    base = by_name[baseline]
    macs = np.array([p.macs for p in points], np.float64)
    line = np.geomspace(macs.min() / 1.5, macs.max() * 1.5, 50)
    figure, axis = plt.subplots(figsize=(6.5, 4.5))
    axis.plot(
        line / 1e9,
        base.latency_ms * line / base.macs,
        "k--",
        linewidth=1,
        label="speed-up = MACs ratio",
    )
    styles = {}
    for index, point in enumerate(points):
        # Points of equal MACs (fp32 and int8 of one model) get stacked labels.
        stacked = sum(p.macs == point.macs for p in points[:index])
        marker, color = styles.setdefault(
            point.kind, ("osD^v<>"[len(styles) % 7], f"C{len(styles) % 10}")
        )
        axis.scatter(
            point.macs / 1e9,
            point.latency_ms,
            marker=marker,
            color=color,
            label=point.kind,
        )
        note = point.name
        if point.name != baseline:
            note += f" ({speedup_over_macs_ratio(point, base):.2f})"
        axis.annotate(
            note,
            (point.macs / 1e9, point.latency_ms),
            fontsize=7,
            xytext=(5, 4 - 11 * stacked),
            textcoords="offset points",
        )
    handles, labels = axis.get_legend_handles_labels()
    unique = dict(zip(labels, handles, strict=True))
    axis.legend(unique.values(), unique.keys(), fontsize=8, loc="upper left")
    axis.set_xscale("log")
    axis.set_yscale("log")
    axis.set_xlabel("G MACs per image")
    axis.set_ylabel("median latency (ms)")
    axis.set_title(title + "\n(label: speed-up / MACs ratio)", fontsize=9)
    figure.tight_layout()
    path = os.fspath(path)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


@dataclasses.dataclass
class Comparison:
    """Several models timed interleaved in one run.

    Attributes:
        baseline: Name of the reference model (the first one given).
        results: `LatencyResult` per name, in the order given.
        speedup: Baseline median over each model's median.
        speedup_spread: The (25th, 75th) percentiles of the ratio of runs
            adjacent in time (baseline run i / model run i): how much the
            ratio moves with the machine's load.
    """

    baseline: str
    results: dict[str, LatencyResult]
    speedup: dict[str, float]
    speedup_spread: dict[str, tuple[float, float]]

    def to_dict(self) -> dict:
        """A JSON-serializable dict."""
        return {
            "baseline": self.baseline,
            "speedup": self.speedup,
            "speedup_spread": {k: list(v) for k, v in self.speedup_spread.items()},
            "results": {k: v.to_dict() for k, v in self.results.items()},
        }

    def to_markdown(self) -> str:
        """The side-by-side table, then each model's per-op profile."""
        lines = [
            "| model | median ms | p90 ms | speed-up | (25-75%) |",
            "|---|---:|---:|---:|---|",
        ]
        for name, result in self.results.items():
            low, high = self.speedup_spread[name]
            lines.append(
                f"| {name} | {result.median_ms:.1f} | {result.p90_ms:.1f} | "
                f"{self.speedup[name]:.2f}x | {low:.2f}-{high:.2f} |"
            )
        for result in self.results.values():
            if result.ops:
                lines += ["", result.to_markdown()]
        return "\n".join(lines)


def _percentile(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values, np.float64), q))


def _litert_file(
    model_or_path,
    name: str,
    input_shape: Sequence[int] | None,
    quantization: str | None,
    representative_data,
    directory: str,
) -> str:
    """The `.tflite` file to time: given, or exported from a Keras model."""
    if isinstance(model_or_path, str | os.PathLike):
        path = os.fspath(model_or_path)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"No model file at {path!r}.")
        if path.endswith(".tflite"):
            if quantization is not None:
                raise ValueError(
                    f"{path!r} is already a LiteRT file: quantization="
                    f"{quantization!r} applies to Keras models only."
                )
            return path
        if not path.endswith(".keras"):
            raise ValueError(f"Expected a .tflite or .keras file, got {path!r}.")
        import tfgancompress.models  # noqa: F401  (registers the zoo layers)

        model_or_path = keras.saving.load_model(path, compile=False)
    if not isinstance(model_or_path, keras.Model):
        raise TypeError(
            "Expected a keras.Model or a .tflite/.keras path, got "
            f"{type(model_or_path).__name__}."
        )
    if input_shape is not None and len(input_shape) == 3:
        input_shape = (1, *input_shape)
    safe = re.sub(r"[^\w.-]", "_", name)
    return export.to_litert(
        model_or_path,
        os.path.join(directory, f"{safe}.tflite"),
        quantization=quantization,
        representative_data=representative_data,
        input_shape=input_shape,
    )


class _CompiledRunner:
    """One LiteRT `CompiledModel` on the CPU accelerator, inputs filled once."""

    def __init__(self, path: str, num_threads: int):
        from ai_edge_litert.compiled_model import CompiledModel
        from ai_edge_litert.environment import Environment, EnvironmentOptions
        from ai_edge_litert.hardware_accelerator import HardwareAccelerator
        from ai_edge_litert.options import CpuOptions, Options

        environment = Environment.create(
            options=EnvironmentOptions(
                runtime_path=os.path.dirname(
                    os.path.abspath(sys.modules[CompiledModel.__module__].__file__)
                )
            )
        )
        self.model = CompiledModel.from_file(
            path,
            environment=environment,
            options=Options(
                hardware_accelerators=HardwareAccelerator.CPU,
                cpu_options=CpuOptions(num_threads=num_threads),
            ),
        )
        self.fully_accelerated = bool(self.model.is_fully_accelerated())
        signatures = self.model.get_signature_list()
        self.signature = next(iter(signatures)) if signatures else "serving_default"
        details = self.model.get_input_tensor_details(self.signature)
        rng = np.random.default_rng(0)
        self.inputs = {}
        for name, detail in details.items():
            buffer = self.model.create_input_buffer_by_name(self.signature, name)
            buffer.write(_random_array(detail["shape"], detail["dtype"], rng))
            self.inputs[name] = buffer
        self.outputs = {
            name: self.model.create_output_buffer_by_name(self.signature, name)
            for name in self.model.get_output_tensor_details(self.signature)
        }

    def run(self) -> float:
        """Runs once; returns the wall time in milliseconds."""
        start = time.perf_counter()
        self.model.run_by_name(self.signature, self.inputs, self.outputs)
        return (time.perf_counter() - start) * 1e3


def _random_array(shape, dtype, rng: np.random.Generator) -> np.ndarray:
    dtype = np.dtype(dtype)
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        low, high = max(info.min, -128), min(info.max, 127)
        return rng.integers(low, high + 1, size=tuple(shape)).astype(dtype)
    return rng.uniform(-1.0, 1.0, size=tuple(shape)).astype(dtype)


def _time_interleaved(
    runners: Sequence, runs: int, warmup: int, progress: str | None = None
) -> list[list[float]]:
    """Times `runners` A B A B ...; returns the run times per runner."""
    for _ in range(warmup):
        for runner in runners:
            runner.run()
    times = [[] for _ in runners]
    bar = keras.utils.Progbar(runs, unit_name="round") if progress else None
    if progress:
        print(progress, flush=True)
    for step in range(runs):
        for runner, record in zip(runners, times, strict=True):
            record.append(runner.run())
        if bar is not None:
            bar.update(step + 1)
    return times


def run_litert_benchmark(
    path: str | os.PathLike, num_threads: int = 2, runs: int = 20, warmup: int = 3
) -> dict:
    """Runs LiteRT's `litert-benchmark` console script and parses its results.

    Args:
        path: A `.tflite` file.
        num_threads: CPU threads (`--num_threads`).
        runs: Timed runs (`--num_runs`).
        warmup: Warm-up runs (`--warmup_runs`).

    Returns:
        The tool's numbers: `init_ms`, `mean_ms`, `min_ms`, `max_ms`,
        `median_ms`, `std_ms`, `p5_ms`, `p95_ms` (milliseconds), `runs` and
        `fully_accelerated`.

    Raises:
        FileNotFoundError: If `path` or the `litert-benchmark` script is missing.
        RuntimeError: If the tool fails or prints no results.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No LiteRT file at {path!r}.")
    command = [
        sys.executable,
        "-m",
        "ai_edge_litert.tools.benchmark_litert_model",
        f"--model={path}",
        f"--num_threads={num_threads}",
        f"--num_runs={runs}",
        f"--warmup_runs={warmup}",
    ]
    completed = subprocess.run(command, capture_output=True, text=True, check=False)
    if completed.returncode != 0:
        raise RuntimeError(
            f"litert-benchmark failed on {path!r} (exit {completed.returncode}):\n"
            f"{completed.stderr[-2000:]}"
        )
    return parse_benchmark_output(completed.stdout, source=path)


def parse_benchmark_output(text: str, source: str = "litert-benchmark") -> dict:
    """Parses the `BENCHMARK RESULTS` block `litert-benchmark` prints.

    Args:
        text: The tool's standard output.
        source: What the output belongs to, for error messages.

    Returns:
        See `run_litert_benchmark`.

    Raises:
        RuntimeError: If a field is missing.
    """
    result = {}
    for key, label in _BENCHMARK_FIELDS.items():
        match = re.search(rf"^{re.escape(label)}:\s+([\d.]+) ms", text, re.MULTILINE)
        if match is None:
            raise RuntimeError(
                f"litert-benchmark output for {source!r} has no {label!r} line:\n"
                f"{text[-2000:]}"
            )
        result[key] = float(match.group(1))
    runs = re.search(r"^Inference \(avg\):.*\((\d+) runs\)", text, re.MULTILINE)
    accelerated = re.search(r"^Fully accelerated:\s+(\w+)", text, re.MULTILINE)
    result["runs"] = int(runs.group(1)) if runs else None
    result["fully_accelerated"] = (
        accelerated.group(1) == "True" if accelerated else None
    )
    return result


def _single_op_model(model, index: int) -> bytes:
    """Operator `index` of `model` (a `ModelT`) as a one-op LiteRT file.

    Inputs without constant data become the model's inputs; constant inputs
    (weights) keep their buffers.
    """
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.tools import flatbuffer_utils

    graph = model.subgraphs[0]
    operator = copy.copy(graph.operators[index])
    tensor_map, tensors, buffers, inputs = {}, [], [schema.BufferT()], []

    def remap(tensor_index: int) -> int:
        if tensor_index < 0:
            return tensor_index
        if tensor_index not in tensor_map:
            tensor = copy.copy(graph.tensors[tensor_index])
            data = model.buffers[tensor.buffer].data if tensor.buffer else None
            if data is not None and len(data):
                buffers.append(model.buffers[tensor.buffer])
                tensor.buffer = len(buffers) - 1
            else:
                tensor.buffer = 0
                inputs.append(len(tensors))
            tensor_map[tensor_index] = len(tensors)
            tensors.append(tensor)
        return tensor_map[tensor_index]

    operator.inputs = [remap(i) for i in operator.inputs]
    operator.outputs = outputs = [remap(i) for i in operator.outputs]
    inputs = [i for i in inputs if i not in outputs]
    operator.intermediates = [remap(i) for i in (operator.intermediates or [])]
    operator.opcodeIndex = 0
    subgraph = schema.SubGraphT()
    subgraph.tensors, subgraph.operators = tensors, [operator]
    subgraph.inputs, subgraph.outputs = inputs, outputs
    single = schema.ModelT()
    single.version = model.version
    single.description = b"single op"
    single.operatorCodes = [model.operatorCodes[graph.operators[index].opcodeIndex]]
    single.subgraphs, single.buffers = [subgraph], buffers
    return bytes(flatbuffer_utils.convert_object_to_bytearray(single))


class _OpRunner:
    """One one-op model in the LiteRT interpreter (XNNPACK on)."""

    def __init__(self, content: bytes, num_threads: int):
        from ai_edge_litert.interpreter import Interpreter

        self.interpreter = Interpreter(model_content=content, num_threads=num_threads)
        self.interpreter.allocate_tensors()
        rng = np.random.default_rng(0)
        for detail in self.interpreter.get_input_details():
            self.interpreter.set_tensor(
                detail["index"], _random_array(detail["shape"], detail["dtype"], rng)
            )
        # `_get_ops_details` lists the execution nodes: a delegated op shows
        # up as a `DELEGATE` node next to the op it replaced.
        self.delegated = any(
            node["op_name"] == "DELEGATE"
            for node in self.interpreter._get_ops_details()
        )
        output = self.interpreter.get_output_details()[0]
        self.output_shape = tuple(int(d) for d in output["shape"])
        self.dtype = np.dtype(output["dtype"]).name

    def run(self) -> float:
        start = time.perf_counter()
        self.interpreter.invoke()
        return (time.perf_counter() - start) * 1e3


def delegate_partitions(path: str | os.PathLike, num_threads: int = 2) -> int:
    """How many XNNPACK partitions the LiteRT interpreter cuts a file into.

    Every op XNNPACK cannot run ends a partition: one partition means the
    whole graph runs in XNNPACK.

    Args:
        path: A `.tflite` file.
        num_threads: Interpreter threads.

    Returns:
        The number of `DELEGATE` nodes after delegation.
    """
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=os.fspath(path), num_threads=num_threads)
    interpreter.allocate_tensors()
    return sum(node["op_name"] == "DELEGATE" for node in interpreter._get_ops_details())


def op_profile(
    path: str | os.PathLike, num_threads: int = 2, runs: int = 5, warmup: int = 1
) -> tuple[list[OpStats], list[OpTiming]]:
    """Per-op profile of a LiteRT file, each operator timed on its own.

    Args:
        path: A `.tflite` file.
        num_threads: Interpreter threads.
        runs: Timed runs per operator (all operators interleaved).
        warmup: Untimed runs per operator first.

    Returns:
        `(ops, op_timings)`: per op type, most expensive first, and per
        operator in file order.
    """
    from ai_edge_litert import schema_py_generated as schema

    with open(path, "rb") as file:
        model = schema.ModelT.InitFromPackedBuf(file.read(), 0)
    names = [op.name for op in export.litert_graph(path)]
    runners = [
        _OpRunner(_single_op_model(model, index), num_threads)
        for index in range(len(names))
    ]
    times = _time_interleaved(
        runners, runs, warmup, progress=f"timing {len(names)} ops of {path}"
    )
    timings = [
        OpTiming(
            index,
            name,
            runner.output_shape,
            runner.dtype,
            statistics.median(record),
            runner.delegated,
        )
        for index, (name, runner, record) in enumerate(
            zip(names, runners, times, strict=True)
        )
    ]
    return summarize_ops(timings), timings


def summarize_ops(timings: Sequence[OpTiming]) -> list[OpStats]:
    """Groups operator timings by op type, most expensive first.

    Args:
        timings: `OpTiming` rows.

    Returns:
        One `OpStats` per op type.
    """
    total = sum(t.ms for t in timings) or 1.0
    groups: dict[str, list[OpTiming]] = {}
    for timing in timings:
        groups.setdefault(timing.op, []).append(timing)
    stats = [
        OpStats(
            op,
            len(rows),
            float(sum(t.ms for t in rows)),
            100.0 * sum(t.ms for t in rows) / total,
            sum(t.delegated for t in rows),
        )
        for op, rows in groups.items()
    ]
    return sorted(stats, key=lambda s: -s.total_ms)


def _result_from_times(
    name: str, path: str, num_threads: int, times: list[float], accelerated: bool
) -> LatencyResult:
    return LatencyResult(
        name=name,
        path=path,
        num_threads=num_threads,
        runner="compiled_model",
        times_ms=[float(t) for t in times],
        median_ms=float(statistics.median(times)),
        p90_ms=_percentile(times, 90),
        p95_ms=_percentile(times, 95),
        mean_ms=float(statistics.fmean(times)),
        fully_accelerated=accelerated,
    )


def _check_counts(num_threads: int, runs: int, warmup: int) -> None:
    if num_threads < 1 or runs < 1 or warmup < 0:
        raise ValueError(
            "Need num_threads >= 1, runs >= 1 and warmup >= 0; got "
            f"num_threads={num_threads}, runs={runs}, warmup={warmup}."
        )


def _add_op_profile(result: LatencyResult, num_threads: int, op_runs: int) -> None:
    result.ops, result.op_timings = op_profile(
        result.path, num_threads=num_threads, runs=op_runs
    )
    result.delegate_partitions = delegate_partitions(result.path, num_threads)


def measure_latency(
    model_or_tflite_path,
    input_shape: Sequence[int] | None = None,
    num_threads: int = 2,
    runs: int = 20,
    warmup: int = 3,
    quantization: str | None = None,
    profile_ops: bool = True,
    representative_data=None,
    runner: str = "compiled_model",
    name: str | None = None,
    op_runs: int = 5,
    output_dir: str | None = None,
) -> LatencyResult:
    """Exports (if needed) and times a model in LiteRT on the CPU.

    Args:
        model_or_tflite_path: A `keras.Model`, or a `.tflite`/`.keras` path.
        input_shape: Export shape `(H, W, C)` or `(1, H, W, C)` for Keras
            models whose input shape is not fully known.
        num_threads: CPU threads.
        runs: Timed runs.
        warmup: Untimed runs first.
        quantization: For Keras models, `export.to_litert`'s quantization.
        profile_ops: Whether to add the per-op profile (see module docstring).
        representative_data: Calibration data for `quantization="int8"`.
        runner: `"compiled_model"` (per-run times, in process) or
            `"litert-benchmark"` (the console script; no p90, no per-run
            times).
        name: Label; defaults to the model's name or file name.
        op_runs: Timed runs per operator for the op profile.
        output_dir: Where to write exported files; a new temporary
            directory by default.

    Returns:
        A `LatencyResult`.

    Raises:
        ValueError: On an unknown runner, bad counts or a bad model file.
        FileNotFoundError: If a given path does not exist.

    Example:

    >>> result = measure_latency("student.tflite", runs=10)
    >>> result.median_ms, result.ops[0].op
    (101.2, 'CONV_2D')
    """
    if runner not in RUNNERS:
        raise ValueError(f"runner must be one of {RUNNERS}, got {runner!r}.")
    _check_counts(num_threads, runs, warmup)
    name = name or _default_name(model_or_tflite_path)
    directory = output_dir or tempfile.mkdtemp(prefix="tgc_latency_")
    path = _litert_file(
        model_or_tflite_path,
        name,
        input_shape,
        quantization,
        representative_data,
        directory,
    )
    if runner == "litert-benchmark":
        tool = run_litert_benchmark(path, num_threads, runs, warmup)
        result = LatencyResult(
            name=name,
            path=path,
            num_threads=num_threads,
            runner=runner,
            times_ms=[],
            median_ms=tool["median_ms"],
            p90_ms=None,
            p95_ms=tool["p95_ms"],
            mean_ms=tool["mean_ms"],
            fully_accelerated=tool["fully_accelerated"],
        )
    else:
        model = _CompiledRunner(path, num_threads)
        (times,) = _time_interleaved([model], runs, warmup)
        result = _result_from_times(
            name, path, num_threads, times, model.fully_accelerated
        )
    if profile_ops:
        _add_op_profile(result, num_threads, op_runs)
    return result


def _default_name(model_or_path) -> str:
    if isinstance(model_or_path, keras.Model):
        return model_or_path.name
    return os.path.splitext(os.path.basename(os.fspath(model_or_path)))[0]


def compare_latency(
    models: Mapping[str, object],
    input_shape: Sequence[int] | None = None,
    num_threads: int = 2,
    runs: int = 20,
    warmup: int = 3,
    quantization: str | None | Mapping[str, str | None] = None,
    profile_ops: bool = False,
    representative_data=None,
    op_runs: int = 5,
    output_dir: str | None = None,
) -> Comparison:
    """Times several models interleaved (A B A B ...) in one process.

    Args:
        models: `{name: keras.Model or .tflite/.keras path}`; the first one
            is the baseline of the speed-ups.
        input_shape: Export shape for Keras models, as in `measure_latency`.
        num_threads: CPU threads.
        runs: Timed runs per model.
        warmup: Untimed runs per model first.
        quantization: One quantization for every Keras model, or a mapping
            `{name: quantization}` (missing names: float32).
        profile_ops: Whether to add each model's per-op profile.
        representative_data: Calibration data for `"int8"` exports.
        op_runs: Timed runs per operator for the op profiles.
        output_dir: Where to write exported files (temporary by default).

    Returns:
        A `Comparison` with each model's `LatencyResult` and its speed-up
        over the first model.

    Raises:
        ValueError: If `models` is empty or counts are bad.

    Example:

    >>> table = compare_latency({"teacher": teacher, "student": student},
    ...                         input_shape=(256, 256, 3))
    >>> round(table.speedup["student"], 1)
    9.3
    """
    if not models:
        raise ValueError("compare_latency needs at least one model.")
    _check_counts(num_threads, runs, warmup)
    directory = output_dir or tempfile.mkdtemp(prefix="tgc_latency_")
    paths = {}
    for name, model in models.items():
        mode = (
            quantization.get(name)
            if isinstance(quantization, Mapping)
            else quantization
        )
        if isinstance(model, keras.Model) or not os.fspath(model).endswith(".tflite"):
            print(f"exporting {name} ({mode or 'fp32'})", flush=True)
        paths[name] = _litert_file(
            model, name, input_shape, mode, representative_data, directory
        )
    runners = {name: _CompiledRunner(path, num_threads) for name, path in paths.items()}
    times = _time_interleaved(
        list(runners.values()),
        runs,
        warmup,
        progress=f"timing {', '.join(runners)} interleaved, {runs} rounds",
    )
    results = {
        name: _result_from_times(
            name, paths[name], num_threads, record, runner.fully_accelerated
        )
        for (name, runner), record in zip(runners.items(), times, strict=True)
    }
    baseline = next(iter(results))
    base_times = np.asarray(results[baseline].times_ms)
    speedup, spread = {}, {}
    for name, result in results.items():
        speedup[name] = results[baseline].median_ms / result.median_ms
        paired = base_times / np.asarray(result.times_ms)
        spread[name] = (_percentile(paired, 25), _percentile(paired, 75))
        if profile_ops:
            _add_op_profile(result, num_threads, op_runs)
    return Comparison(baseline, results, speedup, spread)


def write_report(report, path_prefix: str) -> tuple[str, str]:
    """Writes a `LatencyResult` or `Comparison` as `.md` and `.json`, atomically.

    Args:
        report: A `LatencyResult` or `Comparison`.
        path_prefix: Path without extension.

    Returns:
        The Markdown and JSON paths.
    """
    markdown, json_path = f"{path_prefix}.md", f"{path_prefix}.json"
    with atomic_write(markdown) as file:
        file.write(report.to_markdown() + "\n")
    with atomic_write(json_path) as file:
        json.dump(report.to_dict(), file, indent=2)
    return markdown, json_path


def _define_flags() -> None:
    """Defines the command-line flags (only when run as a script)."""
    flags.DEFINE_string("model", None, "A .tflite or .keras model to time.")
    flags.DEFINE_list(
        "compare",
        [],
        "More models to time interleaved with --model, as name=PATH or PATH.",
    )
    flags.DEFINE_integer("size", None, "Square export size for .keras models.")
    flags.DEFINE_integer("threads", 2, "CPU threads.", lower_bound=1)
    flags.DEFINE_integer("runs", 20, "Timed runs per model.", lower_bound=1)
    flags.DEFINE_integer("warmup", 3, "Warm-up runs per model.", lower_bound=0)
    flags.DEFINE_enum(
        "quantization", None, ["fp16", "dynamic"], "Export quantization (.keras)."
    )
    flags.DEFINE_bool("profile_ops", True, "Add the per-op profile.")
    flags.DEFINE_enum("runner", "compiled_model", list(RUNNERS), "Timing runner.")
    flags.DEFINE_string(
        "output", None, "Write the report to OUTPUT.md and OUTPUT.json as well."
    )


def _named(spec: str) -> tuple[str, str]:
    if "=" in spec:
        name, path = spec.split("=", 1)
        return name, path
    return _default_name(spec), spec


FLAGS = flags.FLAGS


def main(argv):
    logging.set_verbosity(logging.WARNING)
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    if not FLAGS.model:
        raise app.UsageError("--model=PATH.tflite|PATH.keras is required.")
    shape = None if FLAGS.size is None else (FLAGS.size, FLAGS.size, 3)
    if FLAGS.compare:
        models = dict([_named(FLAGS.model)] + [_named(s) for s in FLAGS.compare])
        report = compare_latency(
            models,
            input_shape=shape,
            num_threads=FLAGS.threads,
            runs=FLAGS.runs,
            warmup=FLAGS.warmup,
            quantization=FLAGS.quantization,
            profile_ops=FLAGS.profile_ops,
        )
    else:
        report = measure_latency(
            FLAGS.model,
            input_shape=shape,
            num_threads=FLAGS.threads,
            runs=FLAGS.runs,
            warmup=FLAGS.warmup,
            quantization=FLAGS.quantization,
            profile_ops=FLAGS.profile_ops,
            runner=FLAGS.runner,
        )
    print(report.to_markdown())
    if FLAGS.output:
        for path in write_report(report, FLAGS.output):
            print(f"wrote {path}")


if __name__ == "__main__":
    _define_flags()
    app.run(main)
