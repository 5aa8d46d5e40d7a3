"""Search a once-for-all supernet for its best sub-network under a budget.

GAN Compression's search phase: every candidate channel configuration
(`tgc.models.supernet.ChannelConfig`) that fits the budget is scored by a
function you give (the method scores the supernet, set to the candidate, on
a validation split of the *training* photos), and the best one wins.

- `brute_force` scores every configuration of a grid (a `ConfigSpace` or
  any list of configurations);
- `evolution` runs the paper's evolutionary search: a population of random
  feasible configurations, then per generation the best `parent_ratio` are
  kept, `mutation_ratio` of a new population are mutants of them (each
  number redrawn with `mutate_prob`) and the rest crossovers of two.

The budget is MACs (`max_macs`, counted in closed form by the `macs`
function you pass, e.g. `functools.partial(supernet.config_macs, ...)`),
measured LiteRT latency (`max_latency_ms` with a `LatencyCache`), or both.
A floor (`min_macs`, `min_latency_ms`) makes it a window: a search whose
scores barely depend on size (a briefly trained supernet) otherwise lands
wherever most of the feasible space is, well under the budget.
`LatencyCache` exports each configuration's plain sub-network, times it
in LiteRT and keeps the result in a JSON file keyed by configuration, so a
configuration is never exported twice, across runs too.

Both searches show progress, and with `output="<prefix>"` write the log
(`<prefix>.json`: every scored candidate with its config, MACs, latency and
score; the best; the best per generation) and a scatter plot
(`<prefix>.png`). `evolution` also checkpoints its state in that JSON after
every generation and resumes from it.

Example:

```python
import functools
import tfgancompress as tgc
from tfgancompress.models import supernet

net = supernet.super_generator(ngf=32)
space = supernet.ConfigSpace.uniform([32, 24, 16])
macs = functools.partial(supernet.config_macs, input_shape=(256, 256, 3))
result = tgc.search.evolution(
    space, score=my_validation_psnr, macs=macs, max_macs=2.7e9,
    population=20, generations=10, output="outputs/search")
print(result.best)
```
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence

import keras
import numpy as np

from tfgancompress import latency as latency_lib
from tfgancompress.models.supernet import (
    ChannelConfig,
    ConfigSpace,
    ResnetFamily,
    extract,
)

MODES = ("max", "min")


@dataclasses.dataclass
class Candidate:
    """One scored configuration.

    Attributes:
        config: The configuration string (`"16_16_32_16_32_32_16_16"`).
        macs: Its MACs.
        latency_ms: Its measured LiteRT latency (median), if measured.
        score: Its score (`None` until scored).
    """

    config: str
    macs: int
    latency_ms: float | None = None
    score: float | None = None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class SearchResult:
    """What a search found.

    Attributes:
        best: The best scored candidate within the budget (`None` if none).
        candidates: Every scored candidate, in the order they were scored.
        history: The best candidate after each generation (evolution only).
        rejected: How many configurations the budget rejected.
        settings: The search's settings (budgets, sizes, seed).
    """

    best: Candidate | None
    candidates: list[Candidate]
    history: list[Candidate] = dataclasses.field(default_factory=list)
    rejected: int = 0
    settings: dict = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict:
        """A strict-JSON-serializable dict."""
        return {
            "settings": self.settings,
            "best": self.best.to_dict() if self.best else None,
            "rejected": self.rejected,
            "history": [c.to_dict() for c in self.history],
            "candidates": [c.to_dict() for c in self.candidates],
        }

    def save(
        self, prefix: str, state: dict | None = None, plot: bool = True
    ) -> tuple[str, str]:
        """Writes `<prefix>.json` (the log) and `<prefix>.png` (the scatter).

        Args:
            prefix: Path without extension; its folder must exist.
            state: Extra resumable state stored under `"state"` in the JSON.
            plot: Whether to (re)draw the PNG.

        Returns:
            The JSON and PNG paths.
        """
        report = self.to_dict()
        if state is not None:
            report["state"] = state
        json_path, png_path = f"{prefix}.json", f"{prefix}.png"
        _write_json(json_path, report)
        if plot:
            plot_candidates(self, png_path)
        return json_path, png_path


def _write_json(path: str, data: dict) -> None:
    """Writes strict JSON atomically (a reader never sees half a file)."""
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"Folder {directory!r} of {path!r} does not exist.")
    handle, temporary = tempfile.mkstemp(dir=directory, suffix=".tmp")
    with os.fdopen(handle, "w", encoding="utf-8") as file:
        json.dump(data, file, indent=1, allow_nan=False)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(temporary, 0o666 & ~umask)
    os.replace(temporary, path)


def plot_candidates(result: SearchResult, path: str) -> None:
    """Scatter of score against MACs (and against latency, if measured).

    Args:
        result: A search result.
        path: PNG path.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scored = [c for c in result.candidates if c.score is not None]
    timed = [c for c in scored if c.latency_ms is not None]
    axes_data = [("MACs (G)", [c.macs / 1e9 for c in scored], scored)]
    if timed:
        axes_data.append(("LiteRT latency (ms)", [c.latency_ms for c in timed], timed))
    figure, axes = plt.subplots(
        1, len(axes_data), figsize=(5.5 * len(axes_data), 4.2), squeeze=False
    )
    for axis, (label, xs, rows) in zip(axes[0], axes_data, strict=True):
        axis.scatter(xs, [c.score for c in rows], s=12, alpha=0.6, label="candidates")
        if result.best is not None and result.best in rows:
            best_x = xs[rows.index(result.best)]
            axis.scatter(
                [best_x],
                [result.best.score],
                s=80,
                marker="*",
                color="red",
                label=f"best {result.best.config}",
            )
        unit = "macs" if label.startswith("MACs") else "latency_ms"
        scale = 1e9 if unit == "macs" else 1.0
        for bound, style in (("max", "--"), ("min", ":")):
            value = result.settings.get(f"{bound}_{unit}")
            if value is not None:
                axis.axvline(
                    value / scale, color="grey", linestyle=style, label=f"{bound}"
                )
        axis.set_xlabel(label)
        axis.set_ylabel("score")
        axis.legend(fontsize=7)
    figure.suptitle(f"{len(scored)} scored sub-networks")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


class LatencyCache:
    """Measured LiteRT latency of configurations, cached by configuration.

    Calling the cache with a configuration returns its median latency in
    milliseconds: from the cache if it was measured before (`hits` counts
    these), else by building the plain sub-network (`build(config)`),
    exporting it to LiteRT (fp32) and timing it with
    `tgc.latency.measure_latency` (`measurements` counts these). With a
    `path`, the cache is a JSON file, loaded on creation and rewritten after
    each measurement; it refuses a file measured with other settings.

    Args:
        build: `config -> keras.Model`, the plain sub-network of a
            configuration (e.g. `lambda c: supernet.extract(net, c)`).
        input_shape: `(height, width, channels)` to export and time at.
        path: JSON file of the cache; `None` keeps it in memory.
        num_threads: LiteRT CPU threads.
        runs: Timed runs per configuration (median taken).
        warmup: Untimed runs first.
        tag: Names what `build` builds (e.g. the supernet's family); part of
            the settings a cache file must match.

    Raises:
        ValueError: If `path` holds a cache measured with other settings.

    Example:

    >>> cache = LatencyCache.for_supernet(net, (256, 256, 3), "lat.json")
    >>> cache("16_16_32_16_32_32_16_16")
    41.3
    """

    def __init__(
        self,
        build: Callable[[ChannelConfig], keras.Model],
        input_shape: Sequence[int],
        path: str | None = None,
        num_threads: int = 2,
        runs: int = 10,
        warmup: int = 2,
        tag: str = "",
    ):
        self.build = build
        self.input_shape = tuple(int(d) for d in input_shape)
        self.path = path
        self.num_threads = int(num_threads)
        self.runs = int(runs)
        self.warmup = int(warmup)
        self.settings = {
            "input_shape": list(self.input_shape),
            "num_threads": self.num_threads,
            "tag": tag,
        }
        self.latency_ms: dict[str, float] = {}
        self.hits = 0
        self.measurements = 0
        if path is not None and os.path.exists(path):
            self._load(path)

    @classmethod
    def for_supernet(
        cls,
        supernet: keras.Model,
        input_shape: Sequence[int],
        path: str | None = None,
        **kwargs,
    ) -> LatencyCache:
        """A cache that times `extract(supernet, config)`."""
        tag = f"{ResnetFamily.of(supernet)}"
        return cls(
            lambda config: extract(supernet, config),
            input_shape,
            path=path,
            tag=tag,
            **kwargs,
        )

    def _load(self, path: str) -> None:
        try:
            with open(path, encoding="utf-8") as file:
                data = json.load(file)
            settings, entries = data["settings"], data["latency_ms"]
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise ValueError(
                f"{path!r} is not a latency cache (JSON with 'settings' and "
                f"'latency_ms'): {error}"
            ) from error
        if settings != self.settings:
            raise ValueError(
                f"Latency cache {path!r} was measured with {settings}, not "
                f"{self.settings}: use another path."
            )
        self.latency_ms = {str(k): float(v) for k, v in entries.items()}

    def __contains__(self, config) -> bool:
        return str(ChannelConfig.of(config)) in self.latency_ms

    def __call__(self, config) -> float:
        key = str(ChannelConfig.of(config))
        if key in self.latency_ms:
            self.hits += 1
            return self.latency_ms[key]
        model = self.build(ChannelConfig.parse(key))
        with tempfile.TemporaryDirectory() as directory:
            result = latency_lib.measure_latency(
                model,
                input_shape=self.input_shape,
                num_threads=self.num_threads,
                runs=self.runs,
                warmup=self.warmup,
                profile_ops=False,
                name=f"config_{key}",
                output_dir=directory,
            )
        self.measurements += 1
        self.latency_ms[key] = float(result.median_ms)
        if self.path is not None:
            _write_json(
                self.path, {"settings": self.settings, "latency_ms": self.latency_ms}
            )
        return self.latency_ms[key]


class _Evaluator:
    """Budget checks and scoring with per-configuration caches."""

    def __init__(
        self,
        score,
        macs,
        max_macs,
        latency,
        max_latency_ms,
        mode,
        min_macs=None,
        min_latency_ms=None,
    ):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}.")
        if (max_latency_ms is not None or min_latency_ms is not None) and (
            latency is None
        ):
            raise ValueError(
                "max_latency_ms or min_latency_ms needs latency= (e.g. a "
                "tgc.search.LatencyCache)."
            )
        for low, high, name in (
            (min_macs, max_macs, "macs"),
            (min_latency_ms, max_latency_ms, "latency_ms"),
        ):
            if low is not None and high is not None and low > high:
                raise ValueError(
                    f"min_{name}={low} is above max_{name}={high}: the budget "
                    "window is empty."
                )
        self.score_fn, self.macs_fn, self.latency_fn = score, macs, latency
        self.max_macs, self.max_latency_ms, self.mode = max_macs, max_latency_ms, mode
        self.min_macs, self.min_latency_ms = min_macs, min_latency_ms
        self.scored: dict[str, Candidate] = {}
        self.rejected: set[str] = set()

    def candidate(self, config) -> Candidate:
        key = str(ChannelConfig.of(config))
        if key in self.scored:
            return self.scored[key]
        return Candidate(key, int(self.macs_fn(ChannelConfig.parse(key))))

    def feasible(self, config) -> bool:
        """Whether a configuration is within the budget window (MACs, then latency)."""
        key = str(ChannelConfig.of(config))
        if key in self.scored:
            return True
        if key in self.rejected:
            return False
        fits = _within(self.candidate(key).macs, self.min_macs, self.max_macs)
        if fits and (self.max_latency_ms, self.min_latency_ms) != (None, None):
            measured = self.latency_fn(ChannelConfig.parse(key))
            fits = _within(measured, self.min_latency_ms, self.max_latency_ms)
        if not fits:
            self.rejected.add(key)
        return fits

    def score(self, config) -> Candidate:
        """Scores a feasible configuration once; later calls reuse the result."""
        key = str(ChannelConfig.of(config))
        if key not in self.scored:
            candidate = self.candidate(key)
            config = ChannelConfig.parse(key)
            if self.latency_fn is not None:
                candidate.latency_ms = float(self.latency_fn(config))
            value = float(self.score_fn(config))
            if not math.isfinite(value):
                raise ValueError(f"score({key}) returned {value}: expected a number.")
            candidate.score = value
            self.scored[key] = candidate
        return self.scored[key]

    def better(self, a: Candidate, b: Candidate | None) -> bool:
        if b is None:
            return True
        return a.score > b.score if self.mode == "max" else a.score < b.score

    def ranked(self, candidates: Iterable[Candidate]) -> list[Candidate]:
        return sorted(candidates, key=lambda c: c.score, reverse=self.mode == "max")

    def check_reachable(self, space: ConfigSpace) -> None:
        """Raises a specific error if the smallest configuration is too big, or
        the largest too small for the floors."""
        smallest, largest = space.smallest(), space.largest()
        macs = int(self.macs_fn(smallest))
        if self.max_macs is not None and macs > self.max_macs:
            raise ValueError(
                f"max_macs={self.max_macs:.4g} is not reachable: the smallest "
                f"configuration {smallest} has {macs:,} MACs."
            )
        macs = int(self.macs_fn(largest))
        if self.min_macs is not None and macs < self.min_macs:
            raise ValueError(
                f"min_macs={self.min_macs:.4g} is not reachable: the largest "
                f"configuration {largest} has {macs:,} MACs."
            )
        if self.max_latency_ms is not None:
            measured = self.latency_fn(smallest)
            if measured > self.max_latency_ms:
                raise ValueError(
                    f"max_latency_ms={self.max_latency_ms} is not reachable: the "
                    f"smallest configuration {smallest} measures {measured:.2f} ms."
                )
        if self.min_latency_ms is not None:
            measured = self.latency_fn(largest)
            if measured < self.min_latency_ms:
                raise ValueError(
                    f"min_latency_ms={self.min_latency_ms} is not reachable: the "
                    f"largest configuration {largest} measures {measured:.2f} ms."
                )

    def settings(self, **extra) -> dict:
        return {
            "mode": self.mode,
            "max_macs": self.max_macs,
            "max_latency_ms": self.max_latency_ms,
            "min_macs": self.min_macs,
            "min_latency_ms": self.min_latency_ms,
            **extra,
        }


def _within(value: float, low: float | None, high: float | None) -> bool:
    return (low is None or value >= low) and (high is None or value <= high)


def brute_force(
    configs: ConfigSpace | Iterable,
    score: Callable[[ChannelConfig], float],
    macs: Callable[[ChannelConfig], int],
    max_macs: float | None = None,
    latency: Callable[[ChannelConfig], float] | None = None,
    max_latency_ms: float | None = None,
    mode: str = "max",
    output: str | None = None,
    resume: bool = True,
    progress: bool = True,
    checkpoint_seconds: float = 60.0,
    min_macs: float | None = None,
    min_latency_ms: float | None = None,
) -> SearchResult:
    """Scores every configuration of a grid that fits the budget.

    Args:
        configs: A `ConfigSpace` (its whole grid) or configurations
            (`ChannelConfig`s, strings or 8-int sequences).
        score: `config -> float`, the quality of a configuration's sub-net.
        macs: `config -> int`, its MACs (e.g. a partial of
            `supernet.config_macs`).
        max_macs: MACs budget, or `None`.
        latency: `config -> ms` (a `LatencyCache`); with it every scored
            candidate's latency is logged, budget or not.
        max_latency_ms: Latency budget, or `None` (needs `latency`).
        mode: `"max"` if a higher score is better, `"min"` if lower is.
        output: Path prefix of the log (`.json`, also the checkpoint) and
            scatter (`.png`).
        resume: Continue from `<output>.json` if it holds this search.
        progress: Show a progress bar.
        checkpoint_seconds: Least time between two checkpoints.
        min_macs: Floor of the MACs budget window, or `None`.
        min_latency_ms: Floor of the latency budget window, or `None`
            (needs `latency`).

    Returns:
        A `SearchResult`.

    Raises:
        ValueError: On a bad `mode`, `max_latency_ms` without `latency`, a
            budget no configuration of a `ConfigSpace` can meet, or a
            checkpoint of another search.
    """
    evaluator = _Evaluator(
        score, macs, max_macs, latency, max_latency_ms, mode, min_macs, min_latency_ms
    )
    if isinstance(configs, ConfigSpace):
        evaluator.check_reachable(configs)
        configs = list(configs.grid())
    else:
        configs = [ChannelConfig.of(c) for c in configs]
    digest = hashlib.sha1(" ".join(map(str, configs)).encode()).hexdigest()[:16]
    settings = evaluator.settings(
        search="brute_force", grid=f"{len(configs)} configs, sha1 {digest}"
    )
    saved = _load_state(output, settings) if resume else None
    start = 0
    if saved is not None:
        for entry in saved["candidates"]:
            evaluator.scored[entry["config"]] = Candidate(**entry)
        evaluator.rejected = set(saved["state"]["rejected"])
        start = saved["state"]["next"]
    bar = (
        keras.utils.Progbar(
            len(configs), unit_name="config", stateful_metrics=["scored"]
        )
        if progress
        else None
    )

    def save(next_index: int) -> SearchResult:
        scored = list(evaluator.scored.values())
        result = SearchResult(
            evaluator.ranked(scored)[0] if scored else None,
            scored,
            rejected=len(evaluator.rejected),
            settings=settings,
        )
        if output is not None:
            state = {"next": next_index, "rejected": sorted(evaluator.rejected)}
            result.save(output, state=state, plot=next_index == len(configs))
        return result

    last_save = time.monotonic()
    for index in range(start, len(configs)):
        if evaluator.feasible(configs[index]):
            evaluator.score(configs[index])
        if time.monotonic() - last_save > checkpoint_seconds:
            save(index + 1)
            last_save = time.monotonic()
        if bar is not None:
            bar.update(index + 1, [("scored", len(evaluator.scored))])
    return save(len(configs))


def _draw_feasible(evaluator: _Evaluator, draw, max_tries: int, what: str):
    for _ in range(max_tries):
        config = draw()
        if evaluator.feasible(config):
            return config
    raise ValueError(
        f"No {what} within the budget after {max_tries} tries (max_macs="
        f"{evaluator.max_macs}, max_latency_ms={evaluator.max_latency_ms}, "
        f"min_macs={evaluator.min_macs}, min_latency_ms="
        f"{evaluator.min_latency_ms}); loosen the budget or the config space."
    )


def _offspring(
    evaluator: _Evaluator,
    space: ConfigSpace,
    parents: list[Candidate],
    population: int,
    num_mutants: int,
    mutate_prob: float,
    rng: np.random.Generator,
    max_tries: int,
) -> list[ChannelConfig]:
    """A new population: mutants of random parents, then crossovers of two."""

    def parent() -> str:
        return parents[rng.integers(len(parents))].config

    def mutant():
        return space.mutate(parent(), mutate_prob, rng)

    def crossover():
        return space.crossover(parent(), parent(), rng)

    mutants = [
        _draw_feasible(evaluator, mutant, max_tries, "mutant")
        for _ in range(num_mutants)
    ]
    return mutants + [
        _draw_feasible(evaluator, crossover, max_tries, "crossover")
        for _ in range(population - num_mutants)
    ]


def _load_state(output: str | None, settings: dict) -> dict | None:
    path = None if output is None else f"{output}.json"
    if path is None or not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as file:
        saved = json.load(file)

    def resumable(values: dict | None) -> dict | None:
        # More generations continue the same search.
        return values and {k: v for k, v in values.items() if k != "generations"}

    if resumable(saved.get("settings")) != resumable(settings) or "state" not in saved:
        raise ValueError(
            f"{path!r} holds a search with other settings ({saved.get('settings')}); "
            "remove it, pass another output, or resume=False."
        )
    return saved


def evolution(
    space: ConfigSpace,
    score: Callable[[ChannelConfig], float],
    macs: Callable[[ChannelConfig], int],
    max_macs: float | None = None,
    latency: Callable[[ChannelConfig], float] | None = None,
    max_latency_ms: float | None = None,
    population: int = 100,
    generations: int = 500,
    mutation_ratio: float = 0.5,
    parent_ratio: float = 0.25,
    mutate_prob: float = 0.2,
    seed: int = 0,
    mode: str = "max",
    output: str | None = None,
    resume: bool = True,
    progress: bool = True,
    max_tries: int = 1000,
    min_macs: float | None = None,
    min_latency_ms: float | None = None,
) -> SearchResult:
    """GAN Compression's evolutionary search under a MACs and/or latency budget.

    Defaults are the paper's (population 100, 500 generations, mutation
    ratio 0.5, parent ratio 0.25, mutate probability 0.2; it used 0.2-0.4).
    Each configuration is scored once (a score cache), and only
    configurations within the budget enter the population.

    Args:
        space: The configurations to search.
        score: `config -> float`, the quality of a configuration's sub-net.
        macs: `config -> int`, its MACs.
        max_macs: MACs budget, or `None`.
        latency: `config -> ms` (a `LatencyCache`); with it every scored
            candidate's latency is logged, budget or not.
        max_latency_ms: Latency budget, or `None` (needs `latency`).
        population: Population size.
        generations: Number of generations after the initial population.
        mutation_ratio: Share of each new population made by mutation (the
            rest by crossover).
        parent_ratio: Share of the population kept as parents.
        mutate_prob: Chance that a mutation redraws each number.
        seed: Seed of the search's random choices.
        mode: `"max"` if a higher score is better, `"min"` if lower is.
        output: Path prefix of the log (`.json`, also the checkpoint) and
            scatter (`.png`), written after every generation.
        resume: Continue from `<output>.json` if it holds this search.
        progress: Show a progress bar.
        max_tries: Draws allowed to find one configuration within budget.
        min_macs: Floor of the MACs budget window, or `None`: without one,
            the random initial population sits wherever most of the space
            is (at 1/20 of a ResNet's MACs, the median feasible config uses
            85% of the budget) and only a score that grows with size moves
            it up.
        min_latency_ms: Floor of the latency budget window, or `None`
            (needs `latency`).

    Returns:
        A `SearchResult` whose `history` has the best candidate after the
        initial population and after each generation.

    Raises:
        ValueError: On bad sizes or ratios, a budget the smallest
            configuration misses, or a checkpoint of another search.
    """
    if population < 2 or generations < 0:
        raise ValueError(
            f"Need population >= 2 and generations >= 0, got {population}, "
            f"{generations}."
        )
    for name, value in (
        ("mutation_ratio", mutation_ratio),
        ("parent_ratio", parent_ratio),
        ("mutate_prob", mutate_prob),
    ):
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {value}.")
    evaluator = _Evaluator(
        score, macs, max_macs, latency, max_latency_ms, mode, min_macs, min_latency_ms
    )
    settings = evaluator.settings(
        search="evolution",
        space=[list(values) for values in space.choices],
        population=population,
        generations=generations,
        mutation_ratio=mutation_ratio,
        parent_ratio=parent_ratio,
        mutate_prob=mutate_prob,
        seed=seed,
    )
    num_parents = max(1, round(parent_ratio * population))
    num_mutants = round(mutation_ratio * population)
    rng = np.random.default_rng(seed)
    saved = _load_state(output, settings) if resume else None
    if saved is not None:
        for entry in saved["candidates"]:
            evaluator.scored[entry["config"]] = Candidate(**entry)
        history = [Candidate(**entry) for entry in saved["history"]]
        members = [evaluator.scored[key] for key in saved["state"]["population"]]
        evaluator.rejected = set(saved["state"]["rejected"])
        rng.bit_generator.state = saved["state"]["rng"]
        start = saved["state"]["generation"]
    else:
        evaluator.check_reachable(space)
        members = [
            evaluator.score(
                _draw_feasible(
                    evaluator, lambda: space.random(rng), max_tries, "random config"
                )
            )
            for _ in range(population)
        ]
        history = [evaluator.ranked(members)[0]]
        start = 0
    bar = (
        keras.utils.Progbar(
            generations, unit_name="generation", stateful_metrics=["best", "scored"]
        )
        if progress
        else None
    )

    def save(generation: int, members: list[Candidate]) -> SearchResult:
        """Checkpoints after a generation; draws the scatter after the last."""
        result = SearchResult(
            history[-1],
            list(evaluator.scored.values()),
            history=list(history),
            rejected=len(evaluator.rejected),
            settings=settings,
        )
        if output is not None:
            state = {
                "generation": generation,
                "population": [c.config for c in members],
                "rejected": sorted(evaluator.rejected),
                "rng": rng.bit_generator.state,
            }
            result.save(output, state=state, plot=generation == generations)
        return result

    result = save(start, members)
    for generation in range(start, generations):
        parents = evaluator.ranked(members)[:num_parents]
        children = _offspring(
            evaluator,
            space,
            parents,
            population,
            num_mutants,
            mutate_prob,
            rng,
            max_tries,
        )
        members = parents + [evaluator.score(child) for child in children]
        best = evaluator.ranked(members)[0]
        history.append(best if evaluator.better(best, history[-1]) else history[-1])
        result = save(generation + 1, members)
        if bar is not None:
            bar.update(
                generation + 1,
                [("best", history[-1].score), ("scored", len(evaluator.scored))],
            )
    return result
