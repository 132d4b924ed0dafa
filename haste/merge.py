"""Merging the channels of a bucket: mean of their (uncentred) inputs, sum of their filter slices."""

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


def merge_filters(weight: torch.Tensor, index: torch.Tensor, width: int) -> torch.Tensor:
    """Sum of the filter slices of every bucket, per region.

    Args:
        weight: (C_out, C, kh, kw) conv weight.
        index: (B, C) bucket of every input channel.
        width: number of output buckets.

    Returns:
        (B, C_out, width, kh, kw).
    """
    c_out, c, kh, kw = weight.shape
    b = index.shape[0]
    flat = weight.permute(1, 0, 2, 3).reshape(1, c, c_out * kh * kw).expand(b, c, -1)
    merged = weight.new_zeros(b, width, c_out * kh * kw).scatter_add_(
        1, index[:, :, None].expand(b, c, c_out * kh * kw), flat
    )
    return merged.reshape(b, width, c_out, kh, kw).transpose(1, 2)
