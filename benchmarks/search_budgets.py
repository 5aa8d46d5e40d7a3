"""GAN Compression's search under a MACs budget vs a measured-latency budget.

    python -m benchmarks.search_budgets [--steps=60 --output_dir=benchmarks/results]

On one trained once-for-all supernet (`training.methods.gan_compression`:
the vintage teacher cut to half its widths, pre-distilled then trained as
a supernet for `--steps` steps on the vintage task's 64-px training views,
batch 4, seed 0; kept in `--work_dir` and reused; or `--supernet`, e.g.
a `gan_compression` run's trained supernet), two evolutionary
searches, scored alike (PSNR of the sub-network to the teacher on the
task's 16 validation views of *training* photos, 256 px):

1. **MACs budget**: 1/20 of the teacher's MACs (`--macs_ratio`), with
   the method's default budget floor (candidates use >= 90% of it).
   Its winner A is timed (fp32 LiteRT, 2 threads, 256x256): latency L.
2. **Latency budget**: measured LiteRT latency <= L (and >= 90% of L),
   no MACs budget as such; configurations are exported and timed, each once (a
   cache keyed by configuration), so this search is smaller
   (`--latency_population`, `--latency_generations`). So that only plausible ones are
   exported, candidates are pre-filtered to `--macs_window` times A's
   MACs (default 0.75-1.25).

Then both winners and the teacher are exported again and timed
interleaved (`--timing_runs` rounds, A B A B ...), so the two latencies
share the machine's noise, and compared: config, MACs, latency, score.

Writes `search_budgets.json` (settings, both search logs, the
comparison), `.md` (the table) and `.png` (score vs MACs and vs
latency of every candidate of both searches, winners starred) to
`--output_dir`. The searches resume from their logs in `--work_dir`.
"""

from __future__ import annotations

import functools
import json
import os
import sys
import tempfile
import time

import keras
from absl import app, flags

import tfgancompress as tgc
from tfgancompress.models import supernet
from training import methods, pipeline, tasks, train
from training.budget import Budget

FLAGS = flags.FLAGS
SHAPE = (256, 256, 3)
VIEWS = tasks.base.Views(crop_size=64)


def define_flags() -> None:
    """Defines the command-line flags (only when run as a script)."""
    flags.DEFINE_string(
        "supernet",
        None,
        "A trained supernet (.keras, e.g. a gan_compression run's "
        "checkpoints/RUN/method/supernet.keras) instead of training one.",
    )
    flags.DEFINE_integer("steps", 60, "Supernet training steps (pre-distil + OFA).")
    flags.DEFINE_integer("batch_size", 4, "Training batch size.")
    flags.DEFINE_float("macs_ratio", 20.0, "MACs budget: teacher MACs / ratio.")
    flags.DEFINE_integer("population", 8, "Evolution's population (each search).")
    flags.DEFINE_integer("generations", 3, "Evolution's generations (each search).")
    flags.DEFINE_integer(
        "latency_population", 6, "Latency search's population (each draw is timed)."
    )
    flags.DEFINE_integer("latency_generations", 1, "Latency search's generations.")
    flags.DEFINE_list(
        "macs_window", ["0.75", "1.25"], "Latency search: MACs pre-filter, x A's."
    )
    flags.DEFINE_integer("latency_runs", 3, "Timed LiteRT runs per searched config.")
    flags.DEFINE_integer("timing_runs", 10, "Interleaved rounds of the final timing.")
    flags.DEFINE_integer("seed", 0, "Seed of training, task split and evolution.")
    flags.DEFINE_string("work_dir", "outputs/search_budgets", "Supernet, logs, cache.")
    flags.DEFINE_string("output_dir", "benchmarks/results", "Where results go.")


def trained_supernet(task, method, budget: Budget, steps: int, batch_size: int, path):
    """The supernet after `steps` of the method's search phase, saved at `path`.

    The search itself is left to the caller (only `SampleConfigs` runs).
    """
    if os.path.exists(path):
        return keras.models.load_model(path)
    setup = methods.Setup(
        budget, mode=task.mode, ndf=train.DEFAULTS["ndf"], seed=FLAGS.seed
    )
    student = pipeline.build(method, task.teacher, setup)
    trainer = method.search_trainer(student, task.teacher, setup, steps)
    sampler = method.search_callbacks(student, setup, steps)[0]
    trainer.fit(
        task.dataset(batch_size, FLAGS.seed),
        epochs=1,
        steps_per_epoch=steps,
        callbacks=[sampler],
        verbose=2,
    )
    student.generator.save(path)
    return student.generator


def _method(**options) -> methods.Method:
    base = {
        "population": FLAGS.population,
        "generations": FLAGS.generations,
        "latency_runs": FLAGS.latency_runs,
        "refit": "none",
    }
    return methods.get("gan_compression", {**base, **options})


def _winner(result: tgc.search.SearchResult) -> dict:
    best = result.best
    return {"config": best.config, "macs": best.macs, "score": best.score}


def run_benchmark() -> dict:
    """Trains (or loads) the supernet, runs both searches, times the winners."""
    os.makedirs(FLAGS.work_dir, exist_ok=True)
    keras.utils.set_random_seed(FLAGS.seed)
    task = tasks.vintage_task(VIEWS, seed=FLAGS.seed)
    budget = Budget.resolve(task.teacher, FLAGS.macs_ratio, None, SHAPE)
    method = _method()
    started = time.perf_counter()
    net = trained_supernet(
        task,
        method,
        budget,
        FLAGS.steps,
        FLAGS.batch_size,
        FLAGS.supernet or os.path.join(FLAGS.work_dir, "supernet.keras"),
    )
    seconds = {"supernet": time.perf_counter() - started}
    inputs, targets = task.validation
    cache = method.latency_cache(net, SHAPE, FLAGS.work_dir)
    search = functools.partial(
        _search, net, inputs, targets, cache=cache, seed=FLAGS.seed
    )

    started = time.perf_counter()
    by_macs = search(method, budget.macs, "macs_search")
    winner_a = _winner(by_macs)
    winner_a["latency_ms"] = cache(winner_a["config"])
    seconds["macs_search"] = time.perf_counter() - started

    started = time.perf_counter()
    low, high = (float(v) for v in FLAGS.macs_window)
    latency_method = _method(
        max_latency_ms=winner_a["latency_ms"],
        population=FLAGS.latency_population,
        generations=FLAGS.latency_generations,
    )
    by_latency = search(
        latency_method,
        round(high * winner_a["macs"]),
        "latency_search",
        min_macs=low * winner_a["macs"],
    )
    winner_b = _winner(by_latency)
    winner_b["latency_ms"] = by_latency.best.latency_ms
    seconds["latency_search"] = time.perf_counter() - started

    started = time.perf_counter()
    timing = _time_interleaved(task.teacher, net, winner_a, winner_b)
    seconds["timing"] = time.perf_counter() - started
    teacher_macs = tgc.profile(task.teacher, SHAPE).macs
    for name, winner in (("macs_winner", winner_a), ("latency_winner", winner_b)):
        winner["latency_ms_interleaved"] = timing.results[name].median_ms
        winner["speedup_vs_teacher"] = timing.speedup[name]
        winner["macs_ratio"] = teacher_macs / winner["macs"]
    return {
        "command": "python -m benchmarks.search_budgets " + " ".join(sys.argv[1:]),
        "settings": {
            "supernet": FLAGS.supernet,
            "steps": None if FLAGS.supernet else FLAGS.steps,
            "batch_size": FLAGS.batch_size,
            "crop_size": VIEWS.crop_size,
            "seed": FLAGS.seed,
            "macs_budget": budget.macs,
            "macs_ratio": FLAGS.macs_ratio,
            "population": FLAGS.population,
            "generations": FLAGS.generations,
            "latency_population": FLAGS.latency_population,
            "latency_generations": FLAGS.latency_generations,
            "budget_floor": method.options.budget_floor,
            "macs_window": [low, high],
            "latency_runs": FLAGS.latency_runs,
            "timing_runs": FLAGS.timing_runs,
            "validation_views": len(inputs),
            "input_shape": list(SHAPE),
            "threads": 2,
        },
        "macs_winner": winner_a,
        "latency_winner": winner_b,
        "teacher_ms_interleaved": timing.results["teacher"].median_ms,
        "latency_measurements": cache.measurements,
        "seconds": seconds,
        "timing": timing.to_dict(),
        "searches": {
            "macs": by_macs.to_dict(),
            "latency": by_latency.to_dict(),
        },
    }


def _search(net, inputs, targets, method, max_macs, name, *, cache, seed, **floors):
    """One search of `net`, logged to `<work_dir>/<name>.json`.

    `floors` override the method's `budget_floors` (the latency search's
    MACs pre-filter).
    """
    print(
        f"{name}: within {max_macs / 1e9:.3f} G MACs, max_latency_ms="
        f"{method.options.max_latency_ms}, floors {floors or 'default'}",
        flush=True,
    )
    return method.search_supernet(
        net,
        inputs,
        targets,
        max_macs,
        SHAPE,
        output=os.path.join(FLAGS.work_dir, name),
        latency=cache,
        seed=seed,
        floors=floors,
    )


def _time_interleaved(teacher, net, winner_a: dict, winner_b: dict):
    """The teacher and both winners exported and timed A B A B ... ."""
    models = {
        "teacher": teacher,
        "macs_winner": supernet.extract(net, winner_a["config"]),
        "latency_winner": supernet.extract(net, winner_b["config"]),
    }
    with tempfile.TemporaryDirectory() as directory:
        return tgc.latency.compare_latency(
            models,
            input_shape=SHAPE,
            num_threads=2,
            runs=FLAGS.timing_runs,
            output_dir=directory,
        )


def _table(results: dict) -> list[str]:
    lines = [
        "| search | config | G MACs | MACs ratio | searched ms | interleaved ms "
        "| speed-up vs teacher | validation PSNR dB |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for label, key in (
        ("MACs budget", "macs_winner"),
        ("latency budget", "latency_winner"),
    ):
        w = results[key]
        lines.append(
            f"| {label} | `{w['config']}` | {w['macs'] / 1e9:.3f} | "
            f"{w['macs_ratio']:.1f} | {w['latency_ms']:.1f} | "
            f"{w['latency_ms_interleaved']:.1f} | {w['speedup_vs_teacher']:.2f} | "
            f"{w['score']:.3f} |"
        )
    return lines


def _plot(results: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for name, colour in (("macs", "tab:blue"), ("latency", "tab:orange")):
        log = results["searches"][name]
        rows = [c for c in log["candidates"] if c["score"] is not None]
        best = results[f"{name}_winner"]
        for axis, key, scale in ((axes[0], "macs", 1e9), (axes[1], "latency_ms", 1)):
            timed = [c for c in rows if c[key] is not None]
            axis.scatter(
                [c[key] / scale for c in timed],
                [c["score"] for c in timed],
                s=12,
                alpha=0.5,
                color=colour,
                label=f"{name}-budget candidates",
            )
            axis.scatter(
                [best[key] / scale],
                [best["score"]],
                s=120,
                marker="*",
                color=colour,
                edgecolor="black",
                label=f"{name} winner {best['config']}",
            )
    settings = results["settings"]
    axes[0].axvline(settings["macs_budget"] / 1e9, color="grey", linestyle="--")
    axes[1].axvline(results["macs_winner"]["latency_ms"], color="grey", linestyle="--")
    axes[0].set_xlabel("G MACs")
    axes[1].set_xlabel("fp32 LiteRT ms (searched)")
    for axis in axes:
        axis.set_ylabel("validation PSNR dB (supernet)")
        axis.legend(fontsize=7)
    figure.suptitle("GAN Compression search: MACs budget vs measured-latency budget")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def _trained(settings: dict) -> str:
    if settings["supernet"]:
        return f"`{settings['supernet']}`"
    return (
        f"vintage teacher cut to half its widths, {settings['steps']} steps, "
        f"batch {settings['batch_size']}, {settings['crop_size']}-px views, "
        f"seed {settings['seed']}"
    )


def _save(results: dict) -> None:
    os.makedirs(FLAGS.output_dir, exist_ok=True)
    prefix = os.path.join(FLAGS.output_dir, "search_budgets")
    with open(f"{prefix}.json", "w", encoding="utf-8") as file:
        json.dump(results, file, indent=1, allow_nan=False)
    s = results["settings"]
    lines = [
        "# Search under a MACs budget vs a measured-latency budget",
        "",
        f"Command: `{results['command']}`",
        "",
        f"One supernet ({_trained(s)}); evolution {s['population']} x "
        f"{s['generations']} (MACs), {s['latency_population']} x "
        f"{s['latency_generations']} (latency: every drawn config is timed); "
        f"scored on {s['validation_views']} validation views of training photos. "
        f"MACs budget {s['macs_budget'] / 1e9:.3f} G (1/{s['macs_ratio']:g} of "
        f"the teacher), floor {s['budget_floor']:g}; latency budget = the MACs "
        f"winner's measured latency, floor {s['budget_floor']:g}, MACs "
        f"pre-filter {s['macs_window'][0]:g}-{s['macs_window'][1]:g}x its MACs. "
        f"fp32 LiteRT, 2 threads, 256x256; 'interleaved ms': both winners and "
        f"the teacher ({results['teacher_ms_interleaved']:.1f} ms) timed A B A B "
        f"over {s['timing_runs']} rounds.",
        "",
        *_table(results),
        "",
        f"{results['latency_measurements']} configurations exported and timed; "
        + ", ".join(f"{k} {v:.0f} s" for k, v in results["seconds"].items())
        + ".",
        "",
    ]
    with open(f"{prefix}.md", "w", encoding="utf-8") as file:
        file.write("\n".join(lines))
    _plot(results, f"{prefix}.png")
    print("\n".join(lines), flush=True)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    if len(FLAGS.macs_window) != 2:
        raise app.UsageError(f"--macs_window is two numbers, got {FLAGS.macs_window}.")
    _save(run_benchmark())


if __name__ == "__main__":
    define_flags()
    app.run(main)
