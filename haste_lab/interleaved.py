"""Interleaved timing: every variant once per round, in a new random order each round, after warm-up rounds; and
the paired ratio of two variants timed so (the machine's drift over minutes cancels within a round)."""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import Callable, Hashable


def seconds(fn: Callable[[], object]) -> float:
    """Wall-clock seconds of one call of ``fn``."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def interleaved_times(
    variants: dict[Hashable, Callable[[], object]],
    *,
    rounds: int,
    warmup: int,
    rng: random.Random,
    timed: Callable[[Callable[[], object]], float] = seconds,
) -> dict[Hashable, list[float]]:
    """Seconds per call of each variant over ``rounds`` rounds (order drawn from ``rng``), after ``warmup`` rounds;
    ``timed(fn)`` times one call (e.g. bracketed by CUDA synchronisation)."""
    for _ in range(warmup):
        for fn in variants.values():
            fn()
    times = {k: [] for k in variants}
    for _ in range(rounds):
        for key in rng.sample(list(variants), len(variants)):
            times[key].append(timed(variants[key]))
    return times


def paired_ratio(times: list[float], base: list[float]) -> dict:
    """The median over rounds of ``times[r] / base[r]`` (two variants timed in the same rounds: a round's drift cancels)
    and a distribution-free 95% interval for it (the order statistics n/2 -/+ 0.98 sqrt(n) of the sorted ratios)."""
    ratios = sorted(t / b for t, b in zip(times, base, strict=True))
    n = len(ratios)
    half = 0.98 * n**0.5
    lo, hi = max(int(n / 2 - half), 0), min(int(n / 2 + half + 0.999), n - 1)
    return {"median": statistics.median(ratios), "ci95": [ratios[lo], ratios[hi]]}


def ratio_text(paired: dict) -> str:
    """A paired ratio (``paired_ratio``) as text: 'median [low, high]' (its 95% interval), three decimals."""
    return f"{paired['median']:.3f} [{paired['ci95'][0]:.3f}, {paired['ci95'][1]:.3f}]"
