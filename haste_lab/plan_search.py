"""``haste calibrate-plans``: for every level and batch size, the fastest measured plan within the level's budget.

A calibrated level (``haste calibrate``) is a per-layer table chosen for accuracy and FLOPs. Whether each
stage of the network (layer1, layer2, ... : the first part of a conv's name) gains time from it depends on the
batch size and the engine. For each batch size the service forms and each level, the candidates are the
level's table restricted to every subset of its stages (the other stages dense), and the plans the lower levels
chose at that batch size (a lower level's table is within a smaller budget, hence within this one), and, for every
level given (``--table-levels``), the ``extra`` tables (``--table 14:layer4=8``: hyperplanes and a per-stage schedule,
as ``haste sweep`` takes them) with their stage subsets: tables chosen for time rather than FLOPs, e.g. a stage
whose kernel time falls fast with fewer hyperplanes (its budget is checked by measurement, as for any candidate;
every candidate more is one more chance that a calibration drop reads low by luck, so a level gets only the tables
meant for it: given to every level, 77 candidates made level low's batch-1 plan a table that read 0.18 points on the
calibration split and 0.85 on the test split, over its 0.5 budget). Each runs as
the service runs a batch: the empty subset, every layer dense, is the converted model at level off; the others
run with their FLOPs counted (``haste.profile``). Every model, the dense reference included, has its BatchNorms fused
into their convs first (``haste_lab.baseline``; ``--no-fuse-batchnorm`` keeps them), as the service holds it: level off
is then the dense model a deployment would run without HASTE, and a plan must beat that.

All candidates of a batch size are timed on real images for at least ``screen_seconds``, interleaved in a new
random order each round, and ranked by their paired ratio to level off (the median over rounds of the ratio of
their times in the same round: the machine's drift over minutes cancels). The plan is the fastest candidate
within the budget, and among candidates within ``tie`` of it the one saving the most FLOPs, provided that it
beats the baseline (the fastest of level off and the lower levels' plans) by ``min_gain``. It is then timed
again against the baseline alone, warm, for at least ``confirm_seconds``, and taken only if it is faster with
95% confidence (the paired ratio's interval below 1); else the next of the tied candidates is tried, then the
baseline runs: a plan must buy measurable time, and no level is slower than the one below it. A plan of several
stages is then pruned (``prune_stages``): each stage is timed against the plan without it, the two alone, and runs
dense unless the plan with it is faster with 95% confidence and by half of ``min_gain``, so that no stage spends
accuracy for no measurable time (the tie rule above prefers the most FLOPs saved, and a screen of dozens of
candidates at a few rounds each ranks a stage that buys nothing fast by chance: fmnist-resnet34's batch-1 `high`
plan of 8d4dfba ran layers 1-4, which read 0.976 of off where layer4 alone read 0.940 at less than its drop).

Running only some stages of a table merges less, so a candidate's accuracy drop is measured, not assumed: every
chosen table is evaluated on the calibration split (its drop plus ``margin_z`` standard errors must stay within
the budget, else the next fastest candidate is taken) and reported on the test split.

    haste calibrate-plans --model fmnist-resnet34 --batch 1 2 3 4 5 6 7 8 16 32 --threads 2 \\
        --table 16:layer4=8 14:layer4=9 --table-levels high --out results/plans-fmnist-resnet34 \\
        --write-card

The plans go into the model card (``"haste": {"plans": {engine: {level: [{"batch", "levels", "measured"}]}}}``)
and ``haste.convert`` runs them (``haste.plans``).
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import platform
import random
import statistics
import time
from pathlib import Path

import torch

from haste import engine, zoo
from haste.cli import non_negative_float, positive_int
from haste.convert import convert
from haste.plans import table_value
from haste.profile import profile
from haste.trace import trace

from . import baseline
from .baseline import prepared
from .calibrate import BUDGETS, MARGIN_Z
from .evaluate import command_line, dense_copy, load_data, predict
from .interleaved import interleaved_times, paired_ratio, ratio_text
from .layer_times import forward_at
from .layout import add_argument as layout_argument
from .layout import in_layout
from .sweep import parse_schedule, schedule_table

#: Every batch size the service forms with its default HASTE_MAX_BATCH_SIZE (8), then 16 and 32. A batch runs the
#: plan of the largest size searched at or below it, and a plan searched at 4 alone can be slower than off at 5 or
#: 6, the sizes the service forms under a load of 8 concurrent clients (batches of 2-3 and 5-6 in turn).
BATCHES = (1, 2, 3, 4, 5, 6, 7, 8, 16, 32)


def stage_of(conv_name: str) -> str:
    """The stage a conv belongs to: the first part of its name (``layer2`` for ``layer2.0.conv1``)."""
    return conv_name.split(".")[0]


def restricted(table: dict[str, int], stages: frozenset[str]) -> dict[str, int]:
    """``table`` (conv name -> hyperplanes) with the convs outside ``stages`` dense."""
    return {name: value if stage_of(name) in stages else 0 for name, value in table.items()}


def full_table(model: torch.nn.Module, level: str) -> dict[str, int]:
    """conv name -> hyperplanes of every HASTE layer of the converted ``model`` at ``level``."""
    from haste.module import HasteConv2d

    return {m.name: m.levels[level] for m in model.modules() if isinstance(m, HasteConv2d)}


def plan_entry(report: dict, level: str, batch: int) -> dict | None:
    """The CPU plan entry of ``level`` that a ``calibrate-plans`` report chose at ``batch`` (one of its batch sizes;
    ``{"batch", "levels", "measured"}``), or None."""
    return next((e for e in report["plans"]["cpu"][level] if f"batch {batch}" in e["measured"]), None)


def _parse_table(text: str) -> tuple[int, str]:
    """``HYPERPLANES[:SCHEDULE]`` -> (hyperplanes, schedule); ValueError saying what is accepted."""
    hyperplanes, _, schedule = text.partition(":")
    if not hyperplanes.strip().isdigit() or int(hyperplanes) < 1:
        raise ValueError(
            "a candidate table is HYPERPLANES[:SCHEDULE], e.g. 14 or 14:layer4=8 (a positive number of hyperplanes, "
            f"then the per-layer schedule as haste sweep --schedule takes it); got {text!r}"
        )
    parse_schedule(schedule)
    return int(hyperplanes), schedule


def extra_table(names: list[str], text: str) -> dict[str, int]:
    """conv name -> hyperplanes over the HASTE layers ``names`` for ``text``, ``HYPERPLANES[:SCHEDULE]`` (``14``,
    ``14:layer4=8``, ``12:layer2.0.conv1=0,layer4=-4``). ValueError if it is malformed or a pattern of its
    schedule matches none of ``names``."""
    table = schedule_table(names, *_parse_table(text))
    return {n: table_value(table, n) if isinstance(table, dict) else table for n in names}


def table_argument(text: str) -> str:
    """argparse type of a ``--table`` value: checked by ``_parse_table``, kept as text (its patterns are checked
    against the model's layers when it is converted)."""
    try:
        _parse_table(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _key(table: dict[str, int]) -> tuple:
    return tuple(sorted((k, v) for k, v in table.items() if v))


def time_candidates(variants: dict, *, rounds: int, warmup: int, min_seconds: float = 0.0) -> dict[object, list[float]]:
    """Seconds of each variant (key -> function of no argument) per round, interleaved in a new random order every
    round (``haste_lab.interleaved``), under inference mode: ``rounds`` rounds, and more when they are short, so
    that the timed rounds last about ``min_seconds``."""
    rng = random.Random(0)
    with torch.inference_mode():
        times = interleaved_times(variants, rounds=rounds, warmup=warmup, rng=rng)
        spent = sum(sum(v) for v in times.values())
        more = math.ceil((min_seconds - spent) / (spent / rounds)) if spent < min_seconds else 0
        if more:
            for key, extra in interleaved_times(variants, rounds=more, warmup=0, rng=rng).items():
                times[key] += extra
    return times


def confirm(run_two, *, rounds: int, seconds_each: float, min_seconds: float) -> dict:
    """The paired ratio (``haste_lab.interleaved.paired_ratio``) of a candidate to its baseline in a run of the two
    alone: ``run_two(rounds)`` times them (-> (candidate times, baseline times)) over at least ``rounds`` rounds, and
    more when one round (``seconds_each``, both forwards) is short, so that the run lasts ``min_seconds``."""
    rounds = max(rounds, math.ceil(min_seconds / max(seconds_each, 1e-6)))
    times, base = run_two(rounds)
    return {**paired_ratio(times, base), "rounds": rounds}


def confirmed(paired: dict, min_gain: float) -> bool:
    """Whether a confirmation run (``confirm``) shows the candidate faster than its baseline: the 95% interval of
    the paired ratio below 1, and its median at most ``1 - min_gain / 2``."""
    return paired["ci95"][1] < 1.0 and paired["median"] <= 1.0 - min_gain / 2


def plan_stages(key: tuple) -> list[str]:
    """The stages (``stage_of``) that run HASTE in the plan ``key`` (sorted (conv, hyperplanes) pairs), sorted."""
    return sorted({stage_of(n) for n, _ in key})


def without_stage(key: tuple, stage: str) -> tuple:
    """The plan ``key`` (sorted (conv, hyperplanes) pairs) with every conv of ``stage`` dense."""
    return tuple(kv for kv in key if stage_of(kv[0]) != stage)


def prune_stages(key: tuple, compare, allowed, *, min_gain: float, order=None, log=print) -> tuple[tuple, list[dict]]:
    """Run dense, one at a time, the stages of plan ``key`` that buy no measurable time. For each stage and the
    plan without it (in the order of ``order(smaller)``, ascending: e.g. the smaller plans' screen ratios, so that
    the likeliest to go are asked first), ``allowed(smaller)`` says whether the smaller plan may be taken at all
    (within the budget, not a lower level's plan) and ``compare(key, smaller)`` gives the paired ratio of the plan
    to the smaller one in a run of the two alone (``confirm``); a stage goes unless the plan is ``confirmed``
    faster by ``min_gain``, as a plan must be against its baseline, and the search starts over on the smaller plan.
    Returns the plan kept and, per stage run dense, its measurement.

    Without this step, a plan of several stages is taken whole when it beats its baseline: the stages that
    merge for no time (whose kernels run no faster than the dense convs) spend accuracy for nothing; a stage
    among several ranks fast or slow by the noise of a screen where dozens of candidates are timed a few rounds each.
    """
    pruned: list[dict] = []
    while True:
        stages = plan_stages(key)
        if len(stages) < 2:
            return key, pruned
        smallers = [(stage, without_stage(key, stage)) for stage in stages]
        if order is not None:
            smallers.sort(key=lambda pair: order(pair[1]))
        for stage, smaller in smallers:
            if not allowed(smaller):
                continue
            paired = compare(key, smaller)
            log(f"    with {stage} / without: {ratio_text(paired)} over {paired['rounds']} rounds")
            if not confirmed(paired, min_gain):
                pruned.append({"stage": stage, **paired})
                key = smaller
                break
        else:
            return key, pruned


def calibrate_plans(
    model_name: str,
    *,
    batches=BATCHES,
    levels=("low", "medium", "high"),
    extra=(),
    extra_levels=None,
    budgets: dict[str, float] = BUDGETS,
    margin_z: float = MARGIN_Z,
    rounds: int = 9,
    warmup: int = 2,
    tie: float = 0.01,
    min_gain: float = 0.01,
    screen_seconds: float = 60.0,
    confirm_seconds: float = 10.0,
    max_confirms: int = 3,
    prune: bool = True,
    test_limit: int | None = 2000,
    batch_size: int = 250,
    out: str | Path | None = None,
    write_card: bool = False,
    command: str = "",
    layout: str = "channels_last",
    fuse_batchnorm: bool = True,
    graph_mode: bool = True,
    log=print,
) -> dict:
    """Choose the plans of ``model_name`` (its card's calibrated levels) for the CPU engine, its models timed in
    ``layout`` (``haste_lab.layout``; the service's default is channels-last); see the module docstring. Returns
    the report written to ``out`` (.json). ``extra``: more candidate tables (``extra_table``) for the
    ``extra_levels`` (default: every level). ``fuse_batchnorm``: every model, the dense reference included, has its
    BatchNorms fused (``haste_lab.baseline``), as the service holds it. ``graph_mode``: every candidate, the dense
    reference included, is timed as a torch.jit trace (``haste.trace``, one per candidate and batch size), as the
    service runs its plans (``HASTE_GRAPH_MODE``); else eagerly."""
    if not engine.cpu_kernel_available():
        raise ValueError(f"calibrate-plans measures the fused CPU kernel, which is unavailable: {engine.unavailable}")
    dense = prepared(zoo.load(model_name), fuse_batchnorm)
    card = dense.haste_card
    reference = convert(dense_copy(dense), plans={})
    tables = {level: full_table(reference, level) for level in levels}
    extras = [extra_table(list(tables[levels[0]]), text) for text in extra]
    stages = sorted({stage_of(n) for t in [*tables.values(), *extras] for n, v in t.items() if v})
    subsets = [frozenset(s) for k in range(len(stages) + 1) for s in itertools.combinations(stages, k)]
    candidates: dict[str, dict[tuple, dict[str, int]]] = {}
    for level in levels:
        candidates[level] = {}
        for full in (tables[level], *(extras if extra_levels is None or level in extra_levels else ())):
            for subset in subsets:
                table = restricted(full, subset)
                candidates[level].setdefault(_key(table), table)
    models: dict[tuple, torch.nn.Module] = {(): reference}  # every layer dense: the converted model at off
    for by_key in candidates.values():
        for key, table in by_key.items():
            if key and key not in models:
                models[key] = convert(dense_copy(dense), plans={}, levels={"high": table})
    plain = in_layout(dense_copy(dense), layout)  # the model before conversion: the ratios' reference
    for candidate in models.values():
        in_layout(candidate, layout)
    log(f"{model_name}: {len(models)} distinct candidates over stages {', '.join(stages)}, {layout} layout")

    images, _ = _images(card, max(batches))
    calibration = load_data(card, split="calibration")
    test = load_data(card, split="test", limit=test_limit)
    dense_calibration, labels_calibration, _ = predict(dense, calibration, level="off", batch_size=batch_size)
    dense_test, labels_test, _ = predict(dense, test, level="off", batch_size=batch_size)
    measured: dict[tuple, dict] = {(): {"calibration_drop": 0.0, "calibration_margin": 0.0, "test_drop": 0.0,
                                        "saving": 0.0}}  # fmt: skip

    def accuracy(key: tuple) -> dict:
        """The candidate's drop on the calibration split, its margin and its FLOPs saving."""
        if key not in measured:
            preds, _, report = predict(models[key], calibration, level="high", batch_size=batch_size)
            disagree = float((preds != dense_calibration).double().mean())
            measured[key] = {
                "calibration_drop": 100
                * float(
                    (dense_calibration == labels_calibration).double().mean()
                    - (preds == labels_calibration).double().mean()
                ),
                "calibration_margin": margin_z * 100 * (disagree / len(preds)) ** 0.5,
                "saving": report.saving,
            }
        return measured[key]

    def reported(key: tuple) -> dict:
        """``accuracy`` and the drop on the test split, measured for chosen plans only (never used to choose)."""
        stats = accuracy(key)
        if "test_drop" not in stats:
            preds, _, _ = predict(models[key], test, level="high", batch_size=batch_size)
            stats["test_drop"] = 100 * float(
                (dense_test == labels_test).double().mean() - (preds == labels_test).double().mean()
            )
        return stats

    rows = []
    chosen: dict[str, dict[int, tuple]] = {level: {} for level in levels}

    traces: dict[tuple, object] = {}  # (candidate, batch size) -> its trace, in graph mode

    def forward(key, x):
        """One forward of candidate ``key`` as the service runs a batch (``ServedModel.run``): level off for the
        all-dense plan, else with its FLOPs counted (``haste.profile`` of the HASTE layers, ~2% of a forward at
        batch 1, or in graph mode the trace's own count), which a plan saving few FLOPs must also pay for."""
        model = models[key]
        if graph_mode:
            traced = traces.get((key, len(x)))
            if traced is None:
                traced = traces[key, len(x)] = trace(model, x, "high" if key else "off")
            return lambda: traced(x)
        if not key:
            return lambda: forward_at(model, x, "off")

        def served():
            with profile(model, dense_layers=False):
                forward_at(model, x, "high")

        return served

    for batch in batches:
        x = images[:batch]
        keys = [(), *dict.fromkeys(k for level in levels for k in candidates[level] if k)]
        start = time.time()
        traces.clear()  # the previous batch size's
        dense_model = trace(plain, x) if graph_mode else plain  # the model before conversion
        dense_run = lambda x=x, m=dense_model: m(x)  # noqa: E731
        times = time_candidates(
            {**{k: forward(k, x) for k in keys}, "dense": dense_run},
            rounds=rounds,
            warmup=warmup,
            min_seconds=screen_seconds,
        )
        rank = {k: paired_ratio(times[k], times[()])["median"] for k in keys}  # paired ratio to level off
        to_dense = {k: paired_ratio(times[k], times["dense"])["median"] for k in keys}
        below: list[tuple] = [()]
        for level in levels:
            pool = sorted(dict.fromkeys([*candidates[level], *below]), key=lambda k: rank[k])

            def within(k, level=level) -> bool:
                stats = accuracy(k)
                return stats["calibration_drop"] + stats["calibration_margin"] <= budgets[level]

            # the baseline: the fastest of level off and the lower levels' plans (no level slower than one below)
            baseline = min(below, key=lambda k: rank[k])

            def gains(k, baseline=baseline, times=times) -> bool:
                return paired_ratio(times[k], times[baseline])["median"] <= 1 - min_gain

            first = next(k for k in pool if within(k))  # level off, (), always is
            tied = [k for k in pool if rank[k] <= rank[first] * (1 + tie) and k not in below and gains(k) and within(k)]
            tied.sort(key=lambda k: -measured[k]["saving"])

            def pair(a, b, x=x, times=times) -> dict:
                """The paired ratio of plan a to plan b, the two timed alone (``confirm``)."""

                def run_two(count):
                    again = time_candidates({0: forward(a, x), 1: forward(b, x)}, rounds=count, warmup=1)
                    return again[0], again[1]

                seconds_each = statistics.median(times[a]) + statistics.median(times[b])
                return confirm(run_two, rounds=2 * rounds, seconds_each=seconds_each, min_seconds=confirm_seconds)

            def allowed(k, below=below, within=within) -> bool:
                return k in models and k not in below and within(k)  # a smaller plan of a candidate is one

            def screened(k, rank=rank) -> float:
                return rank.get(k, math.inf)  # the screen's ratio to off (a plan never screened: last)

            key, confirmation, pruned = baseline, None, []
            for candidate in tied[:max_confirms]:  # the fastest of many noisy medians is biased low: time it again
                paired = pair(candidate, baseline)
                log(f"  b={batch} {level}: stages {_stages(candidate)}: {ratio_text(paired)} of the baseline over "
                    f"{paired['rounds']} rounds of the two alone")  # fmt: skip
                if confirmed(paired, min_gain):
                    key, confirmation = candidate, paired
                    break
            if prune and confirmation is not None:
                smaller, pruned = prune_stages(key, pair, allowed, min_gain=min_gain, order=screened, log=log)
                if smaller != key:  # the smaller plan must still beat the baseline, else the whole one runs
                    again = pair(smaller, baseline)
                    log(f"  b={batch} {level}: stages {_stages(smaller)}: {ratio_text(again)} of the baseline")
                    if confirmed(again, min_gain):
                        key, confirmation = smaller, again
                    else:
                        pruned = []
            chosen[level][batch] = key
            below.append(key)
            stats = reported(key)
            row = {
                "batch": batch,
                "level": level,
                "stages": plan_stages(key),
                "ms": statistics.median(times[key]) * 1e3,
                "off_ms": statistics.median(times[()]) * 1e3,
                "dense_ms": statistics.median(times["dense"]) * 1e3,
                "rounds": len(times[()]),
                "off_ratio": rank[key],  # paired, to level off (what a plan with every layer dense runs)
                "latency_ratio": to_dense[key],  # paired, to the model before conversion
                "full_table_ratio": to_dense[_key(tables[level])],
                "confirmed": confirmation,  # the plan against the baseline, alone (None: the baseline runs)
                "pruned": pruned,  # stages run dense for buying no measurable time (prune_stages)
                **stats,
            }
            rows.append(row)
            log(
                f"  b={batch} {level}: stages {','.join(row['stages']) or 'none (level off)'}  "
                f"{row['latency_ratio']:.3f} of dense, {row['off_ratio']:.3f} of off (full table "
                f"{row['full_table_ratio']:.3f} of dense), saving {100 * stats['saving']:.1f}%, drop "
                f"{stats['calibration_drop']:.2f} calibration / {stats['test_drop']:.2f} test"
            )
        log(f"  batch {batch}: {len(keys)} candidates timed in {time.time() - start:.0f}s")

    names = list(tables[levels[0]])
    plans = {"cpu": {level: _entries(chosen[level], names, rows, level) for level in levels}}
    report = {
        "model": card.get("name", model_name),
        "engine": "cpu",
        "min_gain": min_gain,
        "machine": {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
                    "torch": torch.__version__, "vector_isa": _isa()},
        "protocol": f"models in the {layout} layout{', each timed as a torch.jit trace' if graph_mode else ''}; "
        f"{warmup} warm-up rounds, {rounds} timed rounds, candidates "
        "interleaved in a new random order each round, ranked by their paired ratio to level off (median over rounds); "
        f"a new plan must be {100 * min_gain:.0f}% faster than the baseline (the fastest of level off and the lower "
        f"levels' plans), then faster with 95% confidence in a run of the two alone (at least {2 * rounds} rounds and "
        f"{confirm_seconds:g} s), else the next of the tied candidates (at most {max_confirms}) is tried; ties within "
        f"{100 * tie:.0f}% go to the larger FLOPs saving"
        + (
            "; then each stage of a plan of several is timed against the plan without it, the two alone, and run "
            "dense unless the plan with it is faster with 95% confidence and by half the minimum gain (the smaller "
            "plan must still beat the baseline so, else the whole plan runs)"
            if prune
            else ""
        ),
        "layout": layout,
        "fuse_batchnorm": fuse_batchnorm,
        "graph_mode": graph_mode,
        "budgets_points": budgets,
        "margin_z": margin_z,
        "calibration_images": calibration.size,
        "test_images": test.size,
        "stages": stages,
        "extra_tables": {"tables": list(extra), "levels": list(extra_levels or levels)},
        "rows": rows,
        "plans": plans,
        "command": command,
    }  # fmt: skip
    if out:
        path = Path(out).with_suffix(".json")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report, indent=1) + "\n")
        log(f"wrote {path}")
    if write_card:
        card_path = zoo.paths(model_name)[1]
        stored = json.loads(card_path.read_text())
        stored["haste"]["plans"] = plans
        card_path.write_text(json.dumps(stored, indent=2) + "\n")
        log(f"wrote the plans into {card_path}")
    return report


def _entries(by_batch: dict[int, tuple], names: list[str], rows: list[dict], level: str) -> list[dict]:
    """Plan entries of one level: consecutive batch sizes with the same table merged into one entry."""
    entries: list[dict] = []
    for batch, key in sorted(by_batch.items()):
        table = {n: v for n, v in key}
        compact = _compact(table, names)
        row = next(r for r in rows if r["batch"] == batch and r["level"] == level)
        fields = ("latency_ratio", "off_ratio", "calibration_drop", "test_drop", "saving")
        measured = {k: round(row[k], 4) for k in fields}
        if entries and entries[-1]["levels"] == compact:
            entries[-1]["measured"][f"batch {batch}"] = measured
            continue
        entries.append({"batch": batch if entries else 1, "levels": compact, "measured": {f"batch {batch}": measured}})
    return entries


def _compact(table: dict[str, int], names: list[str]) -> dict[str, int]:
    """A per-layer table (over the HASTE layers ``names``) as a plan entry stores it: per stage when all its
    convs agree, per conv otherwise; every other layer dense (a plan's ``default`` is 0)."""
    out: dict[str, int] = {}
    for stage in dict.fromkeys(stage_of(n) for n in names):
        values = {table.get(n, 0) for n in names if stage_of(n) == stage}
        if values == {0}:
            continue
        if len(values) == 1:
            out[stage] = values.pop()
        else:
            out.update({n: table.get(n, 0) for n in names if stage_of(n) == stage and table.get(n, 0)})
    assert all(table_value(out, n) == table.get(n, 0) for n in names)
    return out


def _stages(key: tuple) -> str:
    return ",".join(plan_stages(key)) or "none"


def _images(card: dict, batch: int):
    from .bench import _real_images

    return _real_images(card, batch)


def _isa() -> str:
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    return "avx512" if "avx512f" in flags else "avx2" if "avx2" in flags else platform.machine()


def add_command(sub) -> None:
    """Register ``haste calibrate-plans``."""
    p = sub.add_parser(
        "calibrate-plans", help="per level and batch size, the fastest measured plan within the level's budget"
    )
    p.add_argument("--model", required=True, help="reference model with calibrated levels (haste calibrate)")
    p.add_argument(
        "--batch", type=positive_int, nargs="+", default=list(BATCHES), help="batch sizes (default 1-8, 16, 32)"
    )
    p.add_argument("--rounds", type=positive_int, default=9, help="timed rounds per batch size (default 9)")
    p.add_argument("--warmup", type=positive_int, default=2, help="untimed rounds first (default 2)")
    p.add_argument("--threads", type=positive_int, default=2, help="torch threads (default 2)")
    p.add_argument(
        "--margin", type=non_negative_float, default=MARGIN_Z, help=f"standard errors kept below budgets ({MARGIN_Z})"
    )
    p.add_argument(
        "--min-gain", type=non_negative_float, default=0.01,
        help="a plan must beat level off and the lower levels' plans by this fraction of their time (default 0.01)",
    )  # fmt: skip
    p.add_argument(
        "--screen-seconds", type=non_negative_float, default=60.0,
        help="time the candidates of a batch size for at least this long, in more rounds if needed (default 60)",
    )  # fmt: skip
    p.add_argument(
        "--confirm-seconds", type=non_negative_float, default=10.0,
        help="a chosen plan is timed again against its baseline, the two alone, for at least this long (default 10)",
    )  # fmt: skip
    p.add_argument(
        "--table", type=table_argument, nargs="+", default=[], metavar="HYPERPLANES[:SCHEDULE]",
        help="more candidate tables, with their stage subsets (e.g. 14:layer4=8); each is taken only within a "
        "level's budget, as measured",
    )  # fmt: skip
    p.add_argument(
        "--table-levels", nargs="+", choices=BUDGETS, default=None, metavar="LEVEL",
        help="the levels the --table candidates are for (default: every level; each candidate more is one more "
        "chance that a table's calibration drop reads low by luck, so give a level only the tables meant for it)",
    )  # fmt: skip
    p.add_argument(
        "--prune", action=argparse.BooleanOptionalAction, default=True,
        help="run dense each stage of a plan that the plan without it matches in a run of the two (default); "
        "--no-prune: take the confirmed plan whole",
    )  # fmt: skip
    p.add_argument("--test-limit", type=positive_int, default=2000, help="test images to report on (default 2000)")
    layout_argument(p)
    baseline.add_argument(p)
    p.add_argument(
        "--graph-mode", action=argparse.BooleanOptionalAction, default=True,
        help="time every candidate as a torch.jit trace (haste.trace), as the service runs its plans "
        "(HASTE_GRAPH_MODE; default); --no-graph-mode: eagerly, as haste.compression runs a level",
    )  # fmt: skip
    p.add_argument("--out", help="write the report to this path (.json)")
    p.add_argument("--write-card", action="store_true", help="store the plans in the model card")
    p.set_defaults(func=_run)


def _run(args) -> int:
    torch.set_num_threads(args.threads)
    calibrate_plans(
        args.model,
        batches=sorted(set(args.batch)),
        extra=args.table,
        extra_levels=args.table_levels,
        rounds=args.rounds,
        warmup=args.warmup,
        margin_z=args.margin,
        min_gain=args.min_gain,
        screen_seconds=args.screen_seconds,
        confirm_seconds=args.confirm_seconds,
        prune=args.prune,
        test_limit=args.test_limit,
        out=args.out,
        write_card=args.write_card,
        command=command_line(),
        layout=args.layout,
        fuse_batchnorm=args.fuse_batchnorm,
        graph_mode=args.graph_mode,
    )
    return 0
