"""Larger tiles where maps are small: the same tables at patch size 4 and 8, timed as the service runs them.

    python scripts/patch_size.py --model fmnist-resnet34 --batch 1 2 --rounds 81 \\
        --candidate 4@16:*=0,layer1=10 8@16:*=0,layer1=10 ... --out results/patch-size-fmnist-resnet34.json

A tile of P x P output pixels shares one hash and one set of merged filters: at P=8 a 32x32 map has 16 tiles instead
of 64 and an 8x8 map one instead of 4, so the kernel builds a quarter of the merged filters and runs longer GEMMs;
a tile also hashes a larger region (a 10x10 region's vector of 100 values instead of 36 for a 3x3 conv), so fewer
channels collide at the same number of hyperplanes, and those that do differ more. Each candidate is
``PATCH@TABLE``: the conversion's patch size, then a table as ``haste calibrate-plans --table`` takes it
(``HYPERPLANES[:SCHEDULE]``; ``*=0`` first runs every layer dense that a later entry does not name). Every candidate
is a converted copy of the model (BatchNorms fused, channels-last, as the service holds it) evaluated on the
calibration split (accuracy drop against the dense model, multiply-adds saved with overhead) and timed as a
``haste.trace`` against the traced dense model (level off), all interleaved in a new random order each round;
paired ratios (median over rounds, 95% interval).

At one patch size the same script times stages alone and together, as the plan search's pruning asks
(results/stages-b1-fmnist-resnet34.json: at batch 1, layer4 alone at several L, and the plans of layers 1-4):

    python scripts/patch_size.py --model fmnist-resnet34 --batch 1 --rounds 301 \\
        --candidate 4@16:layer4=8 4@16:*=0,layer4=8 ... --out results/stages-b1-fmnist-resnet34.json
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import random
import shlex
import statistics
import sys
from pathlib import Path

import torch

import haste
from haste.cli import non_negative_int, positive_int
from haste_lab import baseline, layout
from haste_lab.bench import _real_images, load_model
from haste_lab.evaluate import load_data, predict
from haste_lab.interleaved import interleaved_times, paired_ratio, ratio_text
from haste_lab.plan_search import extra_table, table_argument


def candidate_argument(text: str) -> str:
    """argparse type of a ``--candidate``: ``PATCH@TABLE``, kept as text."""
    patch, sep, table = text.partition("@")
    if not sep or not patch.isdigit() or int(patch) < 1:
        raise argparse.ArgumentTypeError(f"a candidate is PATCH@TABLE, e.g. 8@16:*=0,layer1=10; got {text!r}")
    table_argument(table)
    return text


def converted(prepared: torch.nn.Module, candidate: str, names: list[str]) -> torch.nn.Module:
    """A converted copy of ``prepared`` whose three levels all run the candidate's table at its patch size; ``names``:
    the HASTE layers of ``prepared`` converted (the patch size does not change which)."""
    patch, _, text = candidate.partition("@")
    model = copy.deepcopy(prepared)
    table = {"default": 0, **extra_table(names, text)}
    haste.convert(model, levels=dict.fromkeys(("low", "medium", "high"), table), plans={}, patch_size=int(patch))
    return model


def run(args) -> dict:
    trained, card, weights = load_model(args.model)
    prepared = layout.in_layout(baseline.prepared(trained.eval(), args.fuse_batchnorm), args.layout)
    dense = haste.convert(copy.deepcopy(prepared), plans={})
    names = [m.name for m in dense.modules() if isinstance(m, haste.HasteConv2d)]
    models = {c: converted(prepared, c, names) for c in args.candidate}
    data = load_data(card, split="calibration", limit=args.limit)
    preds, labels, _ = predict(dense, data, level="off")
    dense_accuracy = (preds == labels).float().mean().item()
    accuracy = {}
    for c, model in models.items():
        preds, labels, report = predict(model, data, level="high")
        accuracy[c] = {
            "calibration_drop": 100 * (dense_accuracy - (preds == labels).float().mean().item()),
            "saving": report.saving,
        }
        print(f"{c}: drop {accuracy[c]['calibration_drop']:.2f} points, saving {accuracy[c]['saving']:.3f}")
    out = {
        "model": args.model, "weights": weights, "layout": args.layout, "fuse_batchnorm": args.fuse_batchnorm,
        "machine": platform.processor() or platform.machine(), "threads": args.threads, "torch": torch.__version__,
        "calibration": {"split": "calibration", "images": data.size, "dense_accuracy": dense_accuracy},
        "protocol": f"torch threads {args.threads}; every candidate and level off as haste.trace, {args.warmup} "
        f"warm-up rounds, then {args.rounds} rounds in a new random order each (seed 0); paired ratios: median over "
        "rounds of the ratio to off in the same round, 95% interval",
        "command": "python scripts/patch_size.py " + shlex.join(args.argv),
        "candidates": [{"candidate": c, **accuracy[c], "batches": {}} for c in args.candidate],
    }  # fmt: skip
    rows = {r["candidate"]: r for r in out["candidates"]}
    for batch in args.batch:
        x, _ = _real_images(card, batch)
        traces = {"off": haste.trace(dense, x, "off"), **{c: haste.trace(m, x, "high") for c, m in models.items()}}
        variants = {k: (lambda t=t, x=x: t(x)) for k, t in traces.items()}
        with torch.no_grad():
            times = interleaved_times(variants, rounds=args.rounds, warmup=args.warmup, rng=random.Random(0))
        off_ms = statistics.median(times["off"]) * 1e3
        for c in args.candidate:
            ratio = paired_ratio(times[c], times["off"])
            rows[c]["batches"][str(batch)] = {"vs_off": ratio, "median_ms": statistics.median(times[c]) * 1e3,
                                              "off_ms": off_ms}  # fmt: skip
            print(f"b={batch} {c}: {ratio_text(ratio)} of off")
    return out


def markdown(report: dict) -> str:
    """One row per candidate: patch size, table, calibration drop, saving, paired ratio to off per batch size."""
    batches = list(report["candidates"][0]["batches"])
    lines = [
        "| P | table | drop (points) | saving | " + " | ".join(f"b{b} / off" for b in batches) + " |",
        "|---|---|---|---|" + "---|" * len(batches),
    ]
    for r in report["candidates"]:
        patch, _, table = r["candidate"].partition("@")
        cells = [ratio_text(r["batches"][b]["vs_off"]) for b in batches]
        lines.append(
            f"| {patch} | `{table}` | {r['calibration_drop']:.2f} | {100 * r['saving']:.1f}% | {' | '.join(cells)} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="fmnist-resnet34", help="reference model")
    p.add_argument("--batch", nargs="+", type=positive_int, default=[1, 2])
    p.add_argument("--candidate", nargs="+", type=candidate_argument, required=True, help="PATCH@TABLE")
    p.add_argument("--limit", type=positive_int, default=5000, help="calibration images (default 5000)")
    p.add_argument("--rounds", type=positive_int, default=81)
    p.add_argument("--warmup", type=non_negative_int, default=5)
    p.add_argument("--threads", type=positive_int, default=2)
    layout.add_argument(p)
    baseline.add_argument(p)
    p.add_argument("--out", type=Path, required=True, help="report (.json)")
    args = p.parse_args(argv)
    args.argv = sys.argv[1:] if argv is None else list(argv)  # the command, for the report
    torch.set_num_threads(args.threads)
    if not haste.engine.cpu_kernel_available():
        p.error(f"the fused CPU kernel is needed to trace HASTE layers: {haste.engine.unavailable}")
    report = run(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(markdown(report))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
