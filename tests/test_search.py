"""Sub-network search: MACs and latency budgets, evolution, the latency cache."""

from __future__ import annotations

import functools
import hashlib
import json

import numpy as np
import pytest

import tfgancompress as tgc
from tfgancompress.models import supernet
from tfgancompress.models.supernet import ChannelConfig, ConfigSpace, ResnetFamily

SPACE = ConfigSpace.uniform([32, 24, 16])
MACS = functools.partial(supernet.config_macs, input_shape=(256, 256, 3))
BUDGET = 2.7e9


def _score(config: ChannelConfig) -> float:
    """A made-up quality: more channels help, with ups and downs."""
    widths = np.array(config.channels, dtype=float)
    return float(np.log(widths).sum() + 0.1 * np.sin(widths).sum())


class _KilledError(Exception):
    """Stands for the process being killed in the middle of a search."""


def _best_within(budget: float) -> tuple[str, float]:
    feasible = [c for c in SPACE.grid() if MACS(c) <= budget]
    best = max(feasible, key=_score)
    return str(best), len(feasible)


def test_brute_force_respects_the_macs_budget_and_finds_the_best(tmp_path):
    prefix = str(tmp_path / "grid")
    result = tgc.search.brute_force(
        SPACE, _score, MACS, max_macs=BUDGET, output=prefix, progress=False
    )
    best, feasible = _best_within(BUDGET)
    assert result.best.config == best
    assert len(result.candidates) == feasible
    assert result.rejected == len(SPACE) - feasible > 0
    assert all(c.macs <= BUDGET for c in result.candidates)
    with open(f"{prefix}.json", encoding="utf-8") as file:
        log = json.load(file)
    assert log["best"]["config"] == best
    assert {"config", "macs", "latency_ms", "score"} == set(log["candidates"][0])
    assert (tmp_path / "grid.png").stat().st_size > 1000

    # Killed after 30 scores, then resumed from its checkpoint.
    calls, limit = [], [30]

    def dying_score(config):
        if len(calls) == limit[0]:
            raise _KilledError
        calls.append(str(config))
        return _score(config)

    grid = list(SPACE.grid())[::40]
    run = functools.partial(
        tgc.search.brute_force,
        grid,
        dying_score,
        MACS,
        max_macs=BUDGET,
        progress=False,
        checkpoint_seconds=0.0,
    )
    with pytest.raises(_KilledError):
        run(output=str(tmp_path / "killed"))
    first = list(calls)
    calls.clear()
    limit[0] = None
    resumed = run(output=str(tmp_path / "killed"))
    assert len(first) == 30 and not set(first) & set(calls)
    assert len(first) + len(calls) == len(resumed.candidates)
    assert resumed.to_dict() == run(output=str(tmp_path / "whole")).to_dict()

    listed = tgc.search.brute_force(
        ["16_16_32_16_32_32_16_16", (32,) * 8], _score, MACS, mode="min", progress=False
    )
    assert listed.best.config == "16_16_32_16_32_32_16_16"
    with pytest.raises(ValueError, match="not reachable: the smallest configuration"):
        tgc.search.brute_force(SPACE, _score, MACS, max_macs=1e9, progress=False)


def _evolve(output=None, generations=6, **kwargs):
    calls = []

    def score(config):
        calls.append(str(config))
        return _score(config)

    result = tgc.search.evolution(
        SPACE,
        score,
        MACS,
        max_macs=BUDGET,
        population=12,
        generations=generations,
        mutate_prob=0.3,
        seed=7,
        output=output,
        progress=False,
        **kwargs,
    )
    return result, calls


def test_evolution_respects_the_budget_is_seeded_and_resumes(tmp_path):
    result, calls = _evolve()
    assert len(calls) == len(set(calls)) == len(result.candidates)
    assert all(c.macs <= BUDGET for c in result.candidates)
    scores = [c.score for c in result.history]
    assert len(scores) == 7 and scores == sorted(scores)
    assert result.best == max(result.candidates, key=lambda c: c.score)
    assert result.best.score > result.history[0].score
    assert _evolve()[0].to_dict() == result.to_dict()

    prefix = str(tmp_path / "evolution")
    _, first_calls = _evolve(output=prefix, generations=3)
    resumed, resumed_calls = _evolve(output=prefix, generations=6)
    assert resumed.to_dict() == result.to_dict()
    assert not set(first_calls) & set(resumed_calls)
    assert sorted(first_calls + resumed_calls) == sorted(calls)
    with open(f"{prefix}.json", encoding="utf-8") as file:
        assert json.load(file)["state"]["generation"] == 6

    with pytest.raises(ValueError, match="other settings"):
        _evolve(output=prefix, mode="min")
    with pytest.raises(ValueError, match="parent_ratio must be in"):
        _evolve(parent_ratio=1.5)


def _size_blind_score(config: ChannelConfig) -> float:
    """A quality that does not rank sizes, like a briefly trained supernet's."""
    digest = hashlib.sha1(str(config).encode()).hexdigest()
    return int(digest[:8], 16) / 2**32


def test_a_budget_floor_makes_the_search_land_near_the_budget():
    floor = 0.9 * BUDGET
    search = functools.partial(
        tgc.search.evolution,
        SPACE,
        _size_blind_score,
        MACS,
        max_macs=BUDGET,
        population=12,
        generations=4,
        seed=3,
        progress=False,
    )
    free = search()
    # Most feasible configurations are well under the budget: so are the
    # candidates of a search whose score ignores size.
    assert np.median([c.macs for c in free.candidates]) < floor
    floored = search(min_macs=floor)
    assert all(floor <= c.macs <= BUDGET for c in floored.candidates)
    assert floored.best.macs >= floor
    assert floored.settings["min_macs"] == floor

    grid = tgc.search.brute_force(
        SPACE, _size_blind_score, MACS, max_macs=BUDGET, min_macs=floor, progress=False
    )
    window = [c for c in SPACE.grid() if floor <= MACS(c) <= BUDGET]
    assert len(grid.candidates) == len(window) > 0
    with pytest.raises(ValueError, match="window is empty"):
        search(min_macs=2 * BUDGET)
    largest = MACS(SPACE.largest())
    with pytest.raises(ValueError, match="min_macs=.* not reachable: the largest"):
        search(max_macs=None, min_macs=largest + 1)


@pytest.fixture(scope="module")
def small_supernet():
    return supernet.super_generator(ngf=8, n_blocks=3, mobile=True)


def test_latency_budget_and_the_cache_hit_on_a_repeated_config(
    small_supernet, tmp_path, monkeypatch
):
    exports = []
    to_litert = tgc.export.to_litert

    def counting_to_litert(model, path, **kwargs):
        exports.append(model.name)
        return to_litert(model, path, **kwargs)

    monkeypatch.setattr(tgc.export, "to_litert", counting_to_litert)
    path = str(tmp_path / "latency.json")
    cache = tgc.search.LatencyCache.for_supernet(
        small_supernet, (32, 32, 3), path, runs=3, warmup=1
    )
    space = ConfigSpace(((8, 2), (8,), (8,), (8,), (8,), (8,), (8,), (8, 2)))
    latency = {str(c): cache(c) for c in space.grid()}
    assert len(exports) == cache.measurements == 4
    assert cache(space.largest()) == latency[str(space.largest())]
    assert len(exports) == 4 and cache.hits == 1

    # Half the configs fit, and the smallest always (timing noise aside).
    budget = max(np.median(list(latency.values())), latency[str(space.smallest())])
    macs = functools.partial(
        supernet.config_macs,
        input_shape=(32, 32, 3),
        family=ResnetFamily.of(small_supernet),
    )
    result = tgc.search.brute_force(
        space, _score, macs, latency=cache, max_latency_ms=budget, progress=False
    )
    assert len(exports) == 4
    assert result.candidates and all(
        c.latency_ms == latency[c.config] <= budget for c in result.candidates
    )
    assert result.rejected == sum(ms > budget for ms in latency.values())
    evolved = tgc.search.evolution(
        space,
        _score,
        macs,
        latency=cache,
        max_latency_ms=budget,
        population=3,
        generations=2,
        progress=False,
    )
    assert all(c.latency_ms <= budget for c in evolved.candidates)
    assert len(exports) == 4

    reloaded = tgc.search.LatencyCache.for_supernet(small_supernet, (32, 32, 3), path)
    assert reloaded(space.smallest()) == latency[str(space.smallest())]
    assert reloaded.hits == 1 and reloaded.measurements == 0 and len(exports) == 4
    with pytest.raises(ValueError, match="was measured with"):
        tgc.search.LatencyCache.for_supernet(small_supernet, (64, 64, 3), path)
    with pytest.raises(ValueError, match="not reachable: the smallest configuration"):
        tgc.search.brute_force(
            space, _score, macs, latency=cache, max_latency_ms=1e-6, progress=False
        )
    with pytest.raises(ValueError, match="needs latency="):
        tgc.search.brute_force(space, _score, macs, max_latency_ms=1.0)
