"""Buckets: channels of one region whose hash codes are equal."""

from __future__ import annotations

from typing import NamedTuple

import torch


class Buckets(NamedTuple):
    """``index[b, c]`` is the bucket (0..groups[b]-1) of channel c in region b; ``groups[b]`` is G."""

    index: torch.Tensor
    groups: torch.Tensor


def bucketize(codes: torch.Tensor) -> Buckets:
    """Number the distinct codes of every row of ``codes`` (B, C) from 0, in increasing code order."""
    ordered, order = codes.sort(dim=1)
    new = torch.ones_like(ordered, dtype=torch.int64)
    new[:, 1:] = (ordered[:, 1:] != ordered[:, :-1]).to(torch.int64)
    rank = new.cumsum(dim=1) - 1
    index = torch.empty_like(rank).scatter_(1, order, rank)
    return Buckets(index=index, groups=rank[:, -1] + 1)
