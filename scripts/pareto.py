"""Accuracy drop against latency and against FLOPs: faithful HASTE (the paper's mean merge), the scaled merge,
and the measured level plans, on one plot per axis.

    python scripts/pareto.py --model fmnist-resnet34 --sweep results/sweep-fmnist-resnet34.json \\
        --plans results/plans-fmnist-resnet34.json --batch 1 --out results/pareto-fmnist-resnet34

Points: every uniform-hyperplane row of the sweep (calibration split, mean of its seeds) for both merge rules,
and the level plans chosen at that batch size (their drop measured on the same split by ``haste calibrate-plans``),
all timed here at ``--batch`` against the dense model (interleaved in a new random order each round; paired
ratios). Writes OUT.json and OUT.png.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

import torch

from haste import zoo
from haste.convert import convert
from haste.options import Options
from haste.plans import table_value
from haste_lab import baseline, layout
from haste_lab.bench import _real_images
from haste_lab.evaluate import dense_copy
from haste_lab.interleaved import interleaved_times, paired_ratio
from haste_lab.layer_times import forward_at
from haste_lab.plan_search import full_table, plan_entry


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="fmnist-resnet34")
    p.add_argument("--sweep", type=Path, required=True)
    p.add_argument("--plans", type=Path, required=True)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--rounds", type=int, default=11)
    p.add_argument("--threads", type=int, default=2)
    layout.add_argument(p)
    baseline.add_argument(p)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    sweep = json.loads(args.sweep.read_text())
    plans = json.loads(args.plans.read_text())
    trained = zoo.load(args.model).eval()
    dense = baseline.prepared(dense_copy(trained), args.fuse_batchnorm)  # every setting below is built from it
    options = Options.from_mapping(dense.haste_card["haste"]["options"])
    x, _ = _real_images(dense.haste_card, args.batch)
    points = []
    models = {"dense": dense}
    if args.fuse_batchnorm:  # the model as trained, for scale: what the fusion alone buys
        models["dense, BatchNorms kept"] = trained
        points.append({"setting": "dense, BatchNorms kept", "family": "dense as trained (BatchNorms kept)",
                       "drop": 0.0, "flops_ratio": 1.0})  # fmt: skip
    for row in sweep["summary"]:
        if row["schedule"] or row["patch_size"] != options.patch_size or row["start_layer"] != options.start_layer:
            continue
        key = f"{row['merge']} L={row['hyperplanes']}"
        opts = options.replace(merge=row["merge"]).as_dict()
        models[key] = convert(dense_copy(dense), **opts, plans={}, levels={"high": row["hyperplanes"]})
        points.append({"setting": key, "family": f"uniform L, {row['merge']} merge"
                       + (" (the paper)" if row["merge"] == "mean" else ""),
                       "drop": row["drop_points_mean"], "flops_ratio": 1 - row["saving_mean"]})  # fmt: skip
    reference = convert(dense_copy(dense), plans={})
    names = list(full_table(reference, "high"))
    off = set()  # settings run at level off: a plan with every layer dense runs so
    for row in plans["rows"]:
        if row["batch"] == args.batch:
            key = f"plan {row['level']}@{args.batch}"
            chosen = plan_entry(plans, row["level"], args.batch)["levels"]  # the table the plan runs
            if row["stages"]:
                table = {n: table_value(chosen, n) for n in names}
                models[key] = convert(dense_copy(dense), plans={}, levels={"high": table})
            else:
                models[key], _ = dense_copy(reference), off.add(key)
            points.append({"setting": key, "family": "level plans (measured)", "drop": row["calibration_drop"],
                           "flops_ratio": 1 - row["saving"]})  # fmt: skip
    models = {k: layout.in_layout(m.eval(), args.layout) for k, m in models.items()}
    x = layout.in_layout(x, args.layout)
    with torch.inference_mode():
        runs = {
            k: (lambda m=m, lv="off" if k.startswith("dense") or k in off else "high": forward_at(m, x, lv))
            for k, m in models.items()
        }
        times = interleaved_times(runs, rounds=args.rounds, warmup=1, rng=random.Random(0))
    for point in points:  # paired: the median over rounds of the setting's time over dense's in the same round
        point["latency_ratio"] = paired_ratio(times[point["setting"]], times["dense"])["median"]
    norms = "BatchNorms kept"
    if args.fuse_batchnorm:
        norms = "BatchNorms fused into the convs of every setting, dense included"
    report = {
        "model": args.model,
        "batch": args.batch,
        "threads": args.threads,
        "drop_split": sweep["split"],
        "layout": args.layout,
        "fuse_batchnorm": args.fuse_batchnorm,
        "protocol": f"{args.layout}; {norms}; {args.rounds} rounds, all settings (the plans' tables of "
        f"{args.plans.name} included) interleaved in a new random order each round (seed 0); latency: the median over "
        "rounds of the setting's time over dense's in the same round",
        "points": points,
        "command": " ".join(["python scripts/pareto.py", *sys.argv[1:]]),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(report, indent=1) + "\n")
    plot(report, args.out.with_suffix(".png"))
    for point in points:
        print(f"{point['setting']:>14}: drop {point['drop']:5.2f}  FLOPs {point['flops_ratio']:.3f}  "
              f"latency {point['latency_ratio']:.3f}")  # fmt: skip
    return 0


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    families = list(dict.fromkeys(p["family"] for p in report["points"]))
    labels = (f"latency / dense (batch {report['batch']})", "FLOPs / dense (overhead included)")
    for ax, axis, label in zip(axes, ("latency_ratio", "flops_ratio"), labels):
        for family, marker in zip(families, "o^sD"):
            pts = sorted((p for p in report["points"] if p["family"] == family), key=lambda p: p[axis])
            ax.plot([p[axis] for p in pts], [p["drop"] for p in pts], marker=marker, label=family,
                    linestyle="-" if "uniform" in family else "none")  # fmt: skip
        ax.axvline(1.0, color="grey", linewidth=0.8)
        ax.set_xlabel(label)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(f"accuracy drop (points, {report['drop_split']} split)")
    axes[0].set_yscale("symlog", linthresh=1.0)  # the budgets (0.5-2 points) next to the collapses (tens of points)
    axes[0].set_ylim(bottom=0)
    for budget in (0.5, 1.0, 2.0):
        for ax in axes:
            ax.axhline(budget, color="grey", linewidth=0.5, linestyle=":")
    axes[0].legend(fontsize=8)
    fig.suptitle(f"{report['model']}: accuracy drop vs latency and vs FLOPs")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    sys.exit(main())
