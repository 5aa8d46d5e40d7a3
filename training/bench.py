"""The method benchmark: every method on one task at one budget, one table.

    python -m training.bench --steps=300              # every row, cached ones reused
    python -m training.bench --methods=gcc            # train (or update) gcc only
    python -m training.bench --methods=distill --retrain
    python -m training.bench --variant=distill_pixel=distill:lambda_distill=0

Rows: the teacher; the two references a real student must beat (the
identity, and the task's least-squares global colour map); then every
registered method (`training.methods.available()`, found automatically,
the baselines `uniform` and `distill` first) and every option variant
(`VARIANTS`, `--variant=label=method:key=value,...`). All trained rows
share one MACs budget (`--macs_ratio`, default 20, or `--macs_budget`),
one task (the vintage task by default; `--teacher`/`--photos`/`--pairs` as
in `training.train`), one seed and one step budget.

Each trained row is trained on its own through `training.train.compress`
and cached under `<work_dir>/rows/<row>-<key>/`, the key a hash of the
method, its options, the budget, the steps and the other training settings,
the seed and the task's data (`training.train.run_key`). A finished row
holds `student.keras`, `student.tflite`, `student_int8.tflite`,
`samples.png`, the method's reports (`training.methods.Setup.report_dir`:
`dmad`'s `mask_trajectory.png`/`.json`) and, written last and atomically,
`row.json` (quality of the fp32 model and of the int8 file against the
teacher on the held-out photos, MACs, parameters, discriminator MACs
before/after slimming, training time, and `export`: how its files were
made). A killed benchmark resumes where it stopped: finished rows are read
back, an unfinished one resumes from its checkpoints.

The files are made under the export settings (`export_settings`: how
the instance norms take their statistics, `training.ship.NORM_STATISTICS`,
the int8 plan's whole-output target, `training.ship.INT8_TARGET_PSNR`,
and its greedy, `training.ship.INT8_PLAN`,
and `--fold_norms`, off by default (it costs quality): instance norms frozen
on the reference views and folded into the convolutions, `training.ship.shipped_model`;
the row's quality, int8 quality and speed are then those of the folded
files, `psnr_unfolded` etc. the trained student's own). They are not part
of the training key: a cached row exported under other settings is
exported and scored again from its `student.keras`, without training
(`reship_row`).

`--methods` lists the rows to produce now; every other row cached under
the same settings is reused, so `--methods=gcc` trains gcc and keeps the
others. `--retrain` trains the listed rows again. A known row with no cache
in `work_dir` (a new machine, a cleared cache) is kept from the report
already in `--output_dir` when that report's row was made under the same
run key (`reported_row`): as that run made, scored and timed it, marked
`from_report` and "(earlier run)" in the table, and not timed again (its
files are not here). Otherwise it is left out with a warning.

Then one pass times every row's fp32 and int8 LiteRT file and the
teacher's, interleaved (`tgc.ship.time_files`), so the speed-ups share the
machine's noise. Writes `<task>.json` (strict JSON), `<task>.md` (with the
command that made it), `<task>.png` (MACs vs PSNR, every row) and
`<task>_latency.png` (measured latency vs MACs) to `--output_dir`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import sys

import keras
from absl import app, flags, logging

import tfgancompress as tgc
from tfgancompress import latency, reports
from tfgancompress.atomic import atomic_path
from training import methods, pipeline, ship, tasks, train
from training.budget import BudgetError
from training.methods import gan_slimming

REFERENCES = ("teacher", "identity", "colour_map")
BASELINES = ("uniform", "distill")
# Option variants benchmarked as rows of their own: {label: (method, options)}.
# A variant a method's module registers as a method of its own (e.g.
# `gan_slimming_int8`) is a row already.
VARIANTS: dict[str, tuple[str, str]] = {
    "distill_noskip": ("distill", "colour_skip=false"),
    "gan_slimming_paper": ("gan_slimming", gan_slimming.PAPER_OPTIONS),
}

FLAGS = flags.FLAGS


@dataclasses.dataclass(frozen=True)
class Row:
    """A trained row: a method with options, under a label."""

    label: str
    method: str
    options: str = ""

    def make(self) -> methods.Method:
        """The configured method."""
        return methods.get(self.method, self.options)


def parse_variant(spec: str) -> tuple[str, tuple[str, str]]:
    """`"label=method:key=value,..."` -> `(label, (method, options))`.

    Raises:
        ValueError: If the spec is malformed or the label is not an identifier.
    """
    label, equals, rest = spec.partition("=")
    method, _, options = rest.partition(":")
    if not equals or not label.isidentifier() or not method:
        raise ValueError(
            f"A variant is label=method:key=value,..., got {spec!r} (the label "
            "an identifier)."
        )
    return label, (method, options)


def known_rows(variants: dict[str, tuple[str, str]] | None = None) -> dict[str, Row]:
    """Every trained row: registered methods (baselines first), then variants."""
    names = [n for n in BASELINES if n in methods.available()]
    names += [n for n in methods.available() if n not in BASELINES]
    rows = {name: Row(name, name) for name in names}
    for label, (method, options) in {**VARIANTS, **(variants or {})}.items():
        rows[label] = Row(label, method, options)
    return rows


def _check_names(names, rows: dict[str, Row]) -> None:
    unknown = sorted(set(names) - {*REFERENCES, *rows})
    if unknown:
        raise ValueError(
            f"Unknown rows {unknown}; available: {', '.join([*REFERENCES, *rows])}."
        )


def row_dir(work_dir: str, label: str, key: str) -> str:
    """Where the row `label` trained under `key` is cached."""
    return os.path.join(work_dir, "rows", f"{label}-{key}")


def missing_row_warning(work_dir: str, label: str, key: str) -> str:
    """The console line for a known row left out: nothing cached under `key`.

    Names the folders of the row cached under other keys, if any: a row
    whose options, settings or data differ (or a method that gained an
    option not declared `training.methods.key_neutral`).
    """
    rows = os.path.join(work_dir, "rows")
    others = sorted(
        name
        for name in (os.listdir(rows) if os.path.isdir(rows) else [])
        if name.rpartition("-")[0] == label
        and name != f"{label}-{key}"
        and load_row(os.path.join(rows, name)) is not None
    )
    text = (
        f"WARNING: row {label} (key {key}) is left out of the table: nothing is "
        f"cached in {row_dir(work_dir, label, key)}; --methods={label} trains it."
    )
    if others:
        text += f" Cached under other keys: {', '.join(others)}."
    return text


def load_report(output_dir: str, task_name: str) -> tuple[str, dict | None]:
    """The earlier report in `output_dir` (`<task>.json`), or `None` if absent.

    Raises:
        ValueError: If the file is there but is not a readable report.
    """
    path = os.path.join(output_dir, f"{task_name}.json")
    if not os.path.exists(path):
        return path, None
    try:
        with open(path) as file:
            report = json.load(file)
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(
            f"{path} is not a readable benchmark report ({error}); move it away "
            "or fix it: the benchmark keeps rows from it."
        ) from error
    if not isinstance(report.get("rows"), dict):
        raise ValueError(f"{path} has no 'rows' table: not a benchmark report.")
    return path, report


def reported_row(report: dict | None, label: str, key: str) -> dict | None:
    """Row `label` of an earlier report if it was made under run key `key`.

    The key is the one the row recorded, or, for rows from before it was
    recorded, the one in the name of its files' folder (`<label>-<key>`).
    """
    row = (report or {}).get("rows", {}).get(label)
    if not row or "files" not in row:
        return None
    made_under = row.get("key") or os.path.basename(
        os.path.dirname(row["files"]["fp32"])
    ).removeprefix(f"{label}-")
    return row if made_under == key else None


def load_row(directory: str) -> dict | None:
    """A finished row's results, or `None` if it is not finished."""
    path = os.path.join(directory, "row.json")
    if not os.path.exists(path):
        return None
    with open(path) as file:
        return json.load(file)


QUALITY = ("psnr", "ssim", "l1", "fd", "kid")
# The export of a row whose row.json predates the `export` record.
LEGACY_EXPORT = {"fold_norms": False, "norm_statistics": "two_pass"}


def export_settings(config: dict) -> dict:
    """The settings a row's files depend on (not its training)."""
    return {
        "fold_norms": bool(config["fold_norms"]),
        "norm_statistics": ship.NORM_STATISTICS,
        "int8_target_psnr": ship.INT8_TARGET_PSNR,
        "int8_plan": ship.INT8_PLAN,
    }


def needs_reship(cached: dict, config: dict) -> bool:
    """Whether a cached row's files were made under other export settings."""
    recorded = cached.get("export", LEGACY_EXPORT)
    wanted = export_settings(config)
    return {key: recorded.get(key) for key in wanted} != wanted


def ship_row(
    student: keras.Model, task: tasks.TaskData, config: dict, directory: str
) -> dict:
    """Exports and scores a row's student in `directory`; the row's file facts.

    Returns:
        `macs`, `params`, the fp32 quality (`psnr`, ...) and the int8
        file's (`psnr_int8`, ...) of the shipped model, `files`, `export`
        (`training.ship.ship`'s) and, with folded norms, the trained
        student's own quality (`psnr_unfolded`, ...) and the validation
        PSNR of both (`psnr_validation`, `psnr_validation_unfolded`).
    """
    shipped = ship.ship(
        student, task, directory, timing=False, fold_norms=config["fold_norms"]
    )
    rows = shipped["rows"]
    fp32, int8 = rows["student"], rows["student_int8"]
    facts = {
        "macs": fp32["macs"],
        "params": fp32["params"],
        **{k: fp32[k] for k in QUALITY},
        **{f"{k}_int8": int8[k] for k in QUALITY},
        "files": {"fp32": fp32["file"], "int8": int8["file"]},
        "export": shipped["export"],
    }
    if ship.UNFOLDED in rows:
        facts.update({f"{k}_unfolded": rows[ship.UNFOLDED][k] for k in QUALITY})
    validation = shipped["export"].get("validation_psnr")
    if validation:
        facts["psnr_validation"] = validation["folded"]
        facts["psnr_validation_unfolded"] = validation["unfolded"]
    return facts


# The training phases, in order.
CURVE_PHASES = ("search", "match", "finetune")
CURVES = "curves.json"


def training_curves(result: pipeline.Compressed, config: dict) -> dict:
    """A row's training curves from its phases' `fit` histories.

    Returns:
        `{"phases": [...]}`, one record per training phase in order
        (`CURVE_PHASES`, phases of 0 steps left out): `phase`, `start` (the
        cumulative step it starts at), `steps`, and `epochs`, one record
        per logged epoch: `step` (cumulative across phases), `phase_step`
        and every loss and metric Keras logged (`val_psnr`: on the
        validation photos). A phase resumed from a checkpoint holds the
        epochs run after the resume only.
    """
    planned = {**result.steps, "match": config["match_steps"]}
    phases, start = [], 0
    for phase in CURVE_PHASES:
        steps = planned.get(phase, 0)
        if not steps:
            continue
        history = result.histories.get(phase) or {}
        epochs = [
            dict(zip(history, values, strict=True))
            for values in zip(*history.values(), strict=True)
        ]
        for epoch in epochs:
            epoch["phase_step"] = epoch.pop("step")
            epoch["step"] = start + epoch["phase_step"]
        phases.append(
            {"phase": phase, "start": start, "steps": steps, "epochs": epochs}
        )
        start += steps
    return {"phases": phases}


def load_curves(directory: str) -> dict | None:
    """A row's stored training curves, or `None` (rows trained before them)."""
    path = os.path.join(directory, CURVES)
    if not os.path.exists(path):
        return None
    with open(path) as file:
        return json.load(file)


def train_row(row: Row, task: tasks.TaskData, config: dict, directory: str) -> dict:
    """Trains, exports and scores one row in `directory`; returns its results."""
    method = row.make()
    budget = train.budget_for(task, config)
    os.makedirs(directory, exist_ok=True)
    checkpoints = os.path.join(directory, "checkpoints")
    result, d_macs = train.compress(
        method, task, config, budget, checkpoints, report_dir=directory
    )
    reports.write_json(os.path.join(directory, CURVES), training_curves(result, config))
    student = result.student.generator
    with atomic_path(os.path.join(directory, "student.keras")) as temporary:
        student.save(temporary)
    facts = ship_row(student, task, config, directory)
    results = {
        "method": row.label,
        "key": os.path.basename(directory).removeprefix(f"{row.label}-"),
        "base_method": row.method,
        "options": method.option_values(),
        "macs": facts.pop("macs"),
        "params": facts.pop("params"),
        "d_macs": d_macs or None,
        "steps": config["steps"],
        "phase_steps": result.steps,
        "method_state": pipeline.method_state(result.student),
        "train_seconds": sum(
            result.seconds.get(phase, 0.0) for phase in ("search", "match", "finetune")
        ),
        "phase_seconds": result.seconds,
        **facts,
    }
    reports.write_json(os.path.join(directory, "row.json"), results)
    shutil.rmtree(checkpoints, ignore_errors=True)
    keras.backend.clear_session()
    return results


def reship_row(
    cached: dict, task: tasks.TaskData, config: dict, directory: str
) -> dict:
    """Re-exports and re-scores a cached row from its `student.keras`.

    No training: the row's training facts are kept, its file facts (see
    `ship_row`) replaced, and `row.json` rewritten (last, atomically: a
    killed re-ship is done again).

    Raises:
        FileNotFoundError: If the row has no `student.keras`.
    """
    path = os.path.join(directory, "student.keras")
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"{path} is missing: the row cannot be re-exported under "
            f"{export_settings(config)} without retraining (--retrain)."
        )
    student = keras.saving.load_model(path, compile=False)
    kept = {
        key: value
        for key, value in cached.items()
        if not key.endswith("_unfolded") and key not in ("export", "psnr_validation")
    }
    results = {**kept, **ship_row(student, task, config, directory)}
    reports.write_json(os.path.join(directory, "row.json"), results)
    keras.backend.clear_session()
    return results


def _teacher_file(task: tasks.TaskData, work_dir: str) -> str:
    size = task.held_out[0].shape[1]
    name = f"teacher-{task.key}-{size}-{ship.NORM_STATISTICS}.tflite"
    path = os.path.join(work_dir, name)  # lowered as the rows' files are
    if not os.path.exists(path):
        tgc.export.to_litert(task.teacher, path, input_shape=(1, size, size, 3))
    return path


def _reference_rows(task: tasks.TaskData) -> dict[str, dict]:
    inputs, targets = task.held_out
    scorer = tgc.ship.Scorer(targets)
    cost = tgc.profile(task.teacher, inputs.shape[1:])
    outputs = {"teacher": targets, **task.references()}
    rows = {name: {"method": name, **scorer.score(o)} for name, o in outputs.items()}
    rows["teacher"].update(macs=cost.macs, params=cost.params)
    return rows


def _time_rows(rows: dict[str, dict], teacher_file: str, runs: int) -> None:
    """Times the teacher's and every trained row's files; adds the results."""
    files = {"teacher": teacher_file}
    owners = {"teacher": ("teacher", "")}  # file name -> (row, key suffix)
    for label, row in rows.items():
        if "files" in row and not row.get("from_report"):
            for kind, suffix in (("fp32", ""), ("int8", "_int8")):
                # A row may be named like another's int8 file (gan_slimming_int8).
                name = f"{label} {kind}"
                files[name] = row["files"][kind]
                owners[name] = (label, suffix)
    timing = tgc.ship.time_files(files, runs=runs)
    for name, result in timing.results.items():
        label, suffix = owners[name]
        rows[label][f"latency_ms{suffix}"] = result.median_ms
        rows[label][f"speedup{suffix}"] = timing.speedup[name]


def run(
    names,
    output_dir: str,
    work_dir: str | None = None,
    *,
    retrain: bool = False,
    variants: dict[str, tuple[str, str]] | None = None,
    task: tasks.TaskData | None = None,
    **settings,
) -> dict:
    """Runs the benchmark; returns the results (also written to disk).

    Args:
        names: Rows to produce now: registered methods and variant labels
            (and `teacher`, `identity`, `colour_map`, which are always
            there). Trained rows cached under the same settings are reused
            (and listed) whether named or not.
        output_dir: Where the table, JSON and plots go.
        work_dir: Where rows are cached (default `<output_dir>/bench`).
        retrain: Train the named rows again even when cached.
        variants: More variants `{label: (method, options)}`.
        task: A loaded task (default: the one `settings` describe).
        **settings: Values replacing `training.train.DEFAULTS`.

    Raises:
        ValueError: On an unknown row, setting or option.
        BudgetError: If a method cannot reach the budget.
    """
    known = known_rows(variants)
    _check_names(names, known)
    config = train.settings({**settings, "output_dir": output_dir})
    work_dir = work_dir or os.path.join(output_dir, "bench")
    os.makedirs(output_dir, exist_ok=True)
    os.makedirs(work_dir, exist_ok=True)
    print("loading the task (teacher views are cached)", flush=True)
    task = task or tasks.from_settings(config)
    budget = train.budget_for(task, config)
    rows = _reference_rows(task)  # cheap: always there, the teacher the baseline
    report_path, report = load_report(output_dir, task.summary()["task"])
    for label, row in known.items():
        key = train.run_key(row.make(), budget, config, task)
        directory = row_dir(work_dir, label, key)
        cached = load_row(directory)
        if label in names and (cached is None or retrain):
            if retrain:
                shutil.rmtree(directory, ignore_errors=True)
            print(f"{label}: training, {config['steps']} steps", flush=True)
            rows[label] = train_row(row, task, config, directory)
        elif cached is not None and needs_reship(cached, config):
            print(
                f"{label}: cached in {directory}, exported again "
                f"({export_settings(config)})",
                flush=True,
            )
            try:
                rows[label] = reship_row(cached, task, config, directory)
            except FileNotFoundError as error:
                print(f"{label}: kept as exported before: {error}", flush=True)
                rows[label] = cached
        elif cached is not None:
            print(f"{label}: cached in {directory}", flush=True)
            rows[label] = cached
        elif (earlier := reported_row(report, label, key)) is not None:
            note = (
                f", whose files were made under {earlier.get('export', LEGACY_EXPORT)}"
                if needs_reship(earlier, config)
                else ""
            )
            print(
                f"{label}: not cached here; kept from {report_path} (key {key}) as "
                f"that run made and timed it{note}",
                flush=True,
            )
            rows[label] = {**earlier, "from_report": True}
        else:
            print(missing_row_warning(work_dir, label, key), flush=True)
        if label in rows:
            _plot_curves(label, directory, output_dir)
    print("timing every LiteRT file interleaved", flush=True)
    _time_rows(rows, _teacher_file(task, work_dir), config["latency_runs"])
    teacher_macs = rows["teacher"]["macs"]
    for row in rows.values():
        if "macs" in row:
            row["macs_ratio"] = teacher_macs / row["macs"]
    results = {
        "command": "python -m training.bench " + " ".join(sys.argv[1:]),
        **task.summary(),
        "budget": budget.describe(),
        "macs_budget": budget.macs,
        "steps": config["steps"],
        "seed": config["seed"],
        "settings": {key: config[key] for key in train.RUN_KEYS},
        "export": export_settings(config),
        "eval_images": len(task.held_out[0]),
        "eval_size": task.held_out[0].shape[1],
        "threads": 2,
        "latency_runs": config["latency_runs"],
        "rows": rows,
    }
    _write(results, output_dir)
    return results


COLUMNS = (
    ("G MACs", "macs", 1e9, ".2f"),
    ("MACs ratio", "macs_ratio", 1, ".1f"),
    ("M params", "params", 1e6, ".2f"),
    ("train s", "train_seconds", 1, ".0f"),
    ("PSNR dB", "psnr", 1, ".2f"),
    ("unfolded PSNR dB", "psnr_unfolded", 1, ".2f"),
    ("val PSNR dB", "psnr_validation", 1, ".2f"),
    ("unfolded val PSNR dB", "psnr_validation_unfolded", 1, ".2f"),
    ("SSIM", "ssim", 1, ".3f"),
    ("FD", "fd", 1, ".2f"),
    ("KID", "kid", 1, ".4f"),
    ("fp32 ms", "latency_ms", 1, ".1f"),
    ("speed-up", "speedup", 1, ".2f"),
    ("int8 ms", "latency_ms_int8", 1, ".1f"),
    ("int8 speed-up", "speedup_int8", 1, ".2f"),
    ("int8 PSNR dB", "psnr_int8", 1, ".2f"),
)


def _norms_cell(row: dict) -> str:
    if "files" not in row:
        return ""
    export = row.get("export", {})
    if not export.get("folded_norms"):
        return "per image"
    left = export["instance_norms"]
    return f"folded ({left} per image)" if left else "folded"


def _markdown(results: dict) -> str:
    lines = [
        f"# Method benchmark: {results['task_description']}",
        "",
        f"Command: `{results['command']}`",
        "",
        f"Budget {results['budget']}; {results['steps']} training steps per "
        f"trained row, seed {results['seed']}; "
        + ship.task_markdown(results)
        + f" Quality against the teacher on {results['eval_images']} held-out "
        f"photos ({results['eval_size']}x{results['eval_size']}); LiteRT files "
        f"timed interleaved, {results['threads']} threads, "
        f"{results['latency_runs']} rounds.",
        "",
        "*norms*: how the row's files compute the instance norms (*folded*: "
        "frozen on the reference views and folded into the convolutions, "
        "`--fold_norms`; the row's PSNR, FD, int8 and speed are of those "
        "files, *unfolded PSNR* is the trained student's own; *val*: on the "
        "validation photos, of the training photos' sources, where frozen "
        "statistics cost more). *(earlier run)*: a row with no cache on "
        "this machine, kept from the report this one replaces (same run key): "
        "its numbers, speed included, are from the run that made it.",
        "",
        "| row | norms | " + " | ".join(name for name, *_ in COLUMNS) + " | D MACs G |",
        "|---|---|" + "---:|" * (len(COLUMNS) + 1),
    ]
    for label, row in results["rows"].items():
        cells = []
        for _, key, scale, fmt in COLUMNS:
            value = row.get(key)
            cells.append("" if value is None else format(value / scale, fmt))
        d_macs = row.get("d_macs")
        cells.append(
            f"{d_macs['before'] / 1e9:.2f} -> {d_macs['after'] / 1e9:.2f}"
            if d_macs
            else ""
        )
        name = f"{label} (earlier run)" if row.get("from_report") else label
        lines.append(f"| {name} | {_norms_cell(row)} | " + " | ".join(cells) + " |")
    states = [
        f"- {label}: " + ", ".join(f"{k}={v}" for k, v in row["method_state"].items())
        for label, row in results["rows"].items()
        if row.get("method_state")
    ]
    if states:
        lines += ["", "What the methods chose (e.g. GAN Compression's config):", ""]
        lines += states
    return "\n".join(lines) + "\n"


def _plot_quality(results: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6.5, 4.5))
    for name, row in results["rows"].items():
        if row.get("psnr") is None or not math.isfinite(row["psnr"]):
            continue  # the teacher: infinitely close to itself
        if "macs" not in row:
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
            continue
        axis.scatter(row["macs"] / 1e9, row["psnr"], s=40)
        axis.annotate(name, (row["macs"] / 1e9, row["psnr"]), fontsize=8)
    axis.set_xlabel(f"G MACs at {results['eval_size']}x{results['eval_size']}")
    axis.set_ylabel("PSNR vs teacher (dB)")
    teacher = results["rows"]["teacher"]["macs"] / 1e9
    axis.set_title(f"{results['task']}: quality vs cost (teacher {teacher:.1f} G)")
    reports.save_figure(figure, path)


def _plot_curves(label: str, directory: str, output_dir: str) -> None:
    """`<output_dir>/curves/<label>.png` from the row's curves, if it has them."""
    curves = load_curves(directory)
    if curves is None:
        return
    os.makedirs(os.path.join(output_dir, "curves"), exist_ok=True)
    reports.plot_training_curves(
        curves["phases"],
        os.path.join(output_dir, "curves", f"{label}.png"),
        title=f"{label}: training curves",
    )


def _plot_latency(results: dict, path: str) -> None:
    points = []
    for name, row in results["rows"].items():
        for suffix, kind in (("", "fp32"), ("_int8", "int8")):
            if row.get(f"latency_ms{suffix}") and row.get("macs"):
                label = name + suffix
                points.append(
                    latency.LatencyPoint(
                        label, row["macs"], row[f"latency_ms{suffix}"], kind
                    )
                )
    with atomic_path(path) as temporary:
        latency.plot_latency_vs_macs(
            points,
            temporary,
            "teacher",
            title=f"{results['task']}: measured LiteRT latency vs MACs",
        )


def _write(results: dict, output_dir: str) -> None:
    stem = os.path.join(output_dir, results["task"])
    reports.write_report(output_dir, results["task"], results, _markdown(results))
    _plot_quality(results, f"{stem}.png")
    _plot_latency(results, f"{stem}_latency.png")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    try:
        variants = dict(parse_variant(spec) for spec in FLAGS.variant)
        for _, (method, options) in variants.items():
            methods.get(method, options)
        names = FLAGS.methods or [*REFERENCES, *known_rows(variants)]
        _check_names(names, known_rows(variants))
    except ValueError as error:
        raise app.UsageError(f"--methods/--variant: {error}") from error
    logging.set_verbosity(logging.INFO if FLAGS.verbose else logging.WARNING)
    settings = {
        key: FLAGS[key].value
        for key in train.DEFAULTS
        if key in FLAGS and key != "output_dir"
    }
    settings["steps_per_epoch"] = FLAGS.steps_per_epoch or min(
        train.DEFAULTS["steps_per_epoch"], FLAGS.steps
    )
    try:
        run(
            names,
            FLAGS.output_dir,
            FLAGS.work_dir,
            retrain=FLAGS.retrain,
            variants=variants,
            **settings,
        )
    except (BudgetError, OSError, ValueError) as error:
        if FLAGS.verbose:
            raise
        raise app.UsageError(str(error)) from error


def define_flags() -> None:
    """Defines the command-line flags (only when run as a script)."""
    flags.DEFINE_list(
        "methods",
        None,
        "Rows to produce now (default: all): teacher, identity, colour_map, "
        f"registered methods ({', '.join(methods.available())}) and variant "
        "labels. Other rows cached under the same settings are reused.",
    )
    flags.DEFINE_multi_string(
        "variant",
        [],
        "An option variant as a row of its own: label=method:key=value,... "
        "(repeatable).",
    )
    flags.DEFINE_bool("retrain", False, "Train the listed rows again even if cached.")
    flags.DEFINE_integer(
        "steps", 300, "Training steps of every trained row.", lower_bound=1
    )
    flags.DEFINE_integer(
        "steps_per_epoch",
        None,
        "Steps between checkpoints and validation scores (default: "
        f"{train.DEFAULTS['steps_per_epoch']}, at most --steps).",
        lower_bound=1,
    )
    flags.DEFINE_string("output_dir", "benchmarks/results", "Where to write results.")
    flags.DEFINE_string(
        "work_dir", "outputs/bench", "Where trained rows are cached (resumable)."
    )
    train.define_run_flags()
    tasks.define_flags()


def cli() -> None:
    """Console-script entry point."""
    define_flags()
    app.run(main)


if __name__ == "__main__":
    cli()
