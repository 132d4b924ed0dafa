"""The dense model in NCHW against channels-last (NHWC), and a level in each, interleaved in one run: what the
service's ``HASTE_CHANNELS_LAST`` (default on) buys, per batch size.

    python scripts/layout_bench.py --model fmnist-resnet34 --batch 1 4 8 32 --rounds 41 \\
        --out results/bench-fmnist-resnet34-layout.json

Variants per batch: the unconverted model and the converted one at ``--level`` (its table at every batch size:
``plans={}``), each in both layouts, timed on the same real images in a new random order every round (seed 0)
after warm-up; medians. Ratios are to the NCHW dense model.
"""

from __future__ import annotations

import argparse
import copy
import json
import random
import statistics
import sys
from pathlib import Path

import torch

from haste.cli import non_negative_int, positive_int
from haste.convert import convert
from haste.levels import LEVELS
from haste_lab.bench import _real_images, load_model
from haste_lab.interleaved import seconds
from haste_lab.layer_times import forward_at
from haste_lab.layout import LAYOUTS, in_layout


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="fmnist-resnet34", help="reference model or torchvision name")
    parser.add_argument("--batch", nargs="+", type=positive_int, default=[1, 4, 8, 32], help="batch sizes")
    parser.add_argument("--level", default="high", choices=[lv for lv in LEVELS if lv != "off"])
    parser.add_argument("--rounds", type=positive_int, default=41)
    parser.add_argument("--warmup", type=non_negative_int, default=3)
    parser.add_argument("--threads", type=positive_int, default=2)
    parser.add_argument("--out", type=Path, required=True, help="report (.json)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    model, card, weights = load_model(args.model)
    dense = {layout: in_layout(copy.deepcopy(model).eval(), layout) for layout in LAYOUTS}
    converted = {layout: in_layout(convert(copy.deepcopy(model).eval(), plans={}), layout) for layout in LAYOUTS}
    report = {
        "model": args.model,
        "weights": weights,
        "level": args.level,
        "protocol": f"torch threads {args.threads}; {args.warmup} warm-up rounds, then {args.rounds} rounds of one "
        "forward per variant in a new random order each round (seed 0); medians; ratios to the NCHW dense model",
        "command": "python scripts/layout_bench.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "batches": [],
    }
    shuffle = random.Random(0)
    for batch in args.batch:
        x, source = _real_images(card, batch)
        variants = {}
        for layout in LAYOUTS:
            variants[f"dense {layout}"] = lambda m=dense[layout], x=x: m(x)
            variants[f"{args.level} {layout}"] = lambda m=converted[layout], x=x: forward_at(m, x, args.level)
        times = {k: [] for k in variants}
        with torch.inference_mode():
            for _ in range(args.warmup):
                for fn in variants.values():
                    fn()
            for _ in range(args.rounds):
                for key in shuffle.sample(list(variants), len(variants)):
                    times[key].append(seconds(variants[key]))
        base = statistics.median(times["dense nchw"])
        rows = {k: {"median_ms": statistics.median(v) * 1e3, "ratio": statistics.median(v) / base}
                for k, v in times.items()}  # fmt: skip
        report["batches"].append({"batch": batch, "images": source, "variants": rows})
        print(f"b={batch}: " + ", ".join(f"{k} {r['median_ms']:.2f} ms ({r['ratio']:.3f})" for k, r in rows.items()))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
