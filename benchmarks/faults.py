"""Kill the main job at random moments, rerun it, and check nothing was lost.

    python -m benchmarks.faults [--runs=5 --seed=0 --output_dir=benchmarks/results]

Runs a small main job (`python -m training.train` with a small teacher,
a seeded ngf-16 two-block ResNet generator saved as `.keras`, on the
built-in photos at 48-pixel views, a few steps; `JOB_FLAGS`) first
uninterrupted, as the reference, recording when each phase starts. (The
vintage teacher's job costs ~8 minutes a run on a shared 2-core machine;
the phases and files are the same.) Then `--runs` runs, each
in a fresh output folder and a fresh view cache: each run is SIGKILLed
twice, in two of the phases `PHASES` (cache building, least-squares refit,
training, export, report), each time at a random moment of that phase
(uniform over the phase's duration in the reference run), and rerun after
each kill with the same command until it finishes. The pairs of phases
cycle so that over 5 runs every phase is hit twice. (When the job ends
before the chosen moment, it is started again and the kill retried, up to
`MAX_TRIES` times.)

A run is recovered when its last rerun exits 0 and:

- its report says the fine-tuning ended at its last step (the trainer's
  step counter, `trained_steps`), as the reference's does;
- every output file is complete: `student.keras` loads, the three
  `.tflite` files load in LiteRT, `samples.png` decodes, `report.json`
  and `run.json` parse;
- every entry of its view cache decodes as a PNG of the view size
  (temporary `.partial` files a kill leaves are counted, never read);
- its student's held-out PSNR equals the reference's within 0.1 dB (the
  resumed training sees the batches the uninterrupted one saw).

Finally a rerun into the first run's folder with other settings (more
steps) must be refused, naming the difference and `--overwrite`.

Writes `faults.json`, `faults.md` and `faults.png` (each run's attempts on
a time line, kills marked by phase) to `--output_dir` after every run;
prints the table.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
from absl import app, flags

FLAGS = flags.FLAGS

PHASES = ("cache", "refit", "training", "export", "report")
# The console line that starts each phase (and "done": the job's last line).
MARKERS = {
    "cache": ": computing ",
    "refit": "refitting to the teacher",
    "training": "matching the teacher's outputs",
    "export": "[3/3] shipping",
    "report": "timing teacher",
}
# Two phases killed per run; five runs hit every phase twice.
KILL_PAIRS = (
    ("cache", "refit"),
    ("cache", "training"),
    ("refit", "export"),
    ("training", "report"),
    ("export", "report"),
)
JOB_FLAGS = (
    "--photo_size=64",
    "--crop_size=48",
    "--crops_per_photo=1",
    "--eval_size=64",
    "--reference_photos=8",
    "--validation_photos=4",
    "--steps=8",
    "--steps_per_epoch=2",
    "--match_steps=4",
    "--batch_size=4",
    "--reconstruction_views=16",
    "--latency_runs=2",
    "--nojit_compile",
)
OUTPUT_FILES = (
    "student.keras",
    "student.tflite",
    "student_int8.tflite",
    "teacher.tflite",
    "samples.png",
    "report.json",
    "report.md",
    "run.json",
)
PSNR_TOLERANCE = 0.1
MAX_TRIES = 3
TIMEOUT = 1800


def define_flags() -> None:
    flags.DEFINE_integer("runs", 5, "Killed runs (two kills each).", lower_bound=5)
    flags.DEFINE_integer("seed", 0, "Seed of the kill moments.")
    flags.DEFINE_string(
        "work_dir", "/tmp/tfgancompress-faults", "Scratch folder (emptied first)."
    )
    flags.DEFINE_string("output_dir", "benchmarks/results", "Where results go.")


class Attempt:
    """One start of the job; its console lines, timed from its start."""

    def __init__(self, output_dir: Path, cache_dir: Path, teacher: Path, extra=()):
        environment = {
            **os.environ,
            "TFGANCOMPRESS_CACHE": str(cache_dir),
            "TF_NUM_INTEROP_THREADS": "1",
        }
        command = [
            sys.executable,
            "-m",
            "training.train",
            f"--output_dir={output_dir}",
            f"--teacher={teacher}",
            *JOB_FLAGS,
            *extra,
        ]
        self.start = time.monotonic()
        self.process = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=environment,
        )
        self.lines: queue.Queue = queue.Queue()
        self.log: list[tuple[float, str]] = []
        self.phases: dict[str, float] = {}
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self.lines.put((time.monotonic() - self.start, line.rstrip()))
        self.lines.put(None)

    def poll_lines(self, timeout: float) -> bool:
        """Reads console lines for up to `timeout` s; False once output ended."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                item = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                return True
            if item is None:
                return False
            self.log.append(item)
            seconds, line = item
            for phase, marker in MARKERS.items():
                if marker in line and phase not in self.phases:
                    self.phases[phase] = seconds

    def current_phase(self) -> str:
        return max(self.phases, key=self.phases.get) if self.phases else "startup"

    def finish(self) -> int:
        while self.poll_lines(1.0):
            if time.monotonic() - self.start > TIMEOUT:
                self.process.kill()
        return self.process.wait()

    def kill_during(self, phase: str, fraction: float, durations: dict) -> dict:
        """SIGKILLs the job `fraction` of the way through `phase`.

        Returns:
            What happened: the phase the job was in when killed, or
            `killed: False` if it ended first.
        """
        while phase not in self.phases:
            if not self.poll_lines(0.05):
                break
        if phase in self.phases:
            moment = self.phases[phase] + fraction * durations[phase]
            while time.monotonic() - self.start < moment:
                if not self.poll_lines(0.01):
                    break
        if self.process.poll() is not None:
            self.finish()
            return {"target": phase, "killed": False}
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()
        seconds = time.monotonic() - self.start
        while self.poll_lines(0.2):
            pass
        return {
            "target": phase,
            "killed": True,
            "phase": self.current_phase(),
            "at_seconds": round(seconds, 2),
        }

    def text(self) -> str:
        return "\n".join(line for _, line in self.log)


def _durations(attempt: Attempt, total: float) -> dict[str, float]:
    """Each phase's duration in the reference run (to the next phase's start)."""
    starts = sorted(attempt.phases.items(), key=lambda item: item[1])
    durations = {}
    for (phase, start), following in zip(
        starts, [*starts[1:], ("end", total)], strict=True
    ):
        durations[phase] = following[1] - start
    return durations


def _check_outputs(output_dir: Path) -> dict:
    import keras
    from ai_edge_litert.interpreter import Interpreter
    from PIL import Image

    import tfgancompress  # noqa: F401 - registers the layers student.keras uses

    bad = []
    for name in OUTPUT_FILES:
        path = output_dir / name
        try:
            if name.endswith(".keras"):
                keras.models.load_model(path)
            elif name.endswith(".tflite"):
                Interpreter(model_path=str(path)).allocate_tensors()
            elif name.endswith(".png"):
                with Image.open(path) as image:
                    image.load()
            elif name.endswith(".json"):
                json.loads(path.read_text())
            elif not path.read_text().strip():
                raise ValueError("empty")
        except Exception as error:  # noqa: BLE001 - any failure is a finding
            bad.append(f"{name}: {type(error).__name__}: {error}"[:200])
    return {"outputs_ok": not bad, "bad_outputs": bad}


def _check_cache(cache_dir: Path, size: int) -> dict:
    from PIL import Image

    entries, bad, partial = 0, [], 0
    for path in cache_dir.rglob("*"):
        if not path.is_file():
            continue
        if ".partial" in path.name:
            partial += 1
            continue
        if path.suffix != ".png":
            continue
        entries += 1
        try:
            with Image.open(path) as image:
                image.load()
                if min(image.size) < size:
                    raise ValueError(f"size {image.size}")
        except Exception as error:  # noqa: BLE001 - any failure is a finding
            bad.append(f"{path.name}: {error}"[:200])
    return {
        "cache_entries": entries,
        "cache_ok": entries > 0 and not bad,
        "bad_cache_entries": bad,
        "partial_files_left": partial,
    }


def _write_teacher(path: Path) -> None:
    """The job's teacher: a seeded ngf-16, two-block ResNet generator."""
    import keras

    import tfgancompress as tgc

    keras.utils.set_random_seed(0)
    tgc.models.resnet_generator(ngf=16, n_blocks=2).save(path)


def _report(output_dir: Path) -> dict:
    return json.loads((output_dir / "report.json").read_text())


def _plot(results: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from tfgancompress.atomic import atomic_path

    colours = dict(zip(PHASES, ("C0", "C1", "C2", "C3", "C4"), strict=True))
    runs = results["runs"]
    figure, axes = plt.subplots(figsize=(9, 1 + 0.6 * len(runs)))
    for row, run in enumerate(runs):
        offset = 0.0
        for attempt in run["attempts"]:
            seconds = attempt["seconds"]
            killed = attempt.get("kill", {}).get("killed")
            axes.barh(row, seconds, left=offset, color="0.85", edgecolor="0.4")
            if killed:
                phase = attempt["kill"]["phase"]
                axes.plot(offset + seconds, row, "X", ms=11, color=colours[phase])
            offset += seconds
        status = "recovered" if run["recovered"] else "NOT recovered"
        axes.text(offset + 2, row, status, va="center", fontsize=8)
    for phase, colour in colours.items():
        axes.plot([], [], "X", color=colour, label=f"killed in {phase}")
    axes.set_yticks(range(len(runs)), [f"run {r['run']}" for r in runs])
    axes.invert_yaxis()
    axes.set_xlabel("seconds (attempts back to back; X = SIGKILL)")
    axes.set_title(
        f"{results['kills']} kills, {results['recovered_runs']}/{len(runs)} runs "
        "recovered"
    )
    axes.legend(fontsize=7, loc="lower right")
    figure.tight_layout()
    with atomic_path(path) as temporary:
        figure.savefig(temporary, dpi=110)
    plt.close(figure)


def _table(results: dict) -> list[str]:
    lines = [
        "| run | kills (target -> phase at kill, s) | attempts | final step | "
        "outputs | cache entries | PSNR diff dB | recovered |",
        "|---:|---|---:|---:|---|---:|---:|---|",
    ]
    for run in results["runs"]:
        kills = "; ".join(
            f"{k['target']} -> {k['phase']} {k['at_seconds']:.1f}"
            if k["killed"]
            else f"{k['target']}: ended first"
            for k in run["kills"]
        )
        psnr = run.get("psnr_difference")
        lines.append(
            f"| {run['run']} | {kills} | {len(run['attempts'])} | "
            f"{run.get('final_step')}/{run.get('expected_step')} | "
            f"{'ok' if run.get('outputs_ok') else 'BAD'} | "
            f"{run.get('cache_entries')} | "
            f"{'-' if psnr is None else f'{psnr:+.3f}'} | "
            f"{'yes' if run['recovered'] else 'NO'} |"
        )
    return lines


def run_benchmark(runs: int, seed: int, work_dir: Path, save) -> dict:
    """Runs the benchmark; calls `save(results)` after every run."""
    rng = np.random.default_rng(seed)
    shutil.rmtree(work_dir, ignore_errors=True)
    work_dir.mkdir(parents=True)
    teacher = work_dir / "teacher.keras"
    _write_teacher(teacher)
    print("reference run (uninterrupted, empty cache)", flush=True)
    folder = work_dir / "reference"
    reference = Attempt(folder / "out", folder / "cache", teacher)
    if reference.finish():
        raise RuntimeError(f"The reference run failed:\n{reference.text()[-3000:]}")
    total = reference.log[-1][0]
    durations = _durations(reference, total)
    missing = sorted(set(PHASES) - set(durations))
    if missing:
        raise RuntimeError(f"The reference run printed no marker of {missing}.")
    expected = _report(work_dir / "reference" / "out")
    expected_psnr = expected["rows"]["student"]["psnr"]
    results = {
        "job_flags": list(JOB_FLAGS),
        "reference": {
            "seconds": round(total, 1),
            "phase_seconds": {k: round(v, 1) for k, v in durations.items()},
            "trained_steps": expected["trained_steps"],
            "psnr": expected_psnr,
        },
        "runs": [],
    }
    for index in range(runs):
        targets = KILL_PAIRS[index % len(KILL_PAIRS)]
        folder = work_dir / f"run{index}"
        output_dir, cache_dir = folder / "out", folder / "cache"
        run = {"run": index, "kills": [], "attempts": []}
        for target in targets:
            for _ in range(MAX_TRIES):  # a job that ends first is started again
                attempt = Attempt(output_dir, cache_dir, teacher)
                kill = attempt.kill_during(target, float(rng.uniform()), durations)
                run["kills"].append(kill)
                seconds = round(attempt.log[-1][0], 1) if attempt.log else 0.0
                run["attempts"].append({"seconds": seconds, "kill": kill})
                print(f"run {index}: {kill}", flush=True)
                if kill["killed"]:
                    break
        final = Attempt(output_dir, cache_dir, teacher)
        returncode = final.finish()
        run["attempts"].append({"seconds": round(final.log[-1][0], 1)})
        run["returncode"] = returncode
        run["resumed_lines"] = [
            line for _, line in final.log if "resuming from" in line
        ]
        if returncode == 0:
            report = _report(output_dir)
            run["final_step"] = report["trained_steps"].get("finetune")
            run["expected_step"] = report["phase_steps"]["finetune"]
            run["psnr"] = report["rows"]["student"]["psnr"]
            run["psnr_difference"] = run["psnr"] - expected_psnr
        else:
            run["log_tail"] = final.text()[-2000:]
        run.update(_check_outputs(output_dir))
        run.update(_check_cache(cache_dir, 48))
        run["recovered"] = bool(
            returncode == 0
            and run["final_step"] == run["expected_step"]
            and run["outputs_ok"]
            and run["cache_ok"]
            and abs(run["psnr_difference"]) <= PSNR_TOLERANCE
        )
        print(f"run {index}: recovered={run['recovered']}", flush=True)
        results["runs"].append(run)
        save(_summarise(results))

    print("rerun into run 0's folder with other settings (must be refused)")
    folder = work_dir / "run0"
    other = Attempt(folder / "out", folder / "cache", teacher, ["--steps=10"])
    refused = other.finish() != 0 and "--overwrite" in other.text()
    results["other_settings_refused"] = refused
    results["refusal"] = next(
        (line for _, line in other.log if "--overwrite" in line), other.text()[-500:]
    )
    return _summarise(results)


def _summarise(results: dict) -> dict:
    kills = [k for run in results["runs"] for k in run["kills"] if k["killed"]]
    results["kills"] = len(kills)
    results["kills_by_phase"] = {
        phase: sum(k["phase"] == phase for k in kills) for phase in PHASES
    }
    results["recovered_runs"] = sum(run["recovered"] for run in results["runs"])
    results["all_recovered"] = results["recovered_runs"] == len(results["runs"])
    results["psnr_tolerance_db"] = PSNR_TOLERANCE
    results.setdefault("other_settings_refused", None)
    results.setdefault("refusal", "")
    return results


def _save(results: dict) -> None:
    from tfgancompress import reports
    from tfgancompress.atomic import atomic_write

    os.makedirs(FLAGS.output_dir, exist_ok=True)
    reports.write_json(os.path.join(FLAGS.output_dir, "faults.json"), results)
    table = _table(results)
    by_phase = ", ".join(f"{k} {v}" for k, v in results["kills_by_phase"].items())
    refused = {
        True: "is refused",
        False: "was NOT refused",
        None: "(not checked yet)",
    }[results["other_settings_refused"]]
    markdown = [
        "# Kill and rerun: the main job survives SIGKILL",
        "",
        f"`python -m benchmarks.faults --runs={FLAGS.runs} --seed={FLAGS.seed}`; "
        f"job: `python -m training.train --teacher=teacher.keras "
        f"{' '.join(JOB_FLAGS)}` (ngf-16 two-block ResNet teacher, built-in "
        f"photos), uninterrupted in {results['reference']['seconds']:.0f} s.",
        "",
        f"{results['kills']} SIGKILLs ({by_phase}); "
        f"{results['recovered_runs']}/{len(results['runs'])} runs recovered "
        f"(final step, complete outputs, intact cache, held-out PSNR within "
        f"{PSNR_TOLERANCE} dB of the uninterrupted run). A rerun into a "
        f"folder of other settings {refused}: `{results['refusal']}`",
        "",
        *table,
        "",
    ]
    with atomic_write(os.path.join(FLAGS.output_dir, "faults.md")) as file:
        file.write("\n".join(markdown))
    _plot(results, os.path.join(FLAGS.output_dir, "faults.png"))
    print("\n".join(markdown), flush=True)


def main(argv):
    del argv
    _save(run_benchmark(FLAGS.runs, FLAGS.seed, Path(FLAGS.work_dir), _save))


if __name__ == "__main__":
    define_flags()
    app.run(main)
