"""A/B two builds of the fused CPU kernel on a whole model: the working tree's haste_cpu.cpp against the one of a
git revision, the model at a level's table (``plans={}``) and the dense model, interleaved in a new random order
every round (seed 0), medians per batch size.

    python scripts/kernel_ab.py --baseline HEAD --batch 1 2 4 8 --rounds 41 --out results/kernel-ab.json

The module loaded second has measured up to 8% slower at batch 4 on the 2-core machine whichever source it held,
so every run measures both load orders (baseline first, then candidate first) and reports each and their geometric
mean.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from torch.utils.cpp_extension import load

from haste import engine
from haste.cli import non_negative_int, positive_int
from haste.convert import convert
from haste.levels import LEVELS, compression
from haste_lab.bench import _real_images, load_model
from haste_lab.interleaved import interleaved_times
from haste_lab.layout import LAYOUTS, in_layout

SOURCE = Path(__file__).resolve().parents[1] / "haste" / "engine" / "haste_cpu.cpp"


def _build(source: str, tag: str):
    digest = hashlib.sha256(source.encode()).hexdigest()[:12]
    path = Path(tempfile.mkdtemp(prefix="haste-ab-")) / f"haste_cpu_{tag}.cpp"
    path.write_text(source)
    return load(f"haste_ab_{tag}_{digest}", [str(path)], extra_cflags=engine._CFLAGS, extra_ldflags=["-fopenmp"])


def _time(model, dense, x, level: str, kernels: dict, *, rounds: int, warmup: int, rng) -> dict[str, float]:
    def haste_with(kernel):
        with engine.using_kernel(kernel), compression(level):
            model(x)

    variants = {"dense": lambda: dense(x), **{k: (lambda k=k: haste_with(kernels[k])) for k in kernels}}
    times = interleaved_times(variants, rounds=rounds, warmup=warmup, rng=rng)
    return {k: statistics.median(v) * 1e3 for k, v in times.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", default="HEAD", help="git revision whose haste_cpu.cpp is the baseline")
    parser.add_argument("--model", default="fmnist-resnet34")
    parser.add_argument("--level", default="high", choices=[lv for lv in LEVELS if lv != "off"])
    parser.add_argument("--batch", nargs="+", type=positive_int, default=[1, 2, 4, 8])
    parser.add_argument("--rounds", type=positive_int, default=41)
    parser.add_argument("--warmup", type=non_negative_int, default=5)
    parser.add_argument("--threads", type=positive_int, default=2)
    parser.add_argument("--layout", choices=LAYOUTS, default="channels_last")
    parser.add_argument("--label", default="", help="what the candidate changes (kept in the report)")
    parser.add_argument("--out", type=Path, required=True, help="report (.json)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    rel = SOURCE.relative_to(SOURCE.parents[2]).as_posix()
    baseline_src = subprocess.run(
        ["git", "show", f"{args.baseline}:{rel}"], cwd=SOURCE.parents[2], check=True, capture_output=True, text=True
    ).stdout
    baseline_rev = subprocess.run(
        ["git", "rev-parse", "--short", args.baseline], cwd=SOURCE.parents[2], check=True, capture_output=True,
        text=True,
    ).stdout.strip()  # fmt: skip
    candidate_src = SOURCE.read_text()
    if baseline_src == candidate_src:
        print(f"the working tree's {rel} is the same as {args.baseline}'s: nothing to compare", file=sys.stderr)
        return 1
    model, card, weights = load_model(args.model)
    convert(model, plans={})
    model = in_layout(model.eval(), args.layout)
    dense = in_layout(load_model(args.model)[0].eval(), args.layout)
    orders = {
        "baseline_first": {"baseline": _build(baseline_src, "b1"), "candidate": _build(candidate_src, "c1")},
        "candidate_first": {"candidate": _build(candidate_src, "c2"), "baseline": _build(baseline_src, "b2")},
    }
    rng = random.Random(0)
    report = {
        "model": args.model, "weights": weights, "level": args.level, "baseline": baseline_rev, "label": args.label,
        "protocol": f"torch threads {args.threads}; {args.layout}; {args.warmup} warm-up and {args.rounds} rounds of "
        "dense, baseline and candidate in a new random order each (seed 0), per load order; medians",
        "batches": [],
    }  # fmt: skip
    with torch.inference_mode():
        for batch in args.batch:
            x, _ = _real_images(card, batch)
            x = in_layout(x, args.layout)
            entry = {"batch": batch}
            for order, kernels in orders.items():
                ms = _time(model, dense, x, args.level, kernels, rounds=args.rounds, warmup=args.warmup, rng=rng)
                entry[order] = {**{f"{k}_ms": v for k, v in ms.items()}, "ratio": ms["candidate"] / ms["baseline"]}
            entry["ratio"] = (entry["baseline_first"]["ratio"] * entry["candidate_first"]["ratio"]) ** 0.5
            entry["candidate_vs_dense"] = statistics.median(
                [entry[o]["candidate_ms"] / entry[o]["dense_ms"] for o in orders]
            )
            report["batches"].append(entry)
            print(
                f"b={batch} candidate/baseline {entry['baseline_first']['ratio']:.3f} (baseline loaded first), "
                f"{entry['candidate_first']['ratio']:.3f} (candidate first), geometric mean {entry['ratio']:.3f}; "
                f"candidate/dense {entry['candidate_vs_dense']:.3f}",
                flush=True,
            )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
