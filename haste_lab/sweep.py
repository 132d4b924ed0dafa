"""``haste sweep``: accuracy and FLOPs saving over a grid of HASTE settings, several hyperplane seeds.

    haste sweep --model fmnist-resnet34 --hyperplanes 4 6 8 10 12 --seeds 0 1 2 --out results/sweep-r34

Grid axes: hyperplanes, the conversion options that have a flag but the seed (``OPTION_AXES``: patch size,
sparsity, hash family, start layer, include_pointwise, merge; the seeds are the repeats, ``--seeds``) and
per-layer schedules (``--schedule "layer1=+2,layer4=-1"``: hyperplane offsets for the convs whose names match,
relative to the row's hyperplanes; a plain number sets the value, ``layer1=12``, and 0 runs the layer
dense; a pattern is a conv name, a name prefix such as ``layer1``, or a glob such as ``*.conv2``, and a
pattern that matches no conv is an error). Each point
converts a fresh copy of the dense model with one seed; dense predictions are computed once. Writes
``<out>.json`` (every run and the summary), ``<out>.csv`` (summary: mean and std over seeds) and
``<out>.png`` (accuracy vs saving).
The JSON is rewritten after every run, and runs already in it are skipped: an interrupted sweep resumes.
"""

from __future__ import annotations

import argparse
import fnmatch
import itertools
import json
import re
import statistics
import time
from collections import defaultdict
from pathlib import Path

import torch
from torch import nn

from haste import zoo
from haste.cli import FLAG_OPTIONS, add_option_arguments, hyperplane_count
from haste.convert import convert, layer_hint
from haste.levels import MAX_HYPERPLANES
from haste.options import Options, check_names

from .evaluate import (
    Data,
    add_data_arguments,
    command_line,
    dense_copy,
    load_data,
    predict,
    summarise,
)

#: The conversion options a sweep varies: those with a flag but the seed (each grid point runs every seed).
OPTION_AXES = tuple(option for option in FLAG_OPTIONS if option.name != "seed")
#: Grid axes besides hyperplanes and seed; a run is identified by these, the seed and the hyperplanes.
AXES = (*(option.name for option in OPTION_AXES), "schedule")
#: The conversion defaults (``haste.Options``).
DEFAULTS = Options().as_dict()


def with_defaults(row: dict) -> dict:
    """A row of a result file written before an option's axis existed (``merge``) ran that option's default."""
    for option in OPTION_AXES:
        row.setdefault(option.name, option.default)
    return row


def matching(rows: list[dict], **options) -> list[dict]:
    """The rows (read ``with_defaults``) that ran with these values of the given conversion options."""
    return [r for r in map(with_defaults, rows) if all(r.get(k) == v for k, v in options.items())]


def parse_schedule(text: str) -> dict[str, str]:
    """``"layer1=+2,layer4=-1"`` -> {"layer1": "+2", "layer4": "-1"}; "" -> {} (uniform)."""
    out = {}
    for part in filter(None, (p.strip() for p in (text or "").split(","))):
        key, sep, value = part.partition("=")
        if not sep or not key.strip() or not re.fullmatch(r"[+-]?\d+", value.strip()):
            raise ValueError(f"schedule entries are pattern=+N, pattern=-N or pattern=N; got {part!r}")
        out[key.strip()] = value.strip()
    return out


def schedule_argument(text: str) -> str:
    """argparse type of a ``--schedule`` value: checked by ``parse_schedule``, kept as text."""
    try:
        parse_schedule(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _matches(name: str, pattern: str) -> bool:
    return name == pattern or name.startswith(pattern + ".") or fnmatch.fnmatchcase(name, pattern)


def check_schedule(conv_names: list[str], schedule: str) -> dict[str, str]:
    """The entries of ``schedule`` (``parse_schedule``); raises ValueError, naming the model's layer groups,
    if a pattern matches none of ``conv_names``."""
    entries = parse_schedule(schedule)
    unmatched = [p for p in entries if not any(_matches(name, p) for name in conv_names)]
    if unmatched:
        raise ValueError(
            f"schedule pattern {', '.join(map(repr, unmatched))} matches no conv of the model; patterns are conv "
            f"names, name prefixes or globs: {layer_hint(conv_names)}"
        )
    return entries


def schedule_table(
    conv_names: list[str], hyperplanes: int, schedule: str, maximum: int = MAX_HYPERPLANES
) -> int | dict[str, int]:
    """The hyperplanes of a level for a schedule: ``hyperplanes`` if uniform, else {"default": ...,
    layer: ...} with every matching layer's offset applied (the last matching entry wins), clamped to
    1..maximum; ``pattern=0`` runs the matching layers dense. Raises ValueError if a pattern matches
    no conv (``check_schedule``)."""
    entries = check_schedule(conv_names, schedule)
    if not entries:
        return hyperplanes
    table: dict[str, int] = {"default": hyperplanes}
    for name in conv_names:
        for pattern, value in entries.items():
            if _matches(name, pattern):
                if value == "0":  # this layer dense
                    table[name] = 0
                    continue
                n = hyperplanes + int(value) if value[0] in "+-" else int(value)
                table[name] = min(max(n, 1), maximum)
    return table


def conv_names(model: nn.Module) -> list[str]:
    return [name for name, m in model.named_modules() if isinstance(m, nn.Conv2d)]


def run_point(
    dense: nn.Module,
    data: Data,
    dense_preds: torch.Tensor,
    *,
    hyperplanes: int,
    seed: int,
    schedule: str = "",
    batch_size: int = 250,
    **options,
) -> dict:
    """Convert a copy of ``dense`` with ``options`` and ``seed``, run it at ``hyperplanes`` (with the
    per-layer ``schedule``) on ``data``: one row of the sweep."""
    table = schedule_table(conv_names(dense), hyperplanes, schedule)
    model = convert(dense_copy(dense), **options, seed=seed, levels={"high": table})
    preds, labels, report = predict(model, data, level="high", batch_size=batch_size)
    row = {**options, "schedule": schedule, "seed": seed, "hyperplanes": hyperplanes}
    row.update(summarise(dense_preds, preds, labels, report, layers=False))
    row["layers"] = {name: s.as_dict() for name, s in report.layers.items() if s.kind == "haste"}
    return row


def _key(row: dict) -> tuple:
    return (*(row.get(a) for a in AXES), row["seed"], row["hyperplanes"])


def summarize(rows: list[dict]) -> list[dict]:
    """Mean and (sample) std over seeds of accuracy, drop, agreement and FLOPs, per grid point."""
    groups = defaultdict(list)
    for row in rows:
        groups[(*(row.get(a) for a in AXES), row["hyperplanes"])].append(row)
    out = []
    for key, group in groups.items():
        entry = dict(zip((*AXES, "hyperplanes"), key))
        entry["seeds"] = len(group)
        for field in ("accuracy", "drop_points", "agreement", "saving", "flops_executed", "flops_overhead"):
            values = [r[field] for r in group]
            entry[f"{field}_mean"] = statistics.fmean(values)
            entry[f"{field}_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
        entry["saving_without_overhead_mean"] = statistics.fmean(r["saving_without_overhead"] for r in group)
        out.append(entry)
    return sorted(out, key=lambda e: (tuple(str(e[a]) for a in AXES), e["hyperplanes"]))


def write_csv(rows: list[dict], path: Path) -> None:
    import csv

    fields = list(rows[0]) if rows else []
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: f"{v:.6g}" if isinstance(v, float) else v for k, v in row.items()})


def varying_axes(summary: list[dict]) -> tuple[str, ...]:
    """The grid axes (besides hyperplanes) that take more than one value."""
    return tuple(a for a in AXES if len({str(e.get(a)) for e in summary}) > 1)


def sweep(
    model_name: str,
    *,
    hyperplanes: list[int],
    seeds: list[int] = (0, 1, 2),
    schedule: list[str] = ("",),
    out: str | Path | None = None,
    dataset: str | None = None,
    split: str = "calibration",
    data_dir: str | None = None,
    limit: int | None = None,
    batch_size: int = 250,
    command: str = "",
    log=print,
    **axes: list,
) -> dict:
    """Run the grid (product of the axes) for every seed; returns {model, data, dense_accuracy, rows,
    summary}, written to ``out``.json/.csv/.png if given (resuming runs already in ``out``.json).

    ``axes``: the values of each conversion option swept (``OPTION_AXES``: patch_size=[2, 4], merge=["mean",
    "scaled"], ...); an option not given takes its default. TypeError for an option that is not an axis."""
    check_names(axes, tuple(option.name for option in OPTION_AXES), "sweep axis")
    values = [list(axes.get(option.name, [option.default])) for option in OPTION_AXES]
    dense = zoo.load(model_name)
    for text in schedule:  # a pattern matching no layer: say so before running anything
        check_schedule(conv_names(dense), text)
    card = dense.haste_card
    data = load_data(card, dataset=dataset, split=split, data_dir=data_dir, limit=limit)
    dense_preds, labels, dense_report = predict(dense, data, level="off", batch_size=batch_size)
    result = {
        "model": card.get("name", model_name),
        "dataset": data.name,
        "split": data.split,
        "images": data.size,
        "dense_accuracy": float((dense_preds == labels).double().mean()),
        "flops_dense": dense_report.dense_flops,
        "command": command,
        "rows": [],
    }
    base = Path(out) if out else None
    done = {}
    if base and base.with_suffix(".json").is_file():
        previous = json.loads(base.with_suffix(".json").read_text())
        if all(previous.get(k) == result[k] for k in ("model", "dataset", "split", "images")):
            done = {_key(with_defaults(r)): r for r in previous["rows"]}
            result["commands"] = [c for c in previous.get("commands", [previous.get("command")]) if c]
    result.setdefault("commands", [])
    if command and command not in result["commands"]:
        result["commands"].append(command)
    grid = list(itertools.product(*values, schedule))
    total = len(grid) * len(seeds) * len(hyperplanes)
    for i, (point, seed, planes) in enumerate(itertools.product(grid, seeds, hyperplanes)):
        options = dict(zip(AXES, point))
        key = (*point, seed, planes)
        if key in done:
            result["rows"].append(done.pop(key))
            continue
        start = time.time()
        row = run_point(dense, data, dense_preds, hyperplanes=planes, seed=seed, batch_size=batch_size, **options)
        row["seconds"] = round(time.time() - start, 1)
        result["rows"].append(row)
        log(
            f"[{i + 1}/{total}] {_describe(options)} seed={seed} L={planes}: accuracy {100 * row['accuracy']:.2f}% "
            f"(drop {row['drop_points']:.2f}) saving {100 * row['saving']:.2f}% ({row['seconds']:.0f}s)"
        )
        if base:
            write({**result, "rows": [*result["rows"], *done.values()]}, base)
    result["rows"].extend(done.values())  # runs of earlier grids in the same file are kept
    if base:
        write(result, base, plot=True)
    else:
        result["summary"] = summarize(result["rows"])
    return result


def _describe(options: dict) -> str:
    return " ".join(f"{k}={_short(v)}" for k, v in options.items() if not (k == "schedule" and not v))


def _short(v):
    return f"{v:.3g}" if isinstance(v, float) else v


def write(result: dict, base: Path, *, plot: bool = False) -> None:
    """Write ``base``.json (rows and summary) and ``base``.csv; with ``plot``, ``base``.png."""
    from .plots import tradeoff

    result["summary"] = summarize(result["rows"])  # also set on the caller's dict when it is passed
    base.parent.mkdir(parents=True, exist_ok=True)
    tmp = base.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=1) + "\n")
    tmp.replace(base.with_suffix(".json"))
    write_csv(result["summary"], base.with_suffix(".csv"))
    if plot and result["summary"]:
        tradeoff(
            result["summary"],
            base.with_suffix(".png"),
            dense_accuracy=result["dense_accuracy"],
            title=f"{result['model']}: HASTE on {result['dataset']} {result['split']} "
            f"({result['images']} images), mean +/- std over seeds",
            series=varying_axes(result["summary"]),
        )


def add_grid_arguments(p) -> None:
    p.add_argument(
        "--hyperplanes",
        type=hyperplane_count,
        nargs="+",
        default=[4, 5, 6, 7, 8, 10, 12, 14],
        help=f"L values, each 1..{MAX_HYPERPLANES} (default 4 5 6 7 8 10 12 14)",
    )
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="hyperplane seeds (default 0 1 2)")
    add_option_arguments(p, OPTION_AXES, several=True)
    p.add_argument(
        "--schedule",
        type=schedule_argument,
        nargs="+",
        default=[""],
        help='per-layer hyperplanes, comma-separated pattern=value: "layer1=+2,layer4=-1" offsets from the row\'s '
        'L, "layer1=12" an absolute L, "layer4=0" dense; a pattern is a conv name, a name prefix (layer1) or a '
        'glob (*.conv2) and must match a conv; "" = uniform (the default)',
    )


def add_command(sub) -> None:
    """Register ``haste sweep`` and ``haste calibrate``."""
    from . import calibrate

    p = sub.add_parser("sweep", help="accuracy vs FLOPs saving over a grid of settings and seeds")
    p.add_argument("--model", required=True, help="reference model, torchvision arch[:WEIGHTS], or a card .json")
    add_grid_arguments(p)
    add_data_arguments(p, split="calibration")
    p.add_argument("--out", required=True, help="output path without extension (.json, .csv, .png are written)")
    p.set_defaults(func=_run)
    calibrate.add_command(sub)


def _run(args) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    result = sweep(
        args.model,
        hyperplanes=args.hyperplanes,
        seeds=args.seeds,
        schedule=args.schedule,
        out=args.out,
        dataset=args.dataset,
        split=args.split,
        data_dir=args.data_dir,
        limit=args.limit,
        batch_size=args.batch_size,
        command=command_line(),
        **{option.name: getattr(args, option.name) for option in OPTION_AXES},
    )
    print(f"wrote {args.out}.json, .csv, .png ({len(result['rows'])} runs)")
    return 0
