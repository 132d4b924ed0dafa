"""FLOPs accounting. All counts are multiply-adds (MACs), torchvision's GFLOPS convention: one
multiply-add is one FLOP; an addition, comparison or subtraction of the hashing and merging overhead
is also counted as one.
"""

from __future__ import annotations

import functools
import math

import torch
from torch import nn

from .tiles import Geometry


def conv_flops(module: nn.Conv2d, output: torch.Tensor) -> int:
    """Dense multiply-adds per image of ``module`` that produced ``output`` (N, C_out, H, W), N >= 0, or
    unbatched (C_out, H, W)."""
    kh, kw = module.kernel_size
    per_out = module.in_channels // module.groups * kh * kw
    return math.prod(output.shape[-3:]) * per_out


def linear_flops(module: nn.Linear, output: torch.Tensor) -> int:
    """Dense multiply-adds per image of ``module`` that produced ``output`` (N, ..., out_features), N >= 0, or
    unbatched (out_features,)."""
    return math.prod(output.shape[1:] if output.dim() > 1 else output.shape) * module.in_features


@functools.lru_cache(maxsize=256)
def _tile_weights(geo: Geometry) -> torch.Tensor:
    """(tiles, 2) float64: valid output pixels of every tile, and a column of ones."""
    valid = geo.valid_pixels().to(torch.float64)
    return torch.stack([valid, torch.ones_like(valid)], 1)


@functools.lru_cache(maxsize=256)
def layer_constants(geo: Geometry, c_in: int, c_out: int, used_planes_nnz: int, hyperplanes: int, merge: str):
    """(dense, per_sum, per_bucket, overhead_max) of one HASTE conv tiled as ``geo``, multiply-adds: per image
    ``dense``, ``executed = per_sum * S0`` and ``overhead = overhead_max - per_bucket * S1`` where S0, S1 are the
    image's ``tile_sums`` (buckets x valid output pixels, and buckets, summed over its tiles); ``haste.profile``
    counts every call so (``haste.profile.Counted``).

    Args:
        used_planes_nnz: non-zero entries in the hyperplanes used (ternary: additions per channel).
        hyperplanes: L.
        merge: "mean" or "scaled" (adds the channel sums, C * region pixels, and the scale factors,
            at most 3 * (C - G) * region pixels: dot products with the bucket mean and its norm).

    Overhead per tile: projection (C * nnz), centring the projections (2 * C * L: mean over channels
    and subtraction), sorting the codes (C * ceil(log2 C)), input merge (C * region pixels) and
    filter merge (C_out * (C - G) * k^2): ``overhead_max`` is the overhead as if every tile had 0 buckets, and
    each bucket saves ``per_bucket`` of it. Only the valid output pixels of edge tiles are counted for the
    dense and merged convolutions (``per_sum = C_out * k^2`` multiply-adds per bucket and output pixel).
    """
    kk = geo.kernel[0] * geo.kernel[1]
    valid_total = float(geo.valid_pixels().sum())
    region = geo.region[0] * geo.region[1]
    per_tile = (
        c_in * used_planes_nnz + 2 * c_in * hyperplanes + c_in * math.ceil(math.log2(max(c_in, 2))) + c_in * region
    )
    per_bucket = float(c_out * kk)
    if merge == "scaled":  # channel sums for the within-channel centring, scale factors (dot products)
        per_tile += c_in * region + 3 * c_in * region
        per_bucket += 3 * region
    dense = float(c_out * c_in * kk) * valid_total
    return dense, float(c_out * kk), per_bucket, float(geo.count * (per_tile + c_out * kk * c_in))


def tile_sums(geo: Geometry, groups: torch.Tensor) -> list[list[float]]:
    """Per image [sum over tiles of buckets x valid output pixels, sum of buckets] from the
    (N * tiles,) buckets per tile (the CPU kernel returns these sums itself)."""
    return (groups.reshape(-1, geo.count).to(device="cpu", dtype=torch.float64) @ _tile_weights(geo)).tolist()
