"""Search a trained once-for-all supernet for its best sub-network.

    python -m training.search --supernet=SUPERNET.keras --macs_ratio=20
    python -m training.search --supernet=SUPERNET.keras --max_latency_ms=40 \\
        --output=outputs/search_latency

GAN Compression's search phase on its own (`training.methods.gan_compression`
runs it at the end of the supernet's training, and saves the trained
supernet as `<output_dir>/checkpoints/<run>/method/supernet.keras`). Every
candidate configuration within the budget is scored by its PSNR to the
targets of validation images of the *training* photos: by default the
vintage task's validation split (`training.tasks`: central views of
training photos never trained on, what `training.train` gives the method),
or `--validation=FILE.npz` with arrays `inputs` and `targets`. The budget
is MACs (`--macs_budget` G, or `--macs_ratio` of `--teacher`'s MACs) and
optionally measured fp32 LiteRT latency (`--max_latency_ms`: each
candidate is exported and timed once, the times kept in `--latency_cache`).
Writes the log `<output>.json` (config, MACs, latency, score of every
candidate; an interrupted evolution resumes from it) and the scatter
`<output>.png`, and prints the best configuration, with its measured
latency (`--time_best`), to pass on as `--method_options=config=...`.
"""

from __future__ import annotations

import json
import os

import keras
import numpy as np
from absl import app, flags, logging

import tfgancompress as tgc
from training import methods, tasks
from training.budget import Budget, BudgetError

FLAGS = flags.FLAGS
_OPTIONS = methods.get("gan_compression").options
_METHOD_KEYS = (
    "search",
    "choices",
    "population",
    "generations",
    "mutation_ratio",
    "parent_ratio",
    "mutate_prob",
    "max_latency_ms",
    "budget_floor",
    "latency_runs",
)
DEFAULTS = {
    "supernet": None,
    "teacher": "vintage",
    "macs_ratio": 20.0,
    "macs_budget": None,
    "latency_cache": None,
    "time_best": True,
    "input_size": 256,
    "validation": None,
    "seed": 0,
    "jit_compile": True,
    "output": "outputs/search",
    **{key: getattr(_OPTIONS, key) for key in _METHOD_KEYS},
}


def define_flags() -> None:
    """Defines the command-line flags (only when run as a script)."""
    d = DEFAULTS
    flags.DEFINE_string("supernet", None, "Trained supernet (.keras).", required=True)
    flags.DEFINE_string(
        "teacher",
        d["teacher"],
        "The teacher the ratio is taken of: 'vintage' or a .keras generator.",
    )
    flags.DEFINE_float(
        "macs_ratio", d["macs_ratio"], "Budget: teacher MACs / ratio.", lower_bound=1
    )
    flags.DEFINE_float(
        "macs_budget", d["macs_budget"], "Budget in G MACs; overrides --macs_ratio."
    )
    flags.DEFINE_float(
        "max_latency_ms",
        d["max_latency_ms"],
        "Measured fp32 LiteRT latency budget (2 threads), on top of the MACs one.",
    )
    flags.DEFINE_string(
        "latency_cache",
        d["latency_cache"],
        "JSON cache of measured latencies; default latency.json next to the "
        "supernet (the training run's cache).",
    )
    flags.DEFINE_float(
        "budget_floor",
        d["budget_floor"],
        "Least share of the budget (latency if given, else MACs) a candidate uses.",
        lower_bound=0,
        upper_bound=1,
    )
    flags.DEFINE_integer("latency_runs", d["latency_runs"], "Timed runs each.")
    flags.DEFINE_bool(
        "time_best", d["time_best"], "Measure the best candidate's latency."
    )
    flags.DEFINE_integer(
        "input_size", d["input_size"], "Image side MACs and latency count at."
    )
    flags.DEFINE_string(
        "validation",
        d["validation"],
        "A .npz with 'inputs' and 'targets' (N, H, W, C) in [-1, 1]; default: "
        "the vintage task's validation photos.",
    )
    flags.DEFINE_enum("search", d["search"], ["evolution", "brute_force"], "Algorithm.")
    flags.DEFINE_string(
        "choices", d["choices"], "Widths of each number, fractions of the largest."
    )
    flags.DEFINE_integer("population", d["population"], "Evolution's population.")
    flags.DEFINE_integer("generations", d["generations"], "Evolution's generations.")
    flags.DEFINE_float("mutation_ratio", d["mutation_ratio"], "Mutants' share.")
    flags.DEFINE_float("parent_ratio", d["parent_ratio"], "Parents' share.")
    flags.DEFINE_float("mutate_prob", d["mutate_prob"], "Per-number redraw chance.")
    flags.DEFINE_integer(
        "seed", d["seed"], "Seed of the evolution and the validation split."
    )
    flags.DEFINE_bool("jit_compile", d["jit_compile"], "XLA for the scoring pass.")
    flags.DEFINE_string("output", d["output"], "Log path prefix (.json, .png).")


def validation_images(settings: dict) -> tuple[np.ndarray, np.ndarray]:
    """`(inputs, targets)` from an .npz or the vintage task's validation split.

    Raises:
        ValueError: If the .npz lacks `inputs` or `targets`.
    """
    path = settings["validation"]
    if path:
        with np.load(path) as data:
            missing = {"inputs", "targets"} - set(data.files)
            if missing:
                raise ValueError(
                    f"{path} has no array(s) {sorted(missing)}; it holds {data.files}."
                )
            return data["inputs"], data["targets"]
    return tasks.vintage_task(seed=settings["seed"]).validation


def _budget(settings: dict, shape: tuple) -> Budget:
    if settings["macs_budget"] is not None:
        return Budget(round(settings["macs_budget"] * 1e9), shape)
    teacher_path = settings["teacher"]
    teacher = (
        tgc.models.pretrained("vintage")
        if teacher_path == "vintage"
        else keras.models.load_model(teacher_path)
    )
    return Budget.resolve(teacher, settings["macs_ratio"], None, shape)


def _log_latency(path: str, best: tgc.search.Candidate) -> None:
    """Writes the best candidate's measured latency into the search log."""
    with open(path, encoding="utf-8") as file:
        log = json.load(file)
    for entry in [log["best"], *log["candidates"]]:
        if entry["config"] == best.config:
            entry["latency_ms"] = best.latency_ms
    with open(path, "w", encoding="utf-8") as file:
        json.dump(log, file, indent=1, allow_nan=False)


def run(**overrides) -> tgc.search.SearchResult:
    """The search, with `DEFAULTS` (the flags' defaults) updated by `overrides`.

    Returns:
        The `tgc.search.SearchResult` (also written to `<output>.json/.png`).

    Raises:
        ValueError: On an unknown setting, a missing supernet or bad options.
    """
    unknown = sorted(set(overrides) - set(DEFAULTS))
    if unknown:
        raise ValueError(f"Unknown settings {unknown}; known: {sorted(DEFAULTS)}.")
    settings = {**DEFAULTS, **overrides}
    if not settings["supernet"]:
        raise ValueError("Give the trained supernet: --supernet=PATH.keras.")
    shape = (settings["input_size"], settings["input_size"], 3)
    inputs, targets = validation_images(settings)
    net = keras.models.load_model(settings["supernet"])
    budget = _budget(settings, shape)
    cache = settings["latency_cache"] or os.path.join(
        os.path.dirname(os.path.abspath(settings["supernet"])), "latency.json"
    )
    method = methods.get(
        "gan_compression",
        {**{key: settings[key] for key in _METHOD_KEYS}, "latency_cache": cache},
    )
    latency = method.latency_cache(net, shape, None)
    output = settings["output"]
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    print(
        f"Searching {settings['supernet']} within {budget.describe()}"
        + (
            f" and {settings['max_latency_ms']} ms"
            if settings["max_latency_ms"] is not None
            else ""
        )
        + f", scored on {len(inputs)} validation views of training photos.",
        flush=True,
    )
    result = method.search_supernet(
        net,
        inputs,
        targets,
        budget.macs,
        shape,
        output=output,
        latency=latency,
        seed=settings["seed"],
        jit_compile=settings["jit_compile"],
    )
    best = result.best
    if best.latency_ms is None and settings["time_best"]:
        best.latency_ms = latency(best.config)
        _log_latency(f"{output}.json", best)
    timed = "" if best.latency_ms is None else f", {best.latency_ms:.2f} ms"
    print(
        f"Best: {best.config} ({best.macs / 1e9:.3f} G MACs{timed}, "
        f"{best.score:.3f} dB PSNR) of {len(result.candidates)} scored; log "
        f"{output}.json, plot {output}.png",
        flush=True,
    )
    return result


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.WARNING)
    try:
        run(**{name: FLAGS[name].value for name in DEFAULTS})
    except (BudgetError, ValueError, OSError) as error:
        raise app.UsageError(str(error)) from error


def cli() -> None:
    """Console-script entry point."""
    define_flags()
    app.run(main)


if __name__ == "__main__":
    cli()
