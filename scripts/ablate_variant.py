"""Ablations that need a change inside the algorithm, run as experiments outside the library.

    python scripts/ablate_variant.py --variant uncentred --model fmnist-resnet34 --hyperplanes 6 8 \
        --limit 2000 --out results/variant-uncentred-fmnist-resnet34

``uncentred``: hash the raw channel vectors instead of centring them across channels first (HASTE.md
step 3). Runs the vectorised reference engine (HASTE_ENGINE=reference) with ``haste.functional``'s
hash function swapped for the uncentred one; everything else (buckets, merging, FLOPs accounting) is
the library's. Writes the same JSON/CSV/PNG as ``haste sweep`` (calibration split by default).
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys

os.environ["HASTE_ENGINE"] = "reference"  # before haste is imported: the fused kernel centres internally

import torch  # noqa: E402

import haste.functional  # noqa: E402
from haste.sweep import sweep  # noqa: E402


def uncentred_codes(regions: torch.Tensor, planes: torch.Tensor) -> torch.Tensor:
    """``sum_l 2**l * [<x_c, R_l> > 0]`` of the uncentred channel vectors (B, C, D) -> (B, C)."""
    proj = torch.matmul(regions, planes.to(regions.dtype).t())
    weights = 2 ** torch.arange(planes.shape[0], device=regions.device, dtype=torch.int64)
    return ((proj > 0).to(torch.int64) * weights).sum(dim=-1)


VARIANTS = {"uncentred": uncentred_codes}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variant", choices=VARIANTS, required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--hyperplanes", type=int, nargs="+", required=True)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--split", default="calibration")
    p.add_argument("--limit", type=int)
    p.add_argument("--batch-size", type=int, default=250)
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    haste.functional.hash_codes = VARIANTS[args.variant]
    command = shlex.join(["python", "scripts/ablate_variant.py", *(sys.argv[1:] if argv is None else argv)])
    result = sweep(
        args.model,
        hyperplanes=args.hyperplanes,
        seeds=args.seeds,
        split=args.split,
        limit=args.limit,
        batch_size=args.batch_size,
        out=args.out,
        command=command,
    )
    print(f"wrote {args.out}.json ({len(result['rows'])} runs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
