"""The method benchmark: every method on the vintage task, one table.

    python -m training.bench --steps=300 --output_dir=benchmarks/results

Rows: the teacher; the two references a real student must beat (identity,
and the best global colour map fitted on training pairs); and every
registered method (`training.methods.available()`), among them the
baselines (`uniform`: the teacher's architecture at the budget's width
trained from scratch, `distill`: the L1-pruned teacher, refitted by least
squares and trained with pixel + feature distillation + GAN loss). Each
trained row uses the same MACs budget (`--macs_ratio`, default 20, or
`--macs_budget`), step count, seed and data (built-in photos; quality
measured against the teacher on photos whose *sources* were held out of
training). Latency: all LiteRT files
timed interleaved in one run (fp32 and int8, 2 threads), so the speed-ups
share the machine's noise.

Writes `vintage.json`, `vintage.md` (with the command that made it) and
`vintage.png` (MACs vs PSNR) to `--output_dir`.
"""

from __future__ import annotations

import os
import sys

import numpy as np
from absl import app, flags, logging

import tfgancompress as tgc
from tfgancompress import latency, reports
from training import evaluation, methods, pipeline, vintage
from training.budget import DEFAULT_MACS_RATIO

REFERENCES = ("identity", "colour_map")

FLAGS = flags.FLAGS


def define_flags() -> None:
    """Defines the command-line flags (only when run as a script)."""
    flags.DEFINE_list(
        "methods",
        ["teacher", *REFERENCES, *methods.available()],
        "Rows to produce: teacher, identity, colour_map and registered methods.",
    )
    flags.DEFINE_integer("steps", 300, "Training steps of every trained row.")
    flags.DEFINE_float(
        "macs_ratio",
        DEFAULT_MACS_RATIO,
        "Every student costs at most 1/macs_ratio of the teacher's MACs.",
        lower_bound=1.0,
    )
    flags.DEFINE_float(
        "macs_budget", None, "Student G MACs (1e9) at 256x256; overrides --macs_ratio."
    )
    flags.DEFINE_integer("seed", 0, "Seed of every trained row.")
    flags.DEFINE_bool("colour_skip", True, "Wrap the students in a global colour skip.")
    flags.DEFINE_integer(
        "reconstruction_views",
        vintage.DEFAULTS["reconstruction_views"],
        "Views for the distill student's least-squares refit (0: off).",
        lower_bound=0,
    )
    flags.DEFINE_integer("eval_size", 256, "Side of the held-out evaluation images.")
    flags.DEFINE_integer("latency_runs", 10, "Interleaved LiteRT timing rounds.")
    flags.DEFINE_string("output_dir", "benchmarks/results", "Where to write results.")


def _train_row(method: str, teacher, held_out, config: dict):
    """Trains one student.

    Returns:
        `(student, fp32 path, int8 path, seconds, discriminator)`, the last
        `pipeline.discriminator_report` of the trained student.
    """
    run_dir = os.path.join(config["output_dir"], "runs", method)
    os.makedirs(run_dir, exist_ok=True)
    result, _ = vintage.compress(
        methods.get(method),
        teacher,
        {**config, "method": method, "output_dir": run_dir},
        config["colour_map"],
        held_out,
    )
    student = result.student.generator
    seconds = sum(result.seconds.get(phase, 0.0) for phase in ("search", "finetune"))
    shape = (config["eval_size"], config["eval_size"], 3)
    fp32 = tgc.export.to_litert(
        student, os.path.join(run_dir, "student.tflite"), input_shape=shape
    )
    int8 = tgc.export.to_litert(
        student,
        os.path.join(run_dir, "student_int8.tflite"),
        quantization="int8",
        representative_data=None
        if tgc.quantization.is_quantized(student)
        else config["calibration"],
        input_shape=shape,
    )
    discriminator = pipeline.discriminator_report(result.student)
    return student, fp32, int8, seconds, discriminator


def _check_rows(rows) -> None:
    unknown = sorted(set(rows) - {"teacher", *REFERENCES, *methods.available()})
    if unknown:
        raise ValueError(
            f"Unknown methods {unknown}; available: teacher, "
            f"{', '.join([*REFERENCES, *methods.available()])}."
        )


def run(names, output_dir: str, **settings) -> dict:
    """Runs the benchmark; returns the results (also written to disk).

    Args:
        names: Rows: `teacher`, `identity`, `colour_map` and method names.
        output_dir: Where to write the results (students under `runs/`).
        **settings: Values replacing `vintage.DEFAULTS`.
    """
    _check_rows(names)
    config = {**vintage.DEFAULTS, **settings, "output_dir": output_dir}
    size = config["eval_size"]
    shape = (size, size, 3)
    os.makedirs(output_dir, exist_ok=True)
    teacher = tgc.models.pretrained("vintage")
    (inputs, targets), training_pairs = vintage.task_data(config)
    config["calibration"] = training_pairs[0]
    config["colour_map"] = (
        tgc.models.fit_colour_map(*training_pairs, seed=config["seed"])
        if config["colour_skip"]
        else None
    )
    comparison = evaluation.TeacherComparison(targets)
    teacher_cost = tgc.profile(teacher, shape)
    rows: dict[str, dict] = {}
    timed: dict[str, object] = {"teacher": teacher}
    outputs = {
        "teacher": targets,
        "identity": inputs,
        "colour_map": evaluation.colour_map_reference(training_pairs)(inputs),
    }
    for method in names:
        if method not in ("teacher", *REFERENCES):
            print(f"training {method} for {config['steps']} steps", flush=True)
            student, fp32, int8, seconds, discriminator = _train_row(
                method, teacher, (inputs, targets), config
            )
            cost = tgc.profile(student, shape)
            outputs[method] = np.asarray(student.predict(inputs, 2, verbose=0))
            int8_outputs = evaluation.litert_outputs(int8, inputs)
            rows[method] = {
                "macs": cost.macs,
                "params": cost.params,
                "train_seconds": seconds,
                "psnr_int8": comparison.score(int8_outputs)["psnr"],
                **discriminator,
            }
            timed[method] = fp32
            timed[f"{method}_int8"] = int8
        elif method == "teacher":
            rows[method] = {"macs": teacher_cost.macs, "params": teacher_cost.params}
        else:
            rows[method] = {}
        rows[method].update(comparison.score(outputs[method]))
    print("timing all LiteRT files interleaved", flush=True)
    timing = latency.compare_latency(
        timed, input_shape=shape, runs=config["latency_runs"]
    )
    for name, result in timing.results.items():
        row = rows[name.removesuffix("_int8")]
        suffix = "_int8" if name.endswith("_int8") else ""
        row[f"latency_ms{suffix}"] = result.median_ms
        row[f"speedup{suffix}"] = timing.speedup[name]
    for row in rows.values():
        if "macs" in row:
            row["macs_ratio"] = teacher_cost.macs / row["macs"]
    results = {
        "command": "python -m training.bench " + " ".join(sys.argv[1:]),
        "task": "vintage",
        "steps": config["steps"],
        "seed": config["seed"],
        "macs_ratio": config["macs_ratio"],
        "macs_budget": config["macs_budget"],
        "eval_images": len(inputs),
        "eval_size": size,
        "threads": 2,
        "rows": rows,
    }
    _write(results, output_dir)
    return results


def _markdown(results: dict) -> str:
    lines = [
        "# Method benchmark: vintage CycleGAN teacher",
        "",
        f"Command: `{results['command']}`",
        "",
        f"{results['steps']} training steps per trained row, seed "
        f"{results['seed']}; quality vs the teacher on {results['eval_images']} "
        f"photos held out by source ({results['eval_size']}x"
        f"{results['eval_size']}); LiteRT timed interleaved, "
        f"{results['threads']} threads.",
        "",
        "| method | G MACs | MACs ratio | M params | PSNR dB | SSIM | FD | KID "
        "| fp32 ms | speed-up | int8 ms | int8 speed-up | int8 PSNR dB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]

    def cell(row, key, fmt):
        return format(row[key], fmt) if key in row else ""

    for name, row in results["rows"].items():
        cells = [
            cell({"g": row["macs"] / 1e9} if "macs" in row else {}, "g", ".2f"),
            cell(row, "macs_ratio", ".1f"),
            cell({"m": row["params"] / 1e6} if "params" in row else {}, "m", ".2f"),
            cell(row, "psnr", ".2f"),
            cell(row, "ssim", ".3f"),
            cell(row, "fd", ".2f"),
            cell(row, "kid", ".4f"),
            cell(row, "latency_ms", ".1f"),
            cell(row, "speedup", ".2f"),
            cell(row, "latency_ms_int8", ".1f"),
            cell(row, "speedup_int8", ".2f"),
            cell(row, "psnr_int8", ".2f"),
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _plot(results: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 4))
    for name, row in results["rows"].items():
        if name == "teacher" or "psnr" not in row:
            continue
        if "macs" in row:
            axis.scatter(row["macs"] / 1e9, row["psnr"], s=40)
            axis.annotate(name, (row["macs"] / 1e9, row["psnr"]), fontsize=8)
        else:
            axis.axhline(row["psnr"], linestyle="--", color="gray", linewidth=1)
            axis.text(
                0.01,
                row["psnr"],
                name,
                transform=axis.get_yaxis_transform(),
                fontsize=8,
                color="gray",
                verticalalignment="bottom",
            )
    axis.set_xlabel("G MACs at 256x256")
    axis.set_ylabel("PSNR vs teacher (dB)")
    axis.set_title("vintage: quality vs cost (teacher: 56.8 G)")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def _write(results: dict, output_dir: str) -> None:
    reports.write_report(output_dir, "vintage", results, _markdown(results))
    _plot(results, os.path.join(output_dir, "vintage.png"))


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    try:
        _check_rows(FLAGS.methods)
    except ValueError as error:
        raise app.UsageError(f"--methods: {error}") from error
    logging.set_verbosity(logging.WARNING)
    run(
        FLAGS.methods,
        FLAGS.output_dir,
        steps=FLAGS.steps,
        macs_ratio=FLAGS.macs_ratio,
        macs_budget=FLAGS.macs_budget,
        seed=FLAGS.seed,
        colour_skip=FLAGS.colour_skip,
        reconstruction_views=FLAGS.reconstruction_views,
        eval_size=FLAGS.eval_size,
        latency_runs=FLAGS.latency_runs,
        steps_per_epoch=min(vintage.DEFAULTS["steps_per_epoch"], FLAGS.steps),
    )


def cli() -> None:
    """Console-script entry point."""
    define_flags()
    app.run(main)


if __name__ == "__main__":
    cli()
