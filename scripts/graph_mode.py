"""Eager against graph mode: each level eagerly (through the converted model's Python) and as the service runs it, a
torch.jit trace at that level (``haste.trace``: HASTE layers recorded as the CPU kernel's operator,
``torch.ops.haste.conv2d``, with the FLOPs count), with the dense model compiled by torch.compile beside them,
interleaved in one run.

    python scripts/graph_mode.py --model fmnist-resnet34 --batch 1 4 8 --rounds 61 \\
        --out results/graph-mode-fmnist-resnet34.json

Per batch size: the median ms of every variant and its paired ratio (median over rounds, 95% interval) to the eager
``off`` and to the traced ``off``. The models are those ``haste bench`` times: BatchNorms fused (``--no-fuse-batchnorm``
keeps them), channels-last, each level at the plan the service runs for the batch size (``off`` where the plan is
all dense). Every trace is checked against the eager model on the batch (``haste.trace``).
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import random
import statistics
import sys
import time
from pathlib import Path

import torch

import haste
from haste.cli import non_negative_int, positive_int
from haste.convert import convert
from haste.levels import LEVELS
from haste_lab import baseline, layout
from haste_lab.bench import _real_images, load_model, served_level
from haste_lab.interleaved import interleaved_times, paired_ratio
from haste_lab.layer_times import forward_at


def compiled_dense(trained: torch.nn.Module, x: torch.Tensor, fuse: bool, memory: str) -> tuple:
    """(torch.compile of the dense model, seconds its first call took: the compilation)."""
    model = layout.in_layout(baseline.prepared(copy.deepcopy(trained), fuse), memory)
    compiled = torch.compile(model)
    start = time.perf_counter()
    with torch.no_grad():
        compiled(x)
    return compiled, time.perf_counter() - start


def run(args) -> dict:
    trained, card, weights = load_model(args.model)
    trained.eval()
    model = convert(baseline.prepared(copy.deepcopy(trained), args.fuse_batchnorm))
    layout.in_layout(model, args.layout)
    report = {
        "model": args.model, "weights": weights, "layout": args.layout, "fuse_batchnorm": args.fuse_batchnorm,
        "levels": args.levels, "machine": platform.processor() or platform.machine(), "threads": args.threads,
        "torch": torch.__version__,
        "protocol": f"torch threads {args.threads}; {args.warmup} warm-up rounds, then {args.rounds} rounds of every "
        "variant in a new random order each (seed 0); medians; paired ratios: median over rounds of the ratio "
        "to the base in the same round",
        "command": "python scripts/graph_mode.py " + " ".join(sys.argv[1:]),
        "batches": [],
    }  # fmt: skip
    for batch in args.batch:
        x, source = _real_images(card, batch)
        variants, runs = {}, {}
        for level in ["off", *args.levels]:
            runs[level] = served_level(model, x, level)
            variants[f"{level} eager"] = lambda run=runs[level], x=x: forward_at(model, x, run)
            variants[f"{level} traced"] = lambda g=haste.trace(model, x, runs[level]), x=x: g(x)
        compile_s = None
        if args.compiled:
            dense, compile_s = compiled_dense(trained, x, args.fuse_batchnorm, args.layout)
            variants["dense compiled"] = lambda dense=dense, x=x: dense(x)
        with torch.no_grad():
            times = interleaved_times(variants, rounds=args.rounds, warmup=args.warmup, rng=random.Random(0))
        rows = []
        for key, ts in times.items():
            rows.append({
                "variant": key, "runs_level": runs.get(key.split()[0]), "median_ms": statistics.median(ts) * 1e3,
                "vs_off_eager": paired_ratio(ts, times["off eager"]),
                "vs_off_traced": paired_ratio(ts, times["off traced"]),
            })  # fmt: skip
            r = rows[-1]
            print(f"{args.model} b={batch} {key:>16}: {r['median_ms']:7.2f} ms  vs off eager "
                  f"{r['vs_off_eager']['median']:.3f}  vs off traced {r['vs_off_traced']['median']:.3f}")  # fmt: skip
        report["batches"].append({"batch": batch, "images": source, "compile_s": compile_s, "rows": rows})
    return report


def markdown(report: dict) -> str:
    """One row per batch size and level: eager and traced ms, the trace's gain over its own eager run, and each
    against its own ``off`` (paired medians); the compiled dense model against the eager ``off``."""
    lines = [
        "| batch | level | eager ms | traced ms | traced / eager | eager / eager off | traced / traced off |",
        "|---|---|---|---|---|---|---|",
    ]
    for entry in report["batches"]:
        rows = {r["variant"]: r for r in entry["rows"]}
        for level in ["off", *report["levels"]]:
            eager, traced = rows[f"{level} eager"], rows[f"{level} traced"]
            runs = "" if eager["runs_level"] == level else f" (runs {eager['runs_level']})"
            lines.append(
                f"| {entry['batch']} | {level}{runs} | {eager['median_ms']:.2f} | {traced['median_ms']:.2f} | "
                f"{traced['median_ms'] / eager['median_ms']:.3f} | {eager['vs_off_eager']['median']:.3f} | "
                f"{traced['vs_off_traced']['median']:.3f} |"
            )
        if "dense compiled" in rows:
            compiled = rows["dense compiled"]
            lines.append(
                f"| {entry['batch']} | dense, torch.compile | - | {compiled['median_ms']:.2f} (compiled) | - | "
                f"{compiled['vs_off_eager']['median']:.3f} | {compiled['vs_off_traced']['median']:.3f} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="fmnist-resnet34", help="reference model or torchvision name")
    p.add_argument("--batch", nargs="+", type=positive_int, default=[1, 4, 8])
    others = [lv for lv in LEVELS if lv != "off"]
    p.add_argument("--levels", nargs="+", choices=others, default=others)
    p.add_argument("--rounds", type=positive_int, default=61)
    p.add_argument("--warmup", type=non_negative_int, default=5)
    p.add_argument("--threads", type=positive_int, default=2)
    p.add_argument(
        "--compiled",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also time the dense model compiled by torch.compile (default; its compilation is not timed)",
    )
    layout.add_argument(p)
    baseline.add_argument(p)
    p.add_argument("--out", type=Path, required=True, help="report (.json)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if not haste.engine.cpu_kernel_available():
        p.error(f"the fused CPU kernel is needed to trace HASTE layers: {haste.engine.unavailable}")
    report = run(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
