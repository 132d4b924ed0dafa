"""HASTE convolution, reference implementation: vectorised over images, tiles and channels.

Per image and per P x P output tile: hash the channels of the tile's input region, merge colliding
channels (mean of inputs, sum of filter slices), run a valid convolution of the merged channels on
the region, add the bias once, and crop the tiles back into the output.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from .buckets import bucketize
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
    n, c = x.shape[:2]
    kernel = tuple(weight.shape[2:])
    geo = geometry(tuple(x.shape[2:]), kernel, stride, padding, patch)
    reg = regions(x, geo, padding)  # B, C, D
    buckets = bucketize(hash_codes(reg, planes))
    width = int(buckets.groups.max())
    merged_x = merge_inputs(reg, buckets.index, width)  # B, G, D
    merged_w = merge_filters(weight, buckets.index, width)  # B, O, G, kh, kw
    b = reg.shape[0]
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
