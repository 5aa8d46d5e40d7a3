"""Instance norms in int8 in trained students' int8 files (issue 17).

    python -m benchmarks.int8_norms --rows=ROW1,ROW2,... --profiled=ROW1

For each finished `training.bench` row (its `student.keras`), exports three
LiteRT files at the task's size (sub-pixel lowering and one-pass norms, as
the bench does):

- `fp32`: `to_litert(student)`;
- `int8`: today's recipe, `to_litert(..., "int8")`: int8 convolutions,
  every instance norm in float32 between a DEQUANTIZE and a QUANTIZE;
- `int8_norms`: `to_litert(..., "int8", int8_norms=True)`: the norms'
  full-size passes (`MEAN(x)`, `x * x`, `MEAN`, `x * scale`, `+ shift`)
  in int8, only their per-channel statistics in float32. Norms fed by a
  convolution the int8 plan keeps in float32 stay float32.

Both int8 files keep the convolutions the row's own int8 file kept float32.
Scores every file against the teacher on the task's held-out photos,
counts XNNPACK partitions, times each row's three files interleaved
(`--repeats` runs of `--runs` rounds; per run the int8/fp32 ratios), and
profiles op by op the files of the `--profiled` rows
(`tgc.latency.op_profile`). Writes `<name>.json`, `<name>.md` and
`<name>.png` to `--output_dir`.
"""

from __future__ import annotations

import os
import statistics

import keras
import numpy as np
from absl import app, flags, logging
from keras import ops

import tfgancompress as tgc
from benchmarks import norms
from tfgancompress import latency, reports
from training import tasks, train

FLAGS = flags.FLAGS

FILES = {
    "fp32": {"quantization": None},
    "int8": {"quantization": "int8"},
    "int8_norms": {"quantization": "int8", "int8_norms": True},
}
TARGET_RATIO = 2.5


def export_row(row: str, task, files_dir: str, reuse: bool) -> dict[str, str]:
    """`{file name: path}`: the row's student in the three forms (with
    `reuse`, files already in `files_dir` are kept)."""
    student = keras.saving.load_model(os.path.join(row, "student.keras"), compile=False)
    inputs = task.held_out[0]
    shape = (1,) + inputs.shape[1:]
    float_layers = norms._row_float_layers(row)
    paths = {}
    for name, options in FILES.items():
        paths[name] = os.path.join(files_dir, f"{name}.tflite")
        if reuse and os.path.exists(paths[name]):
            continue
        print(f"exporting {os.path.basename(row)} {name}", flush=True)
        options = dict(options)
        quantization = options.pop("quantization")
        if quantization:
            options["float_layers"] = float_layers
        tgc.export.to_litert(
            student,
            paths[name],
            quantization,
            task.reference[0] if quantization else None,
            shape,
            **options,
        )
    return paths


def op_table(path: str, threads: int) -> dict:
    """Per op type and dtype: count and ms, each op timed on its own."""
    stats, timings = latency.op_profile(path, threads, runs=7)
    table: dict[str, list] = {}
    for timing in timings:
        entry = table.setdefault(f"{timing.op} ({timing.dtype})", [0, 0.0])
        entry[0] += 1
        entry[1] += timing.ms
    return {
        "total_ms": float(sum(t.ms for t in timings)),
        "delegated": int(sum(t.delegated for t in timings)),
        "ops": len(timings),
        "by_op": {op: {"count": c, "ms": ms} for op, (c, ms) in table.items()},
    }


KERNELS = {
    "x * x": lambda x, m: x * x,
    "x * y (two full-size tensors)": lambda x, m: x * ops.relu(x),
    "x * per-channel vector": lambda x, m: x * m,
    "x * per-image scalar": lambda x, m: x * ops.mean(m, axis=3, keepdims=True),
    "x + per-channel vector": lambda x, m: x + m,
    "x + y (two full-size tensors)": lambda x, m: x + ops.relu(x),
    "MEAN over the pixels": lambda x, m: m,
}


class _Kernel(keras.layers.Layer):
    """One of `KERNELS` on its input (`m`: the per-channel mean)."""

    def __init__(self, kind: str, **kwargs):
        super().__init__(**kwargs)
        self.kind = kind

    def call(self, x):
        return KERNELS[self.kind](x, ops.mean(x, axis=(1, 2), keepdims=True))


def kernel_times(files_dir: str, threads: int, shape=(64, 64, 96)) -> dict:
    """`{kernel: {"fp32": us, "int8": us}}`: the norms' elementwise kernels
    alone, float32 against int8, on one `shape` tensor (the last MUL, ADD
    or MEAN of a one-kernel file, timed on its own)."""
    data = np.random.default_rng(0).normal(size=(16,) + shape).astype("float32")
    found = {}
    for index, kind in enumerate(KERNELS):
        inputs = keras.Input(shape)
        model = keras.Model(inputs, _Kernel(kind)(inputs))
        found[kind] = {}
        for label, quantization in (("fp32", None), ("int8", "int8")):
            path = tgc.export.to_litert(
                model,
                os.path.join(files_dir, f"kernel{index}_{label}.tflite"),
                quantization,
                data if quantization else None,
                (1,) + shape,
                float_norms=False,
                lowering=False,
            )
            _, timings = latency.op_profile(path, threads, runs=31)
            timing = [t for t in timings if t.op in ("MUL", "ADD", "MEAN")][-1]
            found[kind][label] = 1000.0 * timing.ms
    return found


def measure_row(
    row: str,
    task,
    files_dir: str,
    runs: int,
    repeats: int,
    threads: int,
    reuse: bool = False,
) -> dict:
    """Quality, partitions and interleaved speed ratios of one row."""
    label = os.path.basename(os.path.normpath(row))
    files_dir = os.path.join(files_dir, label)
    os.makedirs(files_dir, exist_ok=True)
    paths = export_row(row, task, files_dir, reuse)
    inputs, targets = task.held_out
    outputs = {name: norms._run(path, inputs) for name, path in paths.items()}
    quality = {name: norms._psnr(targets, out) for name, out in outputs.items()}
    ratios = []
    for index in range(repeats):
        print(f"{label}: timing run {index + 1} of {repeats}", flush=True)
        timing = tgc.ship.time_files(paths, runs=runs, threads=threads)
        median = {n: r.median_ms for n, r in timing.results.items()}
        ratios.append(
            {
                "median_ms": median,
                "int8 / fp32": median["fp32"] / median["int8"],
                "int8_norms / fp32": median["fp32"] / median["int8_norms"],
                "int8_norms / int8": median["int8"] / median["int8_norms"],
            }
        )
    return {
        "row": os.path.normpath(row),
        "label": label,
        "float_layers": list(norms._row_float_layers(row)),
        "psnr": quality,
        "int8_norms_vs_int8_file_db": norms._psnr(
            outputs["int8"], outputs["int8_norms"]
        ),
        "partitions": {
            name: latency.delegate_partitions(path, threads)
            for name, path in paths.items()
        },
        "ops": {
            name: sorted({op.name for op in tgc.export.litert_graph(path)})
            for name, path in paths.items()
        },
        "runs": ratios,
        "paths": paths,
    }


def _median(row: dict, key: str) -> float:
    return statistics.median(run[key] for run in row["runs"])


def to_markdown(report: dict) -> str:
    """Quality and speed per row, then the per-op tables of profiled rows."""
    lines = [
        "# Instance norms in int8 (issue 17)",
        "",
        f"Trained bench students at {report['size']}x{report['size']}, "
        f"{report['threads']} threads (XNNPACK), each row's three files timed "
        f"interleaved: {report['repeats']} runs of {report['runs']} rounds "
        "(the ratio of medians per run: median [min-max] over runs). PSNR dB "
        f"against the teacher on {report['eval_images']} held-out photos. "
        "*int8*: today's file (norms float32); *int8_norms*: "
        "`to_litert(..., int8_norms=True)` (the norms' full-size passes int8, "
        "their per-channel statistics float32).",
        "",
        "| row | fp32 PSNR | int8 PSNR | int8_norms PSNR | int8 / fp32 speed | "
        "int8_norms / fp32 speed | int8_norms / int8 speed | partitions |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for row in report["rows"]:
        cells = []
        for key in ("int8 / fp32", "int8_norms / fp32", "int8_norms / int8"):
            values = [run[key] for run in row["runs"]]
            cells.append(
                f"{statistics.median(values):.2f} [{min(values):.2f}-{max(values):.2f}]"
            )
        q = row["psnr"]
        parts = row["partitions"]
        lines.append(
            f"| {row['label']} | {q['fp32']:.3f} | {q['int8']:.3f} | "
            f"{q['int8_norms']:.3f} | " + " | ".join(cells) + " | "
            f"{parts['fp32']}/{parts['int8']}/{parts['int8_norms']} |"
        )
    lines += [
        "",
        "## The norms' kernels alone, float32 against int8",
        "",
        "One kernel per file on a 1x64x64x96 tensor, timed on its own "
        "(`tgc.latency.op_profile`, 31 runs):",
        "",
        "| kernel | fp32 us | int8 us | int8 / fp32 time |",
        "|---|---:|---:|---:|",
    ]
    for kind, times in report["kernels"].items():
        lines.append(
            f"| {kind} | {times['fp32']:.1f} | {times['int8']:.1f} | "
            f"{times['int8'] / times['fp32']:.2f} |"
        )
    for label, profile in report["profiles"].items():
        lines += [
            "",
            f"## {label}: each op timed on its own (ms summed per op and dtype)",
            "",
            "| op | " + " | ".join(f"{name}: count | ms" for name in profile) + " |",
            "|---|" + "---:|---:|" * len(profile),
        ]
        keys = sorted(
            {op for table in profile.values() for op in table["by_op"]},
            key=lambda op: (
                -max(
                    table["by_op"].get(op, {"ms": 0.0})["ms"]
                    for table in profile.values()
                )
            ),
        )
        for op in keys:
            cells = []
            for table in profile.values():
                entry = table["by_op"].get(op, {"count": 0, "ms": 0.0})
                cells.append(f"{entry['count']} | {entry['ms']:.2f}")
            lines.append(f"| {op} | " + " | ".join(cells) + " |")
        totals = " | ".join(
            f"{t['ops']} | {t['total_ms']:.2f}" for t in profile.values()
        )
        lines.append(f"| **total** | {totals} |")
    return "\n".join(lines) + "\n"


def _plot(report: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    rows = report["rows"]
    figure, axis = pyplot.subplots(figsize=(8, 3.8))
    width = 0.38
    for offset, key in ((-width / 2, "int8 / fp32"), (width / 2, "int8_norms / fp32")):
        values = [[run[key] for run in row["runs"]] for row in rows]
        positions = np.arange(len(rows)) + offset
        axis.bar(positions, [statistics.median(v) for v in values], width, label=key)
        for x, runs in zip(positions, values, strict=True):
            axis.plot([x] * len(runs), runs, "k.", markersize=4)
    axis.axhline(TARGET_RATIO, color="red", linewidth=1, label="target 2.5x")
    labels = [
        f"{row['label'].split('-')[0]}\n"
        f"{row['psnr']['int8'] - row['psnr']['fp32']:+.2f} / "
        f"{row['psnr']['int8_norms'] - row['psnr']['fp32']:+.2f} dB"
        for row in rows
    ]
    axis.set_xticks(np.arange(len(rows)), labels, fontsize=7)
    axis.set_ylabel("speed vs the fp32 file (x)")
    axis.set_title("int8 files: norms float32 vs norms int8 (dots: runs)")
    axis.legend(fontsize=7)
    reports.save_figure(figure, path)


def run(
    rows: list[str],
    profiled: list[str],
    output_dir: str,
    files_dir: str,
    name: str,
    runs: int,
    repeats: int,
    threads: int = 2,
    reuse: bool = False,
    **settings,
) -> dict:
    """Measures every row; writes and returns the report."""
    task = tasks.from_settings(train.settings(settings))
    print("timing the kernels alone", flush=True)
    os.makedirs(files_dir, exist_ok=True)
    kernels = kernel_times(files_dir, threads)
    measured = [
        measure_row(row, task, files_dir, runs, repeats, threads, reuse) for row in rows
    ]
    profiles = {}
    for row in measured:
        if row["label"] in profiled or row["row"] in profiled:
            print(f"profiling {row['label']}", flush=True)
            profiles[row["label"]] = {
                file: op_table(path, threads) for file, path in row["paths"].items()
            }
    report = {
        "size": int(task.held_out[0].shape[1]),
        "threads": threads,
        "runs": runs,
        "repeats": repeats,
        "eval_images": len(task.held_out[0]),
        "rows": measured,
        "profiles": profiles,
        "kernels": kernels,
    }
    os.makedirs(output_dir, exist_ok=True)
    stem = os.path.join(output_dir, name)
    reports.write_report(output_dir, name, report, to_markdown(report))
    _plot(report, f"{stem}.png")
    return report


def _define_flags() -> None:
    flags.DEFINE_list("rows", None, "Finished bench row folders.", required=True)
    flags.DEFINE_list("profiled", [], "Rows (folder or name) profiled per op.")
    flags.DEFINE_string("output_dir", "outputs/int8_norms", "Where to write.")
    flags.DEFINE_string(
        "files_dir", "outputs/int8_norms_files", "Where the .tflite files go."
    )
    flags.DEFINE_string("name", "int8_norms", "Stem of the report files.")
    flags.DEFINE_integer("runs", 20, "Interleaved timing rounds.", lower_bound=1)
    flags.DEFINE_integer("repeats", 3, "Interleaved timing runs.", lower_bound=1)
    flags.DEFINE_bool("reuse", False, "Keep the .tflite files of an earlier run.")
    tasks.define_flags()


def main(argv):
    logging.set_verbosity(logging.WARNING)
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    settings = tasks.flag_settings()
    run(
        FLAGS.rows,
        FLAGS.profiled,
        FLAGS.output_dir,
        FLAGS.files_dir,
        FLAGS.name,
        FLAGS.runs,
        FLAGS.repeats,
        reuse=FLAGS.reuse,
        **settings,
    )


if __name__ == "__main__":
    _define_flags()
    app.run(main)
