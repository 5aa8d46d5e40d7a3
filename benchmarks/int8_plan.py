"""The int8 plan's greedy on trained bench rows (issue 17).

    python -m benchmarks.int8_plan --rows=ROW1,ROW2,... --targets=35,37

For each finished `training.bench` row (its `student.keras`), makes the
int8 plan (`tgc.quantization.plan_int8`, calibrated on the task's
reference views as the bench does) at each `--targets` dB, each of
`--plans` (default: all four):

- `single_8`: single layers only, the whole output simulated on 8 views
  (the plan before the residual stream was a candidate);
- `stream_8`: the residual stream's adds as one more candidate, 8 views;
- `single_32`: single layers only, 32 views;
- `stream_32`: both (today's `to_litert` default).

Exports one int8 file per distinct plan (`to_litert(..., "int8",
float_layers=plan.float_layers)`) and the fp32 file, scores each against
the teacher and against the fp32 file on the task's held-out photos, and
times the fp32 file and every int8 file interleaved (`--repeats` runs of
`--runs` rounds; per run the fp32 / int8 time ratios). Records each
plan's time. Writes `<name>.json`, `<name>.md` and `<name>.png` to
`--output_dir`.
"""

from __future__ import annotations

import os
import statistics
import time

import keras
from absl import app, flags, logging

import tfgancompress as tgc
from benchmarks import norms
from tfgancompress import reports
from training import tasks, train

FLAGS = flags.FLAGS

PLANS = {
    "single_8": {"residual_stream": False, "target_samples": 8},
    "stream_8": {"residual_stream": True, "target_samples": 8},
    "single_32": {"residual_stream": False, "target_samples": 32},
    "stream_32": {"residual_stream": True, "target_samples": 32},
}


def make_plans(
    student, calibration, targets: list[float], kinds: list[str]
) -> dict[str, dict]:
    """`{"<plan>@<target>": plan facts}`: each of `kinds` at each target."""
    model = tgc.export.equalize_for_int8(student, calibration)
    made = {}
    for target in targets:
        for name in kinds:
            options = PLANS[name]
            label = f"{name}@{target:g}"
            print(f"planning {label}", flush=True)
            start = time.perf_counter()
            plan = tgc.quantization.plan_int8(
                model, calibration, equalize=False, target_psnr=target, **options
            )
            seconds = time.perf_counter() - start
            made[label] = {
                **options,
                "target_psnr": target,
                "float_layers": plan.float_layers,
                "planned_psnr": plan.planned_psnr,
                "all_int8_psnr": plan.all_int8_psnr,
                "steps": plan.steps,
                "seconds": seconds,
            }
    return made


def measure_row(
    row: str,
    task,
    files_dir: str,
    targets: list[float],
    kinds: list[str],
    runs: int,
    repeats: int,
) -> dict:
    """Plans, files, quality and interleaved speed ratios of one row."""
    label = os.path.basename(os.path.normpath(row))
    files_dir = os.path.join(files_dir, label)
    os.makedirs(files_dir, exist_ok=True)
    student = keras.saving.load_model(os.path.join(row, "student.keras"), compile=False)
    inputs, targets_out = task.held_out
    calibration = task.reference[0]
    shape = (1,) + inputs.shape[1:]
    plans = make_plans(student, calibration, targets, kinds)
    paths = {"fp32": os.path.join(files_dir, "fp32.tflite")}
    tgc.export.to_litert(student, paths["fp32"], None, None, shape)
    files: dict[tuple, str] = {}
    for plan in plans.values():
        key = tuple(plan["float_layers"])
        if key not in files:
            files[key] = f"int8_{len(files)}"
            paths[files[key]] = tgc.export.to_litert(
                student,
                os.path.join(files_dir, f"{files[key]}.tflite"),
                "int8",
                calibration,
                shape,
                float_layers=list(key),
            )
        plan["file"] = files[key]
    outputs = {name: norms._run(path, inputs) for name, path in paths.items()}
    quality = {
        name: {
            "psnr": norms._psnr(targets_out, out),
            "vs_fp32": norms._psnr(outputs["fp32"], out),
        }
        for name, out in outputs.items()
    }
    ratios = []
    for index in range(repeats):
        print(f"{label}: timing run {index + 1} of {repeats}", flush=True)
        timing = tgc.ship.time_files(paths, runs=runs)
        median = {n: r.median_ms for n, r in timing.results.items()}
        ratios.append(
            {
                "median_ms": median,
                "int8 / fp32": {
                    n: median["fp32"] / ms for n, ms in median.items() if n != "fp32"
                },
            }
        )
    return {
        "row": os.path.normpath(row),
        "label": label,
        "plans": plans,
        "quality": quality,
        "runs": ratios,
        "paths": paths,
    }


def _layers(plan: dict) -> str:
    layers = plan["float_layers"]
    adds = [n for n in layers if n.endswith("_add")]
    others = [n for n in layers if not n.endswith("_add")]
    text = ", ".join(f"`{n}`" for n in others) or "none"
    return f"{text} + {len(adds)} adds" if adds else text


def to_markdown(report: dict) -> str:
    """One table per row: each plan's layers, quality, time and speed."""
    lines = [
        "# The int8 plan's greedy on trained rows (issue 17)",
        "",
        f"Trained bench students at {report['size']}x{report['size']}, "
        f"calibrated on the {report['calibration']} reference views, PSNR dB on "
        f"the {report['eval_images']} held-out photos (against the teacher; "
        "*vs fp32*: against the fp32 file). *sim*: the plan's simulated PSNR "
        "against the float model, on the plan's views. *single*: single layers "
        "only; *stream*: the residual adds as one more candidate; *_8* / *_32*: "
        "the whole output simulated on 8 / 32 views. Speed: the fp32 file and "
        f"every int8 file timed interleaved, {report['repeats']} runs of "
        f"{report['runs']} rounds, {report['threads']} threads; fp32 time / "
        "int8 time per run.",
    ]
    for row in report["rows"]:
        fp32 = row["quality"]["fp32"]["psnr"]
        lines += [
            "",
            f"## {row['label']}: fp32 {fp32:.2f} dB",
            "",
            "| plan @ target | float32 besides the norms | sim dB | plan s | file "
            "| int8 PSNR | loss | vs fp32 | int8 / fp32 speed per run |",
            "|---|---|---:|---:|---|---:|---:|---:|---|",
        ]
        for name, plan in row["plans"].items():
            q = row["quality"][plan["file"]]
            speeds = ", ".join(
                f"{run['int8 / fp32'][plan['file']]:.2f}" for run in row["runs"]
            )
            lines.append(
                f"| {name} | {_layers(plan)} | {plan['planned_psnr']:.1f} | "
                f"{plan['seconds']:.0f} | {plan['file']} | {q['psnr']:.2f} | "
                f"{fp32 - q['psnr']:.2f} | {q['vs_fp32']:.1f} | {speeds} |"
            )
    return "\n".join(lines) + "\n"


def _plot(report: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    figure, axis = pyplot.subplots(figsize=(7, 4))
    for row in report["rows"]:
        fp32 = row["quality"]["fp32"]["psnr"]
        for name, plan in row["plans"].items():
            speeds = [run["int8 / fp32"][plan["file"]] for run in row["runs"]]
            loss = fp32 - row["quality"][plan["file"]]["psnr"]
            axis.plot([loss] * len(speeds), speeds, ".", alpha=0.4, color="grey")
            axis.annotate(
                f"{row['label'].split('-')[0]} {name}",
                (loss, statistics.median(speeds)),
                fontsize=6,
            )
            axis.plot(loss, statistics.median(speeds), "o")
    axis.axvline(0.5, color="red", linewidth=1, label="0.5 dB (issue 17)")
    axis.set_xlabel("int8 PSNR loss vs the fp32 file, dB (held-out photos)")
    axis.set_ylabel("int8 speed vs fp32 (x)")
    axis.set_title("int8 plans: quality lost vs speed (dots: timing runs)")
    axis.legend(fontsize=7)
    reports.save_figure(figure, path)


def run(
    rows: list[str],
    output_dir: str,
    files_dir: str,
    name: str,
    targets: list[float],
    kinds: list[str],
    runs: int,
    repeats: int,
    **settings,
) -> dict:
    """Measures every row; writes and returns the report."""
    task = tasks.from_settings(train.settings(settings))
    measured = [
        measure_row(row, task, files_dir, targets, kinds, runs, repeats) for row in rows
    ]
    report = {
        "size": int(task.held_out[0].shape[1]),
        "calibration": len(task.reference[0]),
        "threads": 2,
        "runs": runs,
        "repeats": repeats,
        "eval_images": len(task.held_out[0]),
        "rows": measured,
    }
    os.makedirs(output_dir, exist_ok=True)
    reports.write_report(output_dir, name, report, to_markdown(report))
    _plot(report, os.path.join(output_dir, f"{name}.png"))
    return report


def _define_flags() -> None:
    flags.DEFINE_list("rows", None, "Finished bench row folders.", required=True)
    flags.DEFINE_list("targets", ["35"], "Whole-output targets, dB.")
    flags.DEFINE_list("plans", list(PLANS), f"Plans to make, of {list(PLANS)}.")
    flags.DEFINE_string("output_dir", "outputs/int8_plan", "Where to write.")
    flags.DEFINE_string(
        "files_dir", "outputs/int8_plan_files", "Where the .tflite files go."
    )
    flags.DEFINE_string("name", "int8_plan", "Stem of the report files.")
    flags.DEFINE_integer("runs", 20, "Interleaved timing rounds.", lower_bound=1)
    flags.DEFINE_integer("repeats", 3, "Interleaved timing runs.", lower_bound=1)
    tasks.define_flags()


def main(argv):
    logging.set_verbosity(logging.WARNING)
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    run(
        FLAGS.rows,
        FLAGS.output_dir,
        FLAGS.files_dir,
        FLAGS.name,
        [float(t) for t in FLAGS.targets],
        FLAGS.plans,
        FLAGS.runs,
        FLAGS.repeats,
        **tasks.flag_settings(),
    )


if __name__ == "__main__":
    _define_flags()
    app.run(main)
