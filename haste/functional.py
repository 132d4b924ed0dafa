"""HASTE convolution, reference implementation: vectorised over images, tiles and channels.

Per image and per P x P output tile: hash the channels of the tile's input region, merge colliding
channels (mean of inputs, sum of filter slices), run a valid convolution of the merged channels on
the region, add the bias once, and crop the tiles back into the output.

``merge="scaled"`` (this project's variant, not the paper's): hash each channel centred within itself
(``lsh.hash_codes_within``: the code sees the channel's shape, not its offset or scale) and weight each
member's filter slice by its least-squares scale against the bucket mean (``merge.scale_factors``).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from .buckets import Buckets, bucketize
from .lsh import hash_codes, hash_codes_within
from .merge import merge_filters, merge_inputs, scale_factors
from .tiles import Geometry, assemble, geometry, regions


class Result(NamedTuple):
    """Output of a HASTE conv and what accounting needs: the tiling and buckets per tile (N*T,)."""

    output: torch.Tensor
    geometry: Geometry
    groups: torch.Tensor


MERGES = ("mean", "scaled")


def check_merge(merge: str) -> str:
    """Return ``merge`` if it is one of ``MERGES``, else raise ValueError saying what is accepted."""
    if merge not in MERGES:
        raise ValueError(f"merge must be one of {', '.join(MERGES)}; got {merge!r}")
    return merge


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
    merge: str = "mean",
) -> tuple[Geometry, Buckets, torch.Tensor, torch.Tensor | None]:
    """The tiling, the buckets of every tile region (B = N * tiles rows), the bucket means of the
    regions (B, G, region_h * region_w), G = the largest bucket count of any tile (zero-padded), and
    for ``merge="scaled"`` the (B, C) scale of every channel's filter slice (None for ``mean``)."""
    check_merge(merge)
    geo = geometry(tuple(x.shape[2:]), kernel, stride, padding, patch)
    reg = regions(x, geo, padding)  # B, C, D
    buckets = bucketize((hash_codes if merge == "mean" else hash_codes_within)(reg, planes))
    means = merge_inputs(reg, buckets.index, int(buckets.groups.max()))
    scale = scale_factors(reg, buckets.index, means) if merge == "scaled" else None
    return geo, buckets, means, scale


def haste_conv2d(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    *,
    stride: tuple[int, int],
    padding: tuple[int, int, int, int],
    patch: int,
    planes: torch.Tensor,
    merge: str = "mean",
) -> Result:
    """HASTE convolution of ``x`` (N, C, H, W) with ``weight`` (C_out, C, kh, kw).

    Args:
        stride: conv stride (sh, sw).
        padding: zero padding (left, right, top, bottom).
        patch: tile side P in output pixels.
        planes: (L, region_h * region_w) hyperplanes; L sets the compression.
        merge: "mean" (the paper) or "scaled" (see the module docstring).
    """
    n = x.shape[0]
    kernel = tuple(weight.shape[2:])
    if n == 0:  # no images, nothing to hash: the dense conv gives the empty output (and its autograd graph)
        geo = geometry(tuple(x.shape[2:]), kernel, stride, padding, patch)
        out = F.conv2d(F.pad(x, padding), weight, bias, stride=stride)
        return Result(out, geo, torch.zeros(0, dtype=torch.long, device=x.device))
    geo, buckets, merged_x, scale = merged_regions(
        x, kernel, stride=stride, padding=padding, patch=patch, planes=planes, merge=merge
    )
    b, width = merged_x.shape[:2]
    merged_w = merge_filters(weight, buckets.index, width, scale)  # B, O, G, kh, kw
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
