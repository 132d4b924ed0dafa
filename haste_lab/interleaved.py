"""Interleaved timing: every variant once per round, in a new random order each round, after warm-up rounds."""

from __future__ import annotations

import random
import time
from collections.abc import Callable


def interleaved_times(
    variants: dict[str, Callable[[], object]], *, rounds: int, warmup: int, rng: random.Random
) -> dict[str, list[float]]:
    """Seconds per call of each variant over ``rounds`` rounds (order drawn from ``rng``), after ``warmup`` rounds."""
    for _ in range(warmup):
        for fn in variants.values():
            fn()
    times = {k: [] for k in variants}
    for _ in range(rounds):
        for key in rng.sample(list(variants), len(variants)):
            start = time.perf_counter()
            variants[key]()
            times[key].append(time.perf_counter() - start)
    return times
