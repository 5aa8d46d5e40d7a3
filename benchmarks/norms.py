"""Cheaper instance norms in a trained student's LiteRT files (issue 17).

    python -m benchmarks.norms --row=outputs/bench/rows/gcc-b57fe96b32e0

Exports the student of a finished `training.bench` row (its
`student.keras`) with each instance-norm lowering, fp32 and int8
(`tgc.export.to_litert`, sub-pixel lowering on, the int8 files keeping the
convolutions the row's own int8 file kept in float32):

- `two_pass`: the lowering before (`one_pass_norms=False`): mean, then the
  mean squared deviation of `x - mean`; six full-size passes per norm;
- `one_pass` (the default now, exact): `E[x]`, `E[x**2]`, then
  `x * scale + shift`; five;
- `stride<k>` (opt-in, approximate, still per image):
  `norm_statistics_stride=k`, the statistics on every k-th pixel of each
  axis.

Scores every file against the teacher on the task's held-out photos (and
against the `two_pass` file), times all of them interleaved with the
teacher's fp32 file (`--repeats` runs of `--runs` rounds; per run the
ratios), profiles op by op the files of `--profiled` lowerings
(`tgc.latency.op_profile`; the ops computed inside the norm layers
summed apart), and writes `<name>.json`, `<name>.md` and `<name>.png` to
`--output_dir`.
"""

from __future__ import annotations

import json
import os
import re
import statistics

import keras
import numpy as np
from absl import app, flags, logging

import tfgancompress as tgc
from keras_layers.norm import InstanceNormalization
from tfgancompress import latency, reports
from training import tasks, train

FLAGS = flags.FLAGS

KINDS = ("fp32", "int8")


def lowerings(strides: list[int]) -> dict[str, dict]:
    """`{name: to_litert options}`: the two exact lowerings, then strides."""
    found = {"two_pass": {"one_pass_norms": False}, "one_pass": {}}
    for stride in strides:
        found[f"stride{stride}"] = {"norm_statistics_stride": stride}
    return found


def _psnr(targets: np.ndarray, outputs: np.ndarray) -> float:
    return float(np.mean(tgc.metrics.psnr(targets, outputs)))


def _run(path: str, inputs: np.ndarray) -> np.ndarray:
    outputs = np.concatenate([tgc.export.run_litert(path, x[None]) for x in inputs])
    return np.clip(outputs, -1.0, 1.0)


def _row_float_layers(row_dir: str) -> list[str] | str:
    """The convolutions the row's int8 file kept float32 ("auto" if unknown)."""
    path = os.path.join(row_dir, "student_int8.json")
    if not os.path.exists(path):
        return "auto"
    with open(path) as file:
        return json.load(file)["float32_convolutions"]


def norm_op_times(path: str, norm_names: list[str], threads: int) -> dict:
    """Per op type, time and count of the ops computed inside the norms.

    The converter names each op's output after the layer scopes it fuses
    (`model/block1_norm1_1/Mean`, `...;block1_relu1_1/Relu`): an op whose
    output names a norm layer belongs to that norm.
    """
    from ai_edge_litert import schema_py_generated as schema

    with open(path, "rb") as file:
        model = schema.ModelT.InitFromPackedBuf(file.read(), 0)
    graph = model.subgraphs[0]
    scope = re.compile(r"(?:^|[/;])(?:" + "|".join(map(re.escape, norm_names)) + ")")
    names = [graph.tensors[op.outputs[0]].name.decode() for op in graph.operators]
    stats, timings = latency.op_profile(path, threads, runs=7)
    inside: dict[str, list] = {}
    for timing, name in zip(timings, names, strict=True):
        if scope.search(name):
            entry = inside.setdefault(timing.op, [0, 0.0, 0])
            entry[0] += 1
            entry[1] += timing.ms
            entry[2] += int(np.prod(timing.output_shape[1:3]) > 1)
    return {
        "ops": [vars(op) for op in stats],
        "total_ms": float(sum(t.ms for t in timings)),
        "norm_ops": {
            op: {"count": c, "ms": ms, "full_size": full}
            for op, (c, ms, full) in inside.items()
        },
    }


def run_ratios(medians: dict, names: list[str], macs_ratio: float) -> dict:
    """One timing run's ratios: speed-ups, int8/fp32, and against two_pass."""
    found = {}
    for name in names:
        fp32, int8 = medians[name], medians[f"{name}_int8"]
        found[f"{name}: fp32 speed-up / MACs ratio"] = (
            medians["teacher"] / fp32 / macs_ratio
        )
        found[f"{name}: int8 / fp32 speed"] = fp32 / int8
        if name != "two_pass":
            found[f"{name} / two_pass speed, fp32"] = medians["two_pass"] / fp32
            found[f"{name} / two_pass speed, int8"] = medians["two_pass_int8"] / int8
    return found


def _plot(report: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    names = [n for n in report["lowerings"] if n != "two_pass"]
    figure, axis = pyplot.subplots(figsize=(6.5, 3.6))
    width = 0.38
    for offset, kind in ((-width / 2, "fp32"), (width / 2, "int8")):
        values = [
            [run[f"{n} / two_pass speed, {kind}"] for run in report["ratios"]]
            for n in names
        ]
        positions = np.arange(len(names)) + offset
        axis.bar(positions, [statistics.median(v) for v in values], width, label=kind)
        for x, runs in zip(positions, values, strict=True):
            axis.plot([x] * len(runs), runs, "k.", markersize=4)
    axis.axhline(1.0, color="grey", linewidth=1)
    base = report["quality"]["two_pass"]["psnr"]
    labels = [f"{n}\n{report['quality'][n]['psnr'] - base:+.2f} dB" for n in names]
    axis.set_xticks(np.arange(len(names)), labels)
    axis.set_ylabel("speed vs two-pass norms (x)")
    axis.set_title(f"{report['row_label']}: instance-norm lowerings (dots: runs)")
    axis.legend()
    reports.save_figure(figure, path)


def to_markdown(report: dict) -> str:
    """The report: quality, the ratio of each run, the norm op tables."""
    lines = [
        f"# Instance-norm lowerings: {report['row_label']}",
        "",
        f"Student `{report['row']}` ({report['macs'] / 1e9:.2f} G MACs, "
        f"{report['macs_ratio']:.1f}x fewer than the teacher), "
        f"{report['size']}x{report['size']}, {report['threads']} threads, "
        f"{report['repeats']} interleaved timing runs of {report['runs']} rounds "
        "(all files and the teacher's fp32 file in each round). PSNR dB against "
        f"the teacher on {report['eval_images']} held-out photos. int8 files keep "
        f"{', '.join(report['float_layers']) or 'no'} convolutions in float32.",
        "",
        "| lowering | fp32 PSNR | int8 PSNR | fp32 vs two_pass file | "
        "int8 vs two_pass file |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, q in report["quality"].items():
        lines.append(
            f"| {name} | {q['psnr']:.3f} | {q['psnr_int8']:.3f} | "
            f"{q['vs_two_pass']:.1f} dB | {q['vs_two_pass_int8']:.1f} dB |"
        )
    keys = list(report["ratios"][0])
    lines += [
        "",
        "| ratio | "
        + " | ".join(f"run {i + 1}" for i in range(report["repeats"]))
        + " | median |",
        "|---|" + "---:|" * (report["repeats"] + 1),
    ]
    for key in keys:
        values = [run[key] for run in report["ratios"]]
        cells = " | ".join(f"{v:.3f}" for v in values)
        lines.append(f"| {key} | {cells} | {statistics.median(values):.3f} |")
    for name, profile in report["profiles"].items():
        norm = profile["norm_ops"]
        norm_ms = sum(entry["ms"] for entry in norm.values())
        lines += [
            "",
            f"## {name}: ops inside the norms, each timed on its own",
            "",
            f"All ops {profile['total_ms']:.2f} ms, inside the norms "
            f"{norm_ms:.2f} ms ({100 * norm_ms / profile['total_ms']:.0f}%).",
            "",
            "| op | count | of which full-size | ms |",
            "|---|---:|---:|---:|",
        ]
        for op, entry in sorted(norm.items(), key=lambda item: -item[1]["ms"]):
            lines.append(
                f"| {op} | {entry['count']} | {entry['full_size']} | "
                f"{entry['ms']:.2f} |"
            )
    return "\n".join(lines) + "\n"


def run(
    row: str,
    output_dir: str,
    name: str,
    strides: list[int],
    profiled: list[str],
    runs: int,
    repeats: int,
    threads: int = 2,
    **settings,
) -> dict:
    """Exports, scores, times and profiles; writes and returns the report."""
    files_dir = os.path.join(output_dir, "files")
    os.makedirs(files_dir, exist_ok=True)
    task = tasks.from_settings(train.settings(settings))
    inputs, targets = task.held_out
    size = inputs.shape[1]
    shape = (1, size, size, 3)
    student = keras.saving.load_model(os.path.join(row, "student.keras"), compile=False)
    float_layers = _row_float_layers(row)
    options = lowerings(strides)
    files = {"teacher": os.path.join(files_dir, f"teacher-{size}.tflite")}
    if not os.path.exists(files["teacher"]):
        tgc.export.to_litert(task.teacher, files["teacher"], input_shape=shape)
    outputs = {}
    for lowering, option in options.items():
        for kind in KINDS:
            label = lowering if kind == "fp32" else f"{lowering}_int8"
            print(f"exporting {label}", flush=True)
            files[label] = tgc.export.to_litert(
                student,
                os.path.join(files_dir, f"{label}.tflite"),
                None if kind == "fp32" else "int8",
                None if kind == "fp32" else task.reference[0],
                shape,
                float_layers=float_layers,
                **option,
            )
            outputs[label] = _run(files[label], inputs)
    quality = {
        lowering: {
            "psnr": _psnr(targets, outputs[lowering]),
            "psnr_int8": _psnr(targets, outputs[f"{lowering}_int8"]),
            "vs_two_pass": _psnr(outputs["two_pass"], outputs[lowering]),
            "vs_two_pass_int8": _psnr(
                outputs["two_pass_int8"], outputs[f"{lowering}_int8"]
            ),
        }
        for lowering in options
    }
    macs = tgc.profile(student, shape[1:]).macs
    macs_ratio = tgc.profile(task.teacher, shape[1:]).macs / macs
    medians, ratios = [], []
    for index in range(repeats):
        print(f"timing run {index + 1} of {repeats}", flush=True)
        timing = tgc.ship.time_files(files, runs=runs, threads=threads)
        median = {n: r.median_ms for n, r in timing.results.items()}
        medians.append(median)
        ratios.append(run_ratios(median, list(options), macs_ratio))
    norms = [
        layer.name
        for layer in student.layers
        if isinstance(layer, InstanceNormalization)
    ]
    profiles = {}
    for lowering in profiled:
        for label in (lowering, f"{lowering}_int8"):
            profiles[label] = norm_op_times(files[label], norms, threads)
    report = {
        "row": os.path.normpath(row),
        "row_label": os.path.basename(os.path.normpath(row)),
        "size": size,
        "threads": threads,
        "runs": runs,
        "repeats": repeats,
        "eval_images": len(inputs),
        "float_layers": list(float_layers),
        "macs": macs,
        "macs_ratio": macs_ratio,
        "lowerings": list(options),
        "quality": quality,
        "median_ms": medians,
        "ratios": ratios,
        "profiles": profiles,
    }
    stem = os.path.join(output_dir, name)
    reports.write_report(output_dir, name, report, to_markdown(report))
    _plot(report, f"{stem}.png")
    return report


def _define_flags() -> None:
    flags.DEFINE_string("row", None, "A finished bench row folder.", required=True)
    flags.DEFINE_string("output_dir", "outputs/norms", "Where to write.")
    flags.DEFINE_string("name", "norms", "Stem of the report files.")
    flags.DEFINE_list("strides", ["3", "5"], "Odd statistics strides to measure.")
    flags.DEFINE_list(
        "profiled", ["two_pass", "one_pass", "stride3"], "Lowerings profiled per op."
    )
    flags.DEFINE_integer("runs", 20, "Interleaved timing rounds.", lower_bound=1)
    flags.DEFINE_integer("repeats", 3, "Interleaved timing runs.", lower_bound=1)
    tasks.define_flags()


def main(argv):
    logging.set_verbosity(logging.WARNING)
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    settings = tasks.flag_settings()
    run(
        FLAGS.row,
        FLAGS.output_dir,
        FLAGS.name,
        [int(s) for s in FLAGS.strides],
        FLAGS.profiled,
        FLAGS.runs,
        FLAGS.repeats,
        **settings,
    )


if __name__ == "__main__":
    _define_flags()
    app.run(main)
