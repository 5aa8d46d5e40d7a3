"""Compress the pretrained vintage CycleGAN teacher: the README's main job.

    python -m training.train --output_dir=outputs/vintage
    python -m training.train --method=uniform --macs_ratio=25
    python -m training.train --method=distill --method_options=lambda_distill=2

`--method` is any registered method (`training.methods.available()`), run
through its phases by `training.pipeline` at `--macs_ratio` (default 20:
the student costs at most 1/20 of the teacher's MACs at 256x256) or
`--macs_budget` G MACs, for `--steps` training steps in all; its knobs are
`--method_options=key=value,...`. The default, `distill`, is the
distillation baseline: the teacher cut to the budget by filter L1 norm, its
convolutions refitted to the teacher by least squares on
`--reconstruction_views` training views (`tgc.reconstruction`), then
trained with pixel + feature distillation + a GAN loss on exact
pseudo-pairs (a view of a built-in training photo, the teacher's output on
that view; `--crops_per_photo` colour-jittered views per photo). `uniform`
trains the same widths from scratch. With `--colour_skip` (default) the
student is wrapped as `y = colour_map(x) + student(x)`, starting at the
least-squares colour map of the training photos
(`tgc.models.with_colour_skip`).

Training checkpoints to `<output_dir>/checkpoints/` every epoch and after
each phase; run the same command again after an interruption and it resumes
there. Writes `student.keras`, `student.tflite` (fp32),
`student_int8.tflite`, `samples.png` (input | teacher | student | colour
map) and `report.md`/`report.json` (MACs, params, LiteRT latency teacher vs
student, PSNR/SSIM/FD vs the teacher on photos held out by source, next to
the identity and colour-map references).
"""

from __future__ import annotations

import os
import time

import numpy as np
from absl import app, flags, logging

import tfgancompress as tgc
from tfgancompress import latency, reports
from training import evaluation, methods, pipeline, vintage
from training.budget import BudgetError

FLAGS = flags.FLAGS


def define_flags() -> None:
    """Defines the command-line flags (only when run as a script)."""
    flags.DEFINE_string(
        "method",
        vintage.DEFAULTS["method"],
        "Compression method (training.methods.available(): "
        f"{', '.join(methods.available())}).",
    )
    flags.DEFINE_list(
        "method_options",
        [],
        "The method's options as key=value,... (an unknown key is an error "
        "naming the known ones).",
    )
    flags.DEFINE_float(
        "macs_ratio",
        vintage.DEFAULTS["macs_ratio"],
        "The student costs at most 1/macs_ratio of the teacher's MACs at 256x256.",
        lower_bound=1.0,
    )
    flags.DEFINE_float(
        "macs_budget",
        None,
        "Absolute budget: student G MACs (1e9) at 256x256; overrides --macs_ratio.",
    )
    flags.DEFINE_bool(
        "colour_skip",
        vintage.DEFAULTS["colour_skip"],
        "Wrap the student in a global colour skip (y = colour map + student).",
    )
    flags.DEFINE_integer(
        "reconstruction_views",
        vintage.DEFAULTS["reconstruction_views"],
        "Training views on which a student that inherits the teacher's channels "
        "is refitted to it by least squares before fine-tuning (0: off).",
        lower_bound=0,
    )
    flags.DEFINE_integer(
        "steps",
        vintage.DEFAULTS["steps"],
        "Training steps of all phases together (the method splits them).",
        lower_bound=1,
    )
    flags.DEFINE_integer(
        "steps_per_epoch",
        vintage.DEFAULTS["steps_per_epoch"],
        "Steps between checkpoints and held-out evaluations.",
        lower_bound=1,
    )
    flags.DEFINE_integer(
        "batch_size", vintage.DEFAULTS["batch_size"], "Pairs per step.", lower_bound=1
    )
    flags.DEFINE_integer(
        "crop_size",
        vintage.DEFAULTS["crop_size"],
        "Training crop side.",
        lower_bound=32,
    )
    flags.DEFINE_integer(
        "crops_per_photo",
        vintage.DEFAULTS["crops_per_photo"],
        "Cached training views per photo (the teacher runs once on each).",
        lower_bound=1,
    )
    flags.DEFINE_float(
        "colour_jitter",
        vintage.DEFAULTS["colour_jitter"],
        "Colour jitter strength of the training views.",
        lower_bound=0.0,
        upper_bound=1.0,
    )
    flags.DEFINE_float(
        "learning_rate",
        vintage.DEFAULTS["learning_rate"],
        "Adam learning rate (G and D), cosine-decayed to 0 over --steps.",
    )
    flags.DEFINE_integer(
        "ndf", vintage.DEFAULTS["ndf"], "Discriminator width.", lower_bound=1
    )
    flags.DEFINE_integer(
        "eval_size",
        vintage.DEFAULTS["eval_size"],
        "Side of the held-out evaluation crops.",
    )
    flags.DEFINE_integer(
        "photo_size",
        vintage.DEFAULTS["photo_size"],
        "Short side the photos are loaded at before views are cut (multiple of 4).",
    )
    flags.DEFINE_integer(
        "latency_runs",
        vintage.DEFAULTS["latency_runs"],
        "Interleaved LiteRT timing rounds.",
    )
    flags.DEFINE_integer("seed", vintage.DEFAULTS["seed"], "Random seed.")
    flags.DEFINE_bool(
        "jit_compile",
        vintage.DEFAULTS["jit_compile"],
        "Compile the train step with XLA.",
    )
    flags.DEFINE_string(
        "output_dir", vintage.DEFAULTS["output_dir"], "Where to write results."
    )


def _report_markdown(report: dict) -> str:
    steps = report["phase_steps"]
    if report["initial_psnr"] is None:
        initial = "not measured (resumed from a checkpoint)."
    else:
        initial = f"{report['initial_psnr']:.2f} dB PSNR " + (
            f"(refitted by least squares on {report['reconstruction_views']} "
            "training views)."
            if report["reconstruction_views"]
            else "(no least-squares refit)."
        )
    state = report["method_state"]
    method_state = []
    if state:  # e.g. gan_compression's chosen config
        items = ", ".join(f"{key}={value}" for key, value in state.items())
        method_state = [f"Method state: {items}.", ""]
    lines = [
        f"# Vintage teacher compressed with `{report['method']}`",
        "",
        f"`{report['description']}` at a budget of {report['budget']}.",
        "",
        f"{report['steps']} steps (search {steps['search']}, fine-tuning "
        f"{steps['finetune']}), batch {report['batch_size']}, crops "
        f"{report['crop_size']}; {report['train_seconds']:.0f} s training, "
        f"{report['wall_seconds']:.0f} s in all. Quality vs the teacher on "
        f"{report['eval_images']} photos held out by source "
        f"({report['eval_size']}x{report['eval_size']}).",
        "",
        f"Student before training: {initial}",
        "",
        *method_state,
        "| model | G MACs | M params | LiteRT ms | PSNR dB | SSIM | FD |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name in ("teacher", "student", "student_int8", "identity", "colour_map"):
        row = report["rows"][name]
        cells = [
            f"{row['macs'] / 1e9:.2f}" if "macs" in row else "",
            f"{row['params'] / 1e6:.2f}" if "params" in row else "",
            f"{row['latency_ms']:.1f}" if "latency_ms" in row else "",
            f"{row['psnr']:.2f}" if "psnr" in row else "",
            f"{row['ssim']:.3f}" if "ssim" in row else "",
            f"{row['fd']:.2f}" if "fd" in row else "",
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += [
        "",
        f"MACs ratio {report['macs_ratio']:.1f}x, measured LiteRT speed-up "
        f"{report['speedup']:.2f}x (fp32, {report['threads']} threads, "
        f"{report['eval_size']}x{report['eval_size']}).",
        "",
    ]
    if "d_macs" in report:
        live = ", ".join(
            f"{name} {fraction:.2f}"
            for name, fraction in report.get("d_live_fraction", {}).items()
        )
        lines += [
            f"Discriminator slimmed from {report['d_macs_before'] / 1e9:.2f} to "
            f"{report['d_macs'] / 1e9:.2f} G MACs; live channels per layer: {live}.",
            "",
        ]
    return "\n".join(lines)


def run(**overrides) -> dict:
    """The whole job; returns the report (also written to `output_dir`).

    Args:
        **overrides: Values replacing `vintage.DEFAULTS` (the flags' defaults).

    Raises:
        ValueError: On an unknown setting, an unknown method or option.
        BudgetError: If the method cannot reach the MACs budget.
    """
    unknown = sorted(set(overrides) - set(vintage.DEFAULTS))
    if unknown:
        raise ValueError(
            f"Unknown settings {unknown}; known: {sorted(vintage.DEFAULTS)}."
        )
    config = {**vintage.DEFAULTS, **overrides}
    method = methods.get(config["method"], config["method_options"])
    start = time.perf_counter()
    output_dir = config["output_dir"]
    os.makedirs(output_dir, exist_ok=True)
    size = config["eval_size"]
    shape = (size, size, 3)
    print("[1/5] teacher and held-out views", flush=True)
    teacher = tgc.models.pretrained("vintage")
    held_out, reference_pairs = vintage.task_data(config)
    colour_map = tgc.models.fit_colour_map(*reference_pairs, seed=config["seed"])
    inputs, targets = held_out
    initial = {}

    def score_untrained(phase, student):
        if phase in ("slim", "refit"):
            outputs = student.generator.predict(inputs, 2, verbose=0)
            initial["psnr"] = float(np.mean(tgc.metrics.psnr(targets, outputs)))
            print(f"      after {phase}: {initial['psnr']:.2f} dB PSNR on held-out")

    print(f"[2/5] compressing with {method.description}", flush=True)
    result, budget = vintage.compress(
        method,
        teacher,
        config,
        colour_map if config["colour_skip"] else None,
        held_out,
        after_phase=score_untrained,
    )
    student = result.student.generator
    student.save(os.path.join(output_dir, "student.keras"))

    print("[3/5] exporting fp32 and int8 LiteRT files", flush=True)
    paths = {
        "student": tgc.export.to_litert(
            student, os.path.join(output_dir, "student.tflite"), input_shape=shape
        ),
        "student_int8": tgc.export.to_litert(
            student,
            os.path.join(output_dir, "student_int8.tflite"),
            quantization="int8",
            representative_data=None
            if tgc.quantization.is_quantized(student)
            else reference_pairs[0],
            input_shape=shape,
        ),
    }

    print("[4/5] measuring quality against the teacher", flush=True)
    colour_map_reference = evaluation.colour_map_reference(
        reference_pairs, seed=config["seed"]
    )
    outputs = {
        "teacher": targets,
        "student": np.asarray(student.predict(inputs, batch_size=2, verbose=0)),
        "student_int8": evaluation.litert_outputs(paths["student_int8"], inputs),
        "identity": inputs,
        "colour_map": colour_map_reference(inputs),
    }
    comparison = evaluation.TeacherComparison(targets)
    rows = {name: comparison.score(out) for name, out in outputs.items()}

    print("[5/5] timing teacher vs student in LiteRT", flush=True)
    timing = latency.compare_latency(
        {"teacher": teacher, **paths},
        input_shape=shape,
        runs=config["latency_runs"],
    )
    for name in ("teacher", "student"):
        cost = tgc.profile(teacher if name == "teacher" else student, shape)
        rows[name].update(macs=cost.macs, params=cost.params)
    rows["student_int8"].update(macs=rows["student"]["macs"])
    for name, timed in timing.results.items():
        rows[name]["latency_ms"] = timed.median_ms
    reports.save_image_grid(
        os.path.join(output_dir, "samples.png"),
        [inputs, targets, outputs["student"], outputs["colour_map"]],
    )
    report = {
        **{k: config[k] for k in ("method", "steps", "batch_size", "crop_size")},
        "description": method.description,
        "method_options": method.describe()["options"],
        "budget": budget.describe(),
        "macs_budget": budget.macs,
        "phase_steps": result.steps,
        "phase_seconds": result.seconds,
        "method_state": {
            key: value
            for key, value in result.student.state.items()
            if isinstance(value, str | int | float)
            and not isinstance(value, bool)
            and key not in pipeline.DISCRIMINATOR_REPORT  # reported below
        },
        "reconstruction_views": result.refit_images or 0,
        "initial_psnr": initial.get("psnr"),
        "eval_size": size,
        "eval_images": len(inputs),
        "threads": 2,
        "train_seconds": sum(
            result.seconds.get(phase, 0.0) for phase in ("search", "finetune")
        ),
        "wall_seconds": time.perf_counter() - start,
        "rows": rows,
        "macs_ratio": rows["teacher"]["macs"] / rows["student"]["macs"],
        "speedup": timing.speedup["student"],
        **pipeline.discriminator_report(result.student),
    }
    reports.write_report(output_dir, "report", report, _report_markdown(report))
    return report


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    if FLAGS.steps_per_epoch > FLAGS.steps:
        raise app.UsageError("--steps_per_epoch must not exceed --steps.")
    try:  # fail before any work on a bad method or option
        methods.get(FLAGS.method, FLAGS.method_options)
    except ValueError as error:
        raise app.UsageError(str(error)) from error
    logging.set_verbosity(logging.WARNING)
    try:
        run(**{key: FLAGS[key].value for key in vintage.DEFAULTS if key in FLAGS})
    except BudgetError as error:
        raise app.UsageError(str(error)) from error


def cli() -> None:
    """Console-script entry point."""
    define_flags()
    app.run(main)


if __name__ == "__main__":
    cli()
