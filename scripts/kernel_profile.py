"""Where the fused CPU kernel spends its time, layer by layer: each HASTE layer of a model at a level's table
(``plans={}``), on the input it sees inside the model, against its dense conv.

    python scripts/kernel_profile.py --model fmnist-resnet34 --level high --batch 1 8 \\
        --out results/kernel-profile-fmnist-resnet34.json

Per layer and batch: the wall-clock median of the dense conv (``conv._conv_forward``, without the BatchNorm a
layer may have folded in: ``haste.fold``), of the HASTE layer (``layer(x)`` at the level: the module's Python path
plus the kernel, which applies the folded BatchNorm as it writes) and of the kernel called directly, the
three interleaved in a new random order every round (seed 0) after warm-up; then, in the profiling build
(``-DHASTE_PROFILE``), the kernel's stages per call: thread time summed over threads for the per-tile stages,
the calling thread's wall time for ``prepare`` (padding, planes, allocations), ``loop`` (the tile loop) and
``finish`` (per-image sums). ``python_us`` = layer - kernel.

With ``--hyperplanes 16 12 8`` every layer runs at each of these uniform settings instead (the level's table
still decides which layers run HASTE and the inputs they see), with its mean buckets per tile, to show which
stages' time follows the bucket count:

    python scripts/kernel_profile.py --model fmnist-resnet34 --level medium --batch 1 --hyperplanes 16 14 12 10 8 \
        --out results/kernel-profile-fmnist-resnet34-hyperplanes.json
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
from pathlib import Path

import torch

from haste import engine
from haste.cli import non_negative_int, positive_int
from haste.convert import convert
from haste.levels import LEVELS, compression
from haste.profile import profile
from haste_lab.bench import _real_images, load_model
from haste_lab.interleaved import interleaved_times
from haste_lab.layer_times import layer_inputs
from haste_lab.layout import LAYOUTS, in_layout


def _median_us(times: list[float]) -> float:
    return statistics.median(times) * 1e6


def profile_layers(
    model, x: torch.Tensor, level: str, *, rounds: int, warmup: int, names=None, hyperplanes: int | None = None
) -> list[dict]:
    """One row per HASTE layer of ``model`` (converted, ``plans={}``) running at ``level`` on the batch ``x``, or
    at ``hyperplanes`` (those of ``level``'s layers that run HASTE, on the inputs they see at ``level``)."""
    inputs = layer_inputs(model, x, level)
    layers = [(m, inp) for m, inp in inputs.items() if m.levels[level] > 0 and (not names or m.name in names)]
    rows = []
    shuffle = random.Random(0)
    kernel = engine.profiling_kernel()
    setting = compression(level) if hyperplanes is None else compression(hyperplanes=hyperplanes)
    with torch.inference_mode(), setting:
        for layer, inp in layers:
            conv, L = layer.conv, hyperplanes or layer.levels[level]
            weight_t, bias, planes, scale = layer._cpu_operands(L, layer._foldable())  # as the layer calls it
            ops = (weight_t, bias, planes, *layer._static, scale)
            variants = {
                "dense_us": lambda conv=conv, inp=inp: conv._conv_forward(inp, conv.weight, conv.bias),
                "layer_us": lambda layer=layer, inp=inp: layer(inp),
                "kernel_us": lambda inp=inp, ops=ops: engine.cpu_conv2d(inp, *ops),
            }
            times = interleaved_times(variants, rounds=rounds, warmup=warmup, rng=shuffle)
            row = {"layer": layer.name, "channels": conv.in_channels, "input": list(inp.shape), "hyperplanes": L}
            row.update({k: _median_us(v) for k, v in times.items()})
            row["python_us"] = row["layer_us"] - row["kernel_us"]
            with profile(layer) as report:
                layer(inp)
            row["mean_buckets"] = next(iter(report.layers.values())).mean_buckets
            row["ratio"] = row["layer_us"] / row["dense_us"]
            with engine.using_kernel(kernel):
                for _ in range(warmup):
                    layer(inp)
                kernel.stage_seconds(True)
                for _ in range(rounds):
                    layer(inp)
                row["stages_us"] = {k: v / rounds * 1e6 for k, v in zip(engine.STAGES, kernel.stage_seconds(True))}
            rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="fmnist-resnet34", help="reference model or torchvision name")
    parser.add_argument("--level", default="high", choices=[lv for lv in LEVELS if lv != "off"])
    parser.add_argument("--batch", nargs="+", type=positive_int, default=[1, 8], help="batch sizes")
    parser.add_argument("--layers", nargs="*", default=None, help="only these layers (default: every HASTE layer)")
    parser.add_argument(
        "--hyperplanes", nargs="+", type=positive_int, default=None,
        help="run every layer at each of these uniform settings instead of the level's table",
    )  # fmt: skip
    parser.add_argument("--rounds", type=positive_int, default=101)
    parser.add_argument("--warmup", type=non_negative_int, default=10)
    parser.add_argument("--threads", type=positive_int, default=2)
    parser.add_argument("--layout", choices=LAYOUTS, default="channels_last")
    parser.add_argument("--out", type=Path, required=True, help="report (.json)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if not engine.cpu_kernel_available():
        print(f"the fused CPU kernel is unavailable: {engine.unavailable}", file=sys.stderr)
        return 1
    model, card, weights = load_model(args.model)
    convert(model, plans={})
    model = in_layout(model.eval(), args.layout)
    report = {
        "model": args.model,
        "weights": weights,
        "level": args.level,
        "hyperplanes": args.hyperplanes,
        "protocol": f"torch threads {args.threads}; {args.layout}; per layer {args.warmup} warm-up rounds, then "
        f"{args.rounds} rounds of dense conv, HASTE layer and kernel in a new random order each (seed 0); medians. "
        "Stages from the profiling build, per call: per-tile stages in thread time summed over threads; "
        "prepare, loop and finish in the calling thread's wall time",
        "batches": [],
    }
    for batch in args.batch:
        x, source = _real_images(card, batch)
        for hyperplanes in args.hyperplanes or [None]:
            rows = profile_layers(model, x, args.level, rounds=args.rounds, warmup=args.warmup, names=args.layers,
                                  hyperplanes=hyperplanes)  # fmt: skip
            entry = {"batch": batch, "images": source, "layers": rows}
            report["batches"].append(entry if hyperplanes is None else {**entry, "hyperplanes": hyperplanes})
            for r in rows:
                stages = " ".join(f"{k}={v:.0f}" for k, v in r["stages_us"].items() if v >= 0.5)
                print(f"b={batch} {r['layer']:16s} L={r['hyperplanes']:2d} buckets {r['mean_buckets']:6.1f} dense "
                      f"{r['dense_us']:6.0f} layer {r['layer_us']:6.0f} kernel {r['kernel_us']:6.0f} us  ratio "
                      f"{r['ratio']:.2f}  [{stages}]")  # fmt: skip
            total = {k: sum(r[k] for r in rows) for k in ("dense_us", "layer_us", "kernel_us")}
            print(f"b={batch} all layers: dense {total['dense_us']:.0f} layer {total['layer_us']:.0f} kernel "
                  f"{total['kernel_us']:.0f} us")  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
