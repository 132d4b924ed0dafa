"""Merging the channels of a bucket: mean of their (uncentred) inputs, sum of their filter slices.

The ``scaled`` merge (not in the paper) weights each filter slice by the channel's least-squares scale
against the bucket mean (``scale_factors``), so members that differ by a factor are merged exactly.
"""

from __future__ import annotations

import torch


def merge_inputs(regions: torch.Tensor, index: torch.Tensor, width: int) -> torch.Tensor:
    """Mean of the channels of every bucket.

    Args:
        regions: (B, C, D) channel vectors.
        index: (B, C) bucket of every channel.
        width: number of output buckets (>= max groups); empty buckets are zero.

    Returns:
        (B, width, D).
    """
    b, c, d = regions.shape
    sums = regions.new_zeros(b, width, d).scatter_add_(1, index[:, :, None].expand(b, c, d), regions)
    counts = regions.new_zeros(b, width).scatter_add_(1, index, regions.new_ones(b, c))
    return sums / counts.clamp_min(1)[:, :, None]


def merge_filters(
    weight: torch.Tensor, index: torch.Tensor, width: int, scale: torch.Tensor | None = None
) -> torch.Tensor:
    """Sum of the filter slices of every bucket, per region (weighted by ``scale`` when given).

    Args:
        weight: (C_out, C, kh, kw) conv weight.
        index: (B, C) bucket of every input channel.
        width: number of output buckets.
        scale: (B, C) factor of every channel's slice (``scale_factors``), or None for a plain sum.

    Returns:
        (B, C_out, width, kh, kw).
    """
    c_out, c, kh, kw = weight.shape
    b = index.shape[0]
    flat = weight.permute(1, 0, 2, 3).reshape(1, c, c_out * kh * kw).expand(b, c, -1)
    if scale is not None:
        flat = flat * scale[:, :, None]
    merged = weight.new_zeros(b, width, c_out * kh * kw).scatter_add_(
        1, index[:, :, None].expand(b, c, c_out * kh * kw), flat
    )
    return merged.reshape(b, width, c_out, kh, kw).transpose(1, 2)


def scale_factors(regions: torch.Tensor, index: torch.Tensor, means: torch.Tensor) -> torch.Tensor:
    """Least-squares scale of every channel against its bucket's mean: ``alpha_c = <x_c, u_b> / <u_b, u_b>``
    (1 where ``u_b`` is zero, which falls back to the plain mean merge).

    Args:
        regions: (B, C, D) channel vectors; index: (B, C) buckets; means: (B, G, D) ``merge_inputs``.

    Returns:
        (B, C). ``x_c ~ alpha_c * u_b``, exact for singletons and for members that are multiples of one
        another; the merged filter slice is then ``sum_c alpha_c * W[:, c]`` (``merge_filters(scale=...)``).
    """
    b, c, d = regions.shape
    u = means.gather(1, index[:, :, None].expand(b, c, d))
    norm = (u * u).sum(dim=2)
    alpha = (regions * u).sum(dim=2) / norm.clamp_min(torch.finfo(regions.dtype).tiny)
    return torch.where(norm > 0, alpha, torch.ones_like(alpha))
