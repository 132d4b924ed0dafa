"""Level plans: what a level runs at each batch size, chosen by measurement for one engine.

A level's table (``haste.levels``) says which hyperplanes each layer uses, whatever the batch. Whether merging
pays in time depends on the batch size and the engine, though: at batch 1 the fused CPU kernel beats the dense
conv in the early layers, at batch 32 the dense conv (whose weights every image of the batch shares) wins
almost everywhere. A plan refines a level per batch size: for each engine and level, a list of entries

    {"batch": 1, "levels": {"layer1": 10, "layer2": 12, "default": 0}},   # batches of 1
    {"batch": 4, "levels": {"layer1": 10, "default": 0}},                 # batches of 4 and more
    {"batch": 32, "levels": {"default": 0}},                              # 32 and more: dense

where ``levels`` is a per-layer table as in ``haste.levels.resolve_table`` (a conv's name, or a name prefix such
as ``layer1``, or ``default``; 0 = dense) and ``batch`` the smallest batch size the entry is for. Entries are
sorted by ``batch``, the first at 1. A batch of n images at a level runs the entry with the largest ``batch`` <= n;
without a plan for its engine and level, a layer uses its level table. ``haste calibrate-plans`` (haste_lab)
measures plans and writes them into the model card, from which ``haste.convert`` takes them.
"""

from __future__ import annotations

import bisect
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from .levels import LEVELS, check_level

#: Engines a plan may be measured for (``haste.engine.ENGINES``).
PLAN_ENGINES = ("cpu", "triton", "reference")


@dataclass(frozen=True)
class LayerPlan:
    """One layer's plan for one engine and level: entry i covers batch sizes ``batches[i]`` up to
    ``batches[i + 1] - 1`` with ``hyperplanes[i]`` (0 = dense)."""

    batches: tuple[int, ...]
    hyperplanes: tuple[int, ...]

    def at(self, batch: int) -> int:
        """Hyperplanes for a batch of ``batch`` images."""
        return self.hyperplanes[max(bisect.bisect_right(self.batches, batch) - 1, 0)]


def entry_batch(entries: Sequence[Mapping], batch: int) -> int:
    """The ``batch`` key of the entry that a batch of ``batch`` images runs (entries checked by ``check_plans``)."""
    starts = [entry["batch"] for entry in entries]
    return starts[max(bisect.bisect_right(starts, batch) - 1, 0)]


def plan_name(level: str, batch: int) -> str:
    """The name of a plan entry, as responses and metrics report it: ``high@4`` (level high, the entry for
    batches from 4)."""
    return f"{level}@{batch}"


def check_plans(plans: object) -> dict[str, dict[str, list[dict]]]:
    """Return ``plans`` (engine -> level -> entries) if it is well formed, else raise ValueError saying what is
    accepted. The layer names and hyperplane ranges are checked per layer by ``layer_plans``."""
    if not isinstance(plans, Mapping):
        raise ValueError(f"plans must map an engine ({', '.join(PLAN_ENGINES)}) to level plans; got {plans!r}")
    checked: dict[str, dict[str, list[dict]]] = {}
    for engine, by_level in plans.items():
        if engine not in PLAN_ENGINES:
            raise ValueError(f"plans: engine must be one of {', '.join(PLAN_ENGINES)}; got {engine!r}")
        if not isinstance(by_level, Mapping):
            raise ValueError(f"plans[{engine!r}] must map levels (low, medium, high) to lists of entries")
        checked[engine] = {}
        for level, entries in by_level.items():
            check_level(level)
            where = f"plans[{engine!r}][{level!r}]"
            if level == "off":
                raise ValueError(f"{where}: level 'off' is always the dense model and takes no plan")
            if not isinstance(entries, Sequence) or isinstance(entries, str) or not entries:
                raise ValueError(f"{where} must be a non-empty list of {{'batch': n, 'levels': table}} entries")
            previous = 0
            for i, entry in enumerate(entries):
                known = {"batch", "levels", "measured"}  # measured: what the plan search recorded (informative)
                if not isinstance(entry, Mapping) or set(entry) - known or "levels" not in entry:
                    raise ValueError(f"{where}[{i}] must be {{'batch': n, 'levels': table}}; got {entry!r}")
                batch = entry.get("batch")
                if isinstance(batch, bool) or not isinstance(batch, numbers.Integral) or batch <= previous:
                    raise ValueError(
                        f"{where}[{i}]['batch'] must be an integer above the previous entry's ({previous}); entries "
                        f"are sorted by the smallest batch size they are for, the first at 1; got {batch!r}"
                    )
                if i == 0 and batch != 1:
                    raise ValueError(f"{where}[0]['batch'] must be 1 (the first entry is for batches from 1)")
                if not isinstance(entry["levels"], Mapping):
                    raise ValueError(f"{where}[{i}]['levels'] must map layer names or 'default' to hyperplanes")
                previous = int(batch)
            checked[engine][level] = [dict(entry) for entry in entries]
    return checked


def table_value(table: Mapping[str, object], layer: str) -> object:
    """A per-layer table's value for ``layer``: its own name, else the longest dotted prefix of it present
    (``layer1.0`` before ``layer1``), else ``default``, else 0 (dense)."""
    parts = layer.split(".")
    for i in range(len(parts), 0, -1):
        key = ".".join(parts[:i])
        if key in table:
            return table[key]
    return table.get("default", 0)


def layer_plans(plans: Mapping[str, Mapping[str, list[dict]]], layer: str, maximum: int) -> dict:
    """The plans of one layer (engine -> level -> LayerPlan) whose ``max_hyperplanes`` is ``maximum``;
    ValueError for a value that is not an integer 0 (dense) or 1..maximum."""
    resolved: dict[str, dict[str, LayerPlan]] = {}
    for engine, by_level in plans.items():
        resolved[engine] = {}
        for level, entries in by_level.items():
            values = []
            for i, entry in enumerate(entries):
                value = table_value(entry["levels"], layer)
                if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not 0 <= value <= maximum:
                    raise ValueError(
                        f"plans[{engine!r}][{level!r}][{i}] gives layer {layer!r} {value!r} hyperplanes: it must be an "
                        f"integer, 0 (dense) or from 1 to the layer's max_hyperplanes={maximum}"
                    )
                values.append(int(value))
            resolved[engine][level] = LayerPlan(tuple(int(e["batch"]) for e in entries), tuple(values))
    return resolved


def check_plan_layers(plans: Mapping[str, Mapping[str, list[dict]]], conv_names: Sequence[str]) -> None:
    """ValueError if a table of ``plans`` names something that is neither a conv of the model (``conv_names``),
    a dotted prefix of one (``layer1``, ``layer1.0``) nor ``default``."""
    prefixes = {".".join(name.split(".")[:i]) for name in conv_names for i in range(1, name.count(".") + 2)}
    unknown = sorted(
        {
            f"{engine}/{level}: {key!r}"
            for engine, by_level in plans.items()
            for level, entries in by_level.items()
            for entry in entries
            for key in entry["levels"]
            if key != "default" and key not in prefixes
        }
    )
    if unknown:
        raise ValueError(
            f"plans name layers that are not convs (or prefixes of conv names) of the model: {', '.join(unknown)}"
        )


def describe(plans: Mapping[str, Mapping[str, list[dict]]] | None, engine: str, level: str, batch: int) -> str | None:
    """The plan entry a batch of ``batch`` images at ``level`` runs on ``engine`` (``plan_name``), or None when
    the level has no plan there (its level table runs)."""
    entries = ((plans or {}).get(engine) or {}).get(level)
    if not entries or level not in LEVELS or level == "off":
        return None
    return plan_name(level, entry_batch(entries, batch))


def runs_dense(plans: Mapping[str, Mapping[str, list[dict]]] | None, engine: str, level: str, batch: int) -> bool:
    """Whether a batch of ``batch`` images at ``level`` runs every layer dense on ``engine`` by its plan (an entry
    whose table has no layer above 0); False without a plan there (the level table decides)."""
    entries = ((plans or {}).get(engine) or {}).get(level)
    if not entries or level == "off":
        return level == "off"
    starts = [entry["batch"] for entry in entries]
    table = entries[max(bisect.bisect_right(starts, batch) - 1, 0)]["levels"]
    return not any(value for value in table.values())
