"""Ablations that need a change inside the algorithm, run as experiments outside the library.

    python scripts/ablate_variant.py --variant uncentred --model fmnist-resnet34 --hyperplanes 6 8 \
        --limit 2000 --out results/variant-uncentred-fmnist-resnet34

``uncentred``: hash the raw channel vectors instead of centring them across channels first (HASTE.md
step 3). ``within``: centre each channel within itself (``haste.lsh.hash_codes_within``, the hash of
``merge="scaled"``) but merge with the paper's plain mean: the scaled merge's hash without its scale
factors. Runs the vectorised reference engine (HASTE_ENGINE=reference) with ``haste.functional``'s
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
from haste.lsh import hash_codes_within  # noqa: E402
from haste_lab.sweep import sweep  # noqa: E402


def uncentred_codes(regions: torch.Tensor, planes: torch.Tensor) -> torch.Tensor:
    """``sum_l 2**l * [<x_c, R_l> > 0]`` of the uncentred channel vectors (B, C, D) -> (B, C)."""
    proj = torch.matmul(regions, planes.to(regions.dtype).t())
    weights = 2 ** torch.arange(planes.shape[0], device=regions.device, dtype=torch.int64)
    return ((proj > 0).to(torch.int64) * weights).sum(dim=-1)


def euclidean_codes(width: float):
    """Quantised projections (p-stable / E2LSH style) instead of their signs: code = the tuple of
    ``floor(<z_c, R_l> / (width * rms) + u_l)``, z_c centred across channels as in HASTE, rms the root
    mean square of the region's centred projections (so ``width`` is relative and data-free), u_l a fixed
    uniform offset per hyperplane. Channels share a bucket only if their centred vectors are close in
    Euclidean distance, not just in angle: sign hashes put every flat (constant) channel of a region in
    one of two buckets whatever their values, which is what merging by averaging gets wrong."""

    def codes(regions: torch.Tensor, planes: torch.Tensor) -> torch.Tensor:
        proj = torch.matmul(regions, planes.to(regions.dtype).t())  # B, C, L
        proj = proj - proj.mean(dim=1, keepdim=True)
        rms = proj.pow(2).mean(dim=(1, 2), keepdim=True).sqrt().clamp_min(1e-12)
        gen = torch.Generator().manual_seed(planes.shape[1])
        offsets = torch.rand(planes.shape[0], generator=gen, dtype=torch.float64).to(proj.dtype)
        mix = torch.randint(1, 2**61, (planes.shape[0],), generator=gen, dtype=torch.int64) * 2 + 1
        q = torch.floor(proj / (width * rms) + offsets).to(torch.int64)
        return (q * mix.to(q.device)).sum(dim=-1)

    return codes


VARIANTS = {"uncentred": uncentred_codes, "within": hash_codes_within}
for _w in (0.125, 0.25, 0.5, 1.0, 2.0):
    VARIANTS[f"euclidean{_w:g}"] = euclidean_codes(_w)


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
