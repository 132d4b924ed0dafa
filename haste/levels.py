"""Run-time compression levels.

A level names a number of LSH hyperplanes L: fewer hyperplanes give fewer buckets, more merging, fewer
FLOPs and a larger accuracy cost. ``off`` runs the original convolution bit-exactly.

The level is held in a :mod:`contextvars` variable, never on the model, so two threads (or two asyncio
tasks) running the same model object at different levels each get their own result::

    with haste.compression("high"):
        y = model(x)
    with haste.compression(hyperplanes=12):
        y = model(x)
"""

from __future__ import annotations

import contextlib
import contextvars
import numbers
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from types import MappingProxyType

#: Hyperplanes a layer samples by default (``convert``'s ``max_hyperplanes``); a level uses the first L of them.
MAX_HYPERPLANES = 24

#: Largest ``max_hyperplanes`` a layer may sample (the codes are 64-bit integers).
HYPERPLANES_LIMIT = 62

#: Data-free default levels: name -> number of hyperplanes (0 = dense), the strictest uniform setting that
#: met the 0.5 / 1.0 / 2.0-point budgets on all three reference models (README, Results). Reference models carry
#: calibrated per-layer tables in their model card, which take precedence (see haste.zoo).
LEVELS: Mapping[str, int] = MappingProxyType({"off": 0, "low": 16, "medium": 14, "high": 12})

#: Level used by converted layers when no ``compression`` context is active. Read-only information: it is
#: fixed at import (assigning ``haste.DEFAULT_LEVEL`` changes nothing); set the level with ``haste.compression``.
DEFAULT_LEVEL = "medium"


@dataclass(frozen=True)
class Setting:
    """What the current context asks for: a level name, or an explicit hyperplane count."""

    level: str | None = None
    hyperplanes: int | None = None

    def describe(self) -> str:
        return self.level if self.level is not None else f"hyperplanes={self.hyperplanes}"


_current: contextvars.ContextVar[Setting] = contextvars.ContextVar(
    "haste_compression", default=Setting(level=DEFAULT_LEVEL)
)


def check_level(level: str) -> str:
    """Return ``level`` if it names a level, else raise ValueError saying what is accepted."""
    if not isinstance(level, str) or level not in LEVELS:
        raise ValueError(f"level must be one of {', '.join(LEVELS)}; got {level!r}")
    return level


def check_hyperplanes(hyperplanes: int, maximum: int = HYPERPLANES_LIMIT) -> int:
    """Return ``hyperplanes`` if it is an int in 1..maximum, else raise ValueError. ``compression`` checks
    against the largest any layer may have (62); each layer checks against its own ``max_hyperplanes``."""
    if isinstance(hyperplanes, bool) or not isinstance(hyperplanes, int) or not 1 <= hyperplanes <= maximum:
        raise ValueError(
            f"hyperplanes must be an integer from 1 to {maximum} (use level 'off' for the dense conv); "
            f"got {hyperplanes!r}"
        )
    return hyperplanes


def setting_for(level: str | None = None, *, hyperplanes: int | None = None) -> Setting:
    """Validate a level name or a hyperplane count (exactly one) and return the Setting."""
    if (level is None) == (hyperplanes is None):
        raise ValueError("give exactly one of level (off, low, medium, high) or hyperplanes=N")
    if level is not None:
        return Setting(level=check_level(level))
    return Setting(hyperplanes=check_hyperplanes(hyperplanes))


@contextlib.contextmanager
def compression(level: str | None = None, *, hyperplanes: int | None = None) -> Iterator[Setting]:
    """Run the forward passes inside the block at ``level`` or with ``hyperplanes`` hyperplanes.

    Args:
        level: one of ``haste.LEVELS`` (off, low, medium, high).
        hyperplanes: an explicit number of hyperplanes for every converted layer: 1..62 here, and at most
            each layer's ``max_hyperplanes`` (24 by default; a layer with fewer raises ValueError when it runs).

    The setting is local to the current thread / asyncio task (a contextvar): ``asyncio.to_thread`` and
    new tasks carry it, ``loop.run_in_executor`` and plain ``threading.Thread`` do not (enter the block in
    the function they run).
    """
    setting = setting_for(level, hyperplanes=hyperplanes)
    token = _current.set(setting)
    try:
        yield setting
    finally:
        _current.reset(token)


def current() -> Setting:
    """The Setting active in this context."""
    return _current.get()


def resolve_table(levels: Mapping[str, object] | None, layer: str, maximum: int = MAX_HYPERPLANES) -> dict[str, int]:
    """Resolve a level table for one layer whose ``max_hyperplanes`` is ``maximum``.

    ``levels`` maps level names to either an int (every layer) or a mapping layer name -> int with an
    optional ``"default"`` entry (a per-layer schedule; 0 for a layer runs it dense at that level).
    Missing names fall back to ``LEVELS``. Every value must be an integer (not a bool), 0 or 1..maximum
    (ValueError otherwise, also for a default of ``LEVELS`` above ``maximum``).
    """
    if levels is not None and not isinstance(levels, Mapping):
        raise ValueError(
            "levels must be a mapping of level names (low, medium, high) to hyperplanes or to {layer: hyperplanes, "
            f"'default': hyperplanes}}; got {type(levels).__name__} {levels!r}"
        )
    table = dict(LEVELS)
    given = set()
    for name, value in (levels or {}).items():
        check_level(name)
        where = f"levels[{name!r}]"
        if isinstance(value, Mapping):
            where += f"[{layer!r}]" if layer in value else "['default']" if "default" in value else ""
            value = value.get(layer, value.get("default", LEVELS[name]))
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise ValueError(f"{where} must be an integer (hyperplanes, 0 = dense); got {value!r}")
        value = int(value)
        if name == "off":
            if value != 0:
                raise ValueError("level 'off' always means 0 hyperplanes (the dense conv)")
            continue
        # 0 in a schedule: this layer runs dense at this level (where merging does not pay)
        table[name] = value
        given.add(name)
    for name, value in table.items():
        if not 0 <= value <= maximum:
            source = "levels" if name in given else "haste.LEVELS (the default table)"
            raise ValueError(
                f"level {name!r} of layer {layer or 'HasteConv2d'!r} asks for {value} hyperplanes ({source}) but the "
                f"layer samples max_hyperplanes={maximum}: levels must be 0 (dense) or from 1 to {maximum}; pass "
                "levels= with values in that range, or a larger max_hyperplanes"
            )
    return table
