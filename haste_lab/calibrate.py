"""``haste calibrate``: per-model levels from a measured accuracy / FLOPs sweep.

low / medium / high = the setting (uniform hyperplanes or a per-layer schedule) with the largest mean
FLOPs saving whose mean accuracy drop over the hyperplane seeds stays within 0.5 / 1.0 / 2.0 points on
the calibration split (the last 5k Fashion-MNIST training images, never trained on). The chosen
settings are then measured on the test split with the shipped seed and written into the model card:

    "haste": {"options": {...convert options...}, "levels": {"low": 12, "medium": 9, "high": {...}},
              "table": [{"level", "hyperplanes", "calibration_drop", "test_accuracy", "test_drop",
                         "saving", ...}], "calibration": {...how it was measured...}}

``haste.convert(haste.zoo.load(name))`` then uses these levels (when called with the same options).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import torch

from haste import zoo
from haste.cli import non_negative_float, positive_int
from haste.convert import conversion, convert

from .evaluate import add_data_arguments, command_line, dense_copy, load_data, predict, summarise
from .sweep import DEFAULTS, OPTION_AXES, add_grid_arguments, conv_names, matching, schedule_table, summarize, sweep

#: The conversion options a calibration is for: one value of each sweep axis, and the seed (the first of --seeds).
CALIBRATED = (*(option.name for option in OPTION_AXES), "seed")

#: Largest accuracy drop (points) allowed per level.
BUDGETS = {"low": 0.5, "medium": 1.0, "high": 2.0}

#: Standard errors of the measured drop kept between a level's calibration drop and its budget, so that the
#: budget still holds on other images (the test split): 1.64, one-sided 95%.
MARGIN_Z = 1.64


def standard_error(row: dict, images: int) -> float:
    """Standard error (points) of a measured drop on ``images`` images: each image is a paired trial, the
    drop a mean of +1/0/-1 outcomes, at most sqrt(disagreement / images)."""
    return 100 * math.sqrt(max(1 - row["agreement_mean"], 0.0) / images)


def choose(
    summary: list[dict], budgets: dict[str, float] = BUDGETS, *, images: int | None = None, z: float = MARGIN_Z
) -> dict[str, dict]:
    """For every level, the summary row with the largest mean saving whose mean drop, plus ``z`` standard
    errors on ``images`` calibration images (none without ``images``), is within the level's budget (None
    if no row is)."""
    chosen = {}
    for level, budget in budgets.items():
        within = [
            r for r in summary if r["drop_points_mean"] + (z * standard_error(r, images) if images else 0) <= budget
        ]
        chosen[level] = max(within, key=lambda r: r["saving_mean"]) if within else None
    return chosen


def calibrate(
    model_name: str,
    *,
    sweep_file: str | Path | None = None,
    grid: dict | None = None,
    options: dict | None = None,
    budgets: dict[str, float] = BUDGETS,
    margin_z: float = MARGIN_Z,
    split: str = "calibration",
    test_split: str = "test",
    data_dir: str | None = None,
    limit: int | None = None,
    test_limit: int | None = None,
    batch_size: int = 250,
    out: str | Path | None = None,
    write_card: bool = False,
    command: str = "",
    log=print,
) -> dict:
    """Choose the levels of ``model_name`` on the calibration split and measure them on the test split.

    Candidates come from ``sweep_file`` (an earlier ``haste sweep`` on the calibration split; only the
    runs with the conversion ``options`` are used) or from a sweep over ``grid`` (hyperplanes, seeds,
    schedule lists) run here. ``options`` are the convert options the levels are for (default: the
    library defaults); the test runs use ``options["seed"]``.
    """
    options = {**{k: DEFAULTS[k] for k in CALIBRATED}, **(options or {})}
    if sweep_file:
        swept = json.loads(Path(sweep_file).read_text())
        if swept["split"] != split:
            raise ValueError(f"{sweep_file} was measured on the {swept['split']} split, not {split}")
    else:
        grid = dict(grid or {})
        swept = sweep(
            model_name,
            hyperplanes=grid.get("hyperplanes", [4, 5, 6, 7, 8, 10, 12, 14]),
            seeds=grid.get("seeds", [0, 1, 2]),
            schedule=grid.get("schedule", [""]),
            **{option.name: [options[option.name]] for option in OPTION_AXES},
            split=split,
            data_dir=data_dir,
            limit=limit,
            batch_size=batch_size,
            out=Path(out).with_name(Path(out).name + "-sweep") if out else None,
            command=command,
            log=log,
        )
    same = matching(swept["rows"], **{k: v for k, v in options.items() if k != "seed"})
    if not same:
        raise ValueError(f"no run of the sweep used the conversion options {options}")
    summary = summarize(same)
    chosen = choose(summary, budgets, images=swept["images"], z=margin_z)

    dense = zoo.load(model_name)
    card = dense.haste_card
    test = load_data(card, split=test_split, data_dir=data_dir, limit=test_limit)
    dense_preds, labels, _ = predict(dense, test, level="off", batch_size=batch_size)
    names = conv_names(dense)
    levels, table = {}, []
    for level, row in chosen.items():
        if row is None:
            log(f"{level}: no setting within {budgets[level]} points on {split}; level left at the default")
            continue
        value = schedule_table(names, row["hyperplanes"], row["schedule"])
        start = time.time()
        model = convert(dense_copy(dense), **options, levels={level: value})
        preds, _, report = predict(model, test, level=level, batch_size=batch_size)
        measured = summarise(dense_preds, preds, labels, report, layers=False)
        levels[level] = value
        table.append(
            {
                "level": level,
                "hyperplanes": row["hyperplanes"],
                "schedule": row["schedule"],
                "budget_points": budgets[level],
                "calibration_drop": row["drop_points_mean"],
                "calibration_drop_std": row["drop_points_std"],
                "calibration_margin": margin_z * standard_error(row, swept["images"]),
                "calibration_saving": row["saving_mean"],
                "calibration_seeds": row["seeds"],
                "test_dense_accuracy": measured["dense_accuracy"],
                "test_accuracy": measured["accuracy"],
                "test_drop": measured["drop_points"],
                "saving": measured["saving"],
                "saving_without_overhead": measured["saving_without_overhead"],
                "flops_dense": measured["flops_dense"],
                "flops_executed": measured["flops_executed"],
                "flops_overhead": measured["flops_overhead"],
            }
        )
        log(
            f"{level}: L={row['hyperplanes']} {row['schedule'] or 'uniform'}: calibration drop "
            f"{row['drop_points_mean']:.2f}; test accuracy {100 * measured['accuracy']:.2f}% "
            f"(drop {measured['drop_points']:.2f}), saving {100 * measured['saving']:.2f}% "
            f"({time.time() - start:.0f}s)"
        )
        full_options = conversion(model).options
    if not levels:
        raise ValueError(f"no setting of the sweep stays within {min(budgets.values())} points on {split}")
    calibrated = {
        "options": full_options,
        "levels": levels,
        "table": table,
        "calibration": {
            "split": split,
            "images": swept["images"],
            "dense_accuracy": swept["dense_accuracy"],
            "test_split": test_split,
            "test_images": test.size,
            "budgets_points": budgets,
            "criterion": (
                f"largest mean saving (overhead included) whose mean drop over seeds plus {margin_z} standard errors "
                "(sqrt(disagreement / images)) is within the budget"
            ),
            "margin_z": margin_z,
            "candidates": summary,
            "command": command,
        },
    }
    if out:
        path = Path(out).with_suffix(".json")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"model": card.get("name", model_name), "haste": calibrated}, indent=1) + "\n")
    if write_card:
        card_path = zoo.paths(model_name)[1]
        stored = json.loads(card_path.read_text())
        stored["haste"] = {k: v for k, v in calibrated.items() if k != "calibration"}
        stored["haste"]["calibration"] = {k: v for k, v in calibrated["calibration"].items() if k != "candidates"}
        card_path.write_text(json.dumps(stored, indent=2) + "\n")
        log(f"wrote the calibrated levels into {card_path}")
    return calibrated


def add_command(sub) -> None:
    """Register ``haste calibrate``."""
    p = sub.add_parser("calibrate", help="choose low/medium/high per model on the calibration split")
    p.add_argument("--model", required=True, help="reference model (its card is updated with --write-card)")
    p.add_argument("--sweep", help="use the runs of this haste sweep JSON (calibration split) instead of sweeping")
    add_grid_arguments(p)
    add_data_arguments(p, split="calibration")
    p.add_argument("--test-limit", type=positive_int, help="use only the first K test images")
    p.add_argument(
        "--margin",
        type=non_negative_float,
        default=MARGIN_Z,
        help=f"standard errors of the calibration drop kept below each budget (default {MARGIN_Z})",
    )
    p.add_argument("--out", help="write the calibration to this path (.json)")
    p.add_argument("--write-card", action="store_true", help="store the levels in the model card")
    p.set_defaults(func=_run)


def _run(args) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    names = [option.name for option in OPTION_AXES]
    for name in names:
        if len(getattr(args, name)) != 1:
            raise ValueError(
                f"calibrate takes one value of --{name.replace('_', '-')} (the options the levels are for)"
            )
    options = {k: getattr(args, k)[0] for k in names}
    options["seed"] = args.seeds[0]
    result = calibrate(
        args.model,
        sweep_file=args.sweep,
        grid={"hyperplanes": args.hyperplanes, "seeds": args.seeds, "schedule": args.schedule},
        options=options,
        split=args.split,
        data_dir=args.data_dir,
        limit=args.limit,
        test_limit=args.test_limit,
        margin_z=args.margin,
        batch_size=args.batch_size,
        out=args.out,
        write_card=args.write_card,
        command=command_line(),
    )
    for row in result["table"]:
        print(
            f"{row['level']:>6}: L={row['hyperplanes']} {row['schedule'] or 'uniform'}  calibration drop "
            f"{row['calibration_drop']:.2f}  test accuracy {100 * row['test_accuracy']:.2f}% "
            f"(drop {row['test_drop']:.2f})  saving {100 * row['saving']:.2f}%"
        )
    return 0
