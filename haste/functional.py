"""HASTE convolution, reference implementation: vectorised over images, tiles and channels.

Per image and per P x P output tile: hash the channels of the tile's input region, merge colliding
channels (mean of inputs, sum of filter slices), run a valid convolution of the merged channels on
the region, add the bias once, and crop the tiles back into the output.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from .buckets import Buckets, bucketize
from .lsh import hash_codes
from .merge import merge_filters, merge_inputs
from .tiles import Geometry, assemble, geometry, regions


class Result(NamedTuple):
    """Output of a HASTE conv and what accounting needs: the tiling and buckets per tile (N*T,)."""

    output: torch.Tensor
    geometry: Geometry
    groups: torch.Tensor


def conv_padding(conv: torch.nn.Conv2d) -> tuple[int, int, int, int]:
    """The zero padding of ``conv`` as (left, right, top, bottom), 'same' and asymmetric included."""
    return tuple(int(p) for p in conv._reversed_padding_repeated_twice)


def merged_regions(
    x: torch.Tensor,
    kernel: tuple[int, int],
    *,
    stride: tuple[int, int],
    padding: tuple[int, int, int, int],
    patch: int,
    planes: torch.Tensor,
) -> tuple[Geometry, Buckets, torch.Tensor]:
    """The tiling, the buckets of every tile region (B = N * tiles rows) and the bucket means of the
    regions (B, G, region_h * region_w), G = the largest bucket count of any tile (zero-padded)."""
    geo = geometry(tuple(x.shape[2:]), kernel, stride, padding, patch)
    reg = regions(x, geo, padding)  # B, C, D
    buckets = bucketize(hash_codes(reg, planes))
    return geo, buckets, merge_inputs(reg, buckets.index, int(buckets.groups.max()))


def haste_conv2d(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    *,
    stride: tuple[int, int],
    padding: tuple[int, int, int, int],
    patch: int,
    planes: torch.Tensor,
) -> Result:
    """HASTE convolution of ``x`` (N, C, H, W) with ``weight`` (C_out, C, kh, kw).

    Args:
        stride: conv stride (sh, sw).
        padding: zero padding (left, right, top, bottom).
        patch: tile side P in output pixels.
        planes: (L, region_h * region_w) hyperplanes; L sets the compression.
    """
    n = x.shape[0]
    kernel = tuple(weight.shape[2:])
    geo, buckets, merged_x = merged_regions(x, kernel, stride=stride, padding=padding, patch=patch, planes=planes)
    b, width = merged_x.shape[:2]
    merged_w = merge_filters(weight, buckets.index, width)  # B, O, G, kh, kw
    rh, rw = geo.region
    out = F.conv2d(
        merged_x.reshape(1, b * width, rh, rw),
        merged_w.reshape(b * weight.shape[0], width, *kernel),
        stride=stride,
        groups=b,
    ).reshape(b, weight.shape[0], patch, patch)
    out = assemble(out, geo, n)
    if bias is not None:
        out = out + bias[None, :, None, None]
    return Result(out.contiguous(), geo, buckets.groups)
