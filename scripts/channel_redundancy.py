"""How redundant are the input channels of each conv, per tile region? The quantity HASTE lives on.

    python scripts/channel_redundancy.py --model fmnist-resnet18 --out results/redundancy-fmnist-resnet18.json

For every conv that haste.convert would replace, on the first ``limit`` calibration images: cut the input
into the P x P tiles' regions (haste.tiles), centre each region's channel vectors across channels (as
HASTE hashes them), and report per layer the channels C, the fraction of channels that are all zero in a
region (merged for free), and the fraction of channel pairs whose centred vectors have cosine similarity
above 0.9 / 0.95 / 0.99 and their mean relative distance ||z_a - z_b|| / ||z_a||. Sign-LSH merges two
channels with probability (1 - angle / pi)^L, so few near-duplicate pairs means little merging at a
harmless L.
"""

from __future__ import annotations

import argparse
import json
import sys

import torch
from torch import nn

from haste import zoo
from haste.convert import skip_reason
from haste.functional import conv_padding
from haste.options import Options
from haste.tiles import geometry, regions
from haste_lab.evaluate import load_data


@torch.no_grad()
def redundancy(model: nn.Module, x: torch.Tensor, patch: int = 4, start_layer: int = 1) -> dict:
    convs = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    options = Options(start_layer=start_layer)
    chosen = {n: m for i, (n, m) in enumerate(convs) if not skip_reason(m, i, options)}
    stats = {}

    def hook(name):
        def fn(module, args, output):
            inp = args[0]
            pad = conv_padding(module)
            geo = geometry(tuple(inp.shape[2:]), module.kernel_size, module.stride, pad, patch)
            reg = regions(inp, geo, pad).double()  # B, C, D
            zero = (reg.abs().amax(dim=2) == 0).double().mean()
            z = reg - reg.mean(dim=1, keepdim=True)
            norm = z.norm(dim=2, keepdim=True).clamp_min(1e-12)
            cos = (z / norm) @ (z / norm).transpose(1, 2)  # B, C, C
            c = cos.shape[1]
            off = ~torch.eye(c, dtype=torch.bool)
            pairs = cos[:, off]
            dist = torch.cdist(z, z)[:, off] / norm.expand(-1, -1, c)[:, off]
            s = stats.setdefault(name, {"channels": c, "n": 0, "zero": 0.0, "cos>0.9": 0.0, "cos>0.95": 0.0,
                                        "cos>0.99": 0.0, "rel_dist": 0.0})  # fmt: skip
            s["n"] += 1
            s["zero"] += float(zero)
            for t in (0.9, 0.95, 0.99):
                s[f"cos>{t}"] += float((pairs > t).double().mean())
            s["rel_dist"] += float(dist.median())

        return fn

    handles = [m.register_forward_hook(hook(n)) for n, m in chosen.items()]
    try:
        model(x)
    finally:
        for h in handles:
            h.remove()
    out = {}
    for name, s in stats.items():
        n = s.pop("n")
        out[name] = {k: (v / n if k != "channels" else v) for k, v in s.items()}
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--limit", type=int, default=200)
    p.add_argument("--patch-size", type=int, default=4)
    p.add_argument("--out")
    args = p.parse_args(argv)
    model = zoo.load(args.model)
    data = load_data(model.haste_card, split="calibration", limit=args.limit)
    result = redundancy(model, data.x, patch=args.patch_size)
    print(f"{'layer':24s} {'C':>4s} {'zero':>6s} {'cos>.9':>7s} {'cos>.95':>7s} {'cos>.99':>7s} {'med rel dist':>12s}")
    for name, s in result.items():
        print(f"{name:24s} {s['channels']:4d} {s['zero']:6.3f} {s['cos>0.9']:7.3f} {s['cos>0.95']:7.3f} "
              f"{s['cos>0.99']:7.3f} {s['rel_dist']:12.3f}")  # fmt: skip
    if args.out:
        record = {"model": args.model, "images": data.size, "patch_size": args.patch_size, "layers": result,
                  "command": "python scripts/channel_redundancy.py " + " ".join(argv or sys.argv[1:])}  # fmt: skip
        with open(args.out, "w") as f:
            json.dump(record, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
