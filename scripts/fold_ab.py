"""What folding the BatchNorms into the HASTE layers buys (haste.fold): the dense model, and the converted model at
level off and at each level's table (``plans={}``), converted with and without ``fold_batchnorm``, all interleaved
in a new random order every round (seed 0), medians per batch size, as ratios to the dense model.

    python scripts/fold_ab.py --model fmnist-resnet34 --batch 1 2 4 8 --rounds 61 --out results/fold-ab.json
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
from haste.levels import LEVELS, compression
from haste_lab.bench import _real_images, load_model
from haste_lab.interleaved import interleaved_times
from haste_lab.layout import LAYOUTS, in_layout


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="fmnist-resnet34", help="reference model or torchvision name")
    parser.add_argument("--levels", nargs="+", default=["low", "high"], choices=[lv for lv in LEVELS if lv != "off"])
    parser.add_argument("--batch", nargs="+", type=positive_int, default=[1, 8], help="batch sizes")
    parser.add_argument("--rounds", type=positive_int, default=61)
    parser.add_argument("--warmup", type=non_negative_int, default=5)
    parser.add_argument("--threads", type=positive_int, default=2)
    parser.add_argument("--layout", choices=LAYOUTS, default="channels_last")
    parser.add_argument("--out", type=Path, required=True, help="report (.json)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    model, card, weights = load_model(args.model)
    dense = in_layout(copy.deepcopy(model).eval(), args.layout)
    folded = in_layout(convert(copy.deepcopy(model), plans={}).eval(), args.layout)
    unfolded = in_layout(convert(model, plans={}, fold_batchnorm=False).eval(), args.layout)

    def at(m, level):
        def run(x):
            with compression(level):
                m(x)

        return run

    runs = {"dense": dense, "off": at(folded, "off"), "off unfolded": at(unfolded, "off")}
    for level in args.levels:
        runs[level] = at(folded, level)
        runs[f"{level} unfolded"] = at(unfolded, level)
    report = {
        "model": args.model,
        "weights": weights,
        "folded": len(folded.haste_conversion.folded),
        "protocol": f"torch threads {args.threads}; {args.layout}; each level's table (plans={{}}); {args.warmup} "
        f"warm-up rounds, then {args.rounds} rounds of every variant in a new random order (seed 0); medians",
        "batches": [],
    }
    rng = random.Random(0)
    for batch in args.batch:
        x, source = _real_images(card, batch)
        x = in_layout(x, args.layout)
        with torch.inference_mode():
            times = interleaved_times(
                {k: (lambda f=f, x=x: f(x)) for k, f in runs.items()}, rounds=args.rounds, warmup=args.warmup, rng=rng
            )
        med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
        ratios = {k: v / med["dense"] for k, v in med.items()}
        report["batches"].append({"batch": batch, "images": source, "median_ms": med, "ratio_to_dense": ratios})
        print(f"b={batch} dense {med['dense']:.2f} ms; " + ", ".join(f"{k} {v:.3f}" for k, v in ratios.items()))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
