"""Locality-sensitive hashing of channels with random hyperplanes through the origin.

Hyperplanes are sampled once per layer from a seed and never trained. ``max_hyperplanes`` rows are
sampled and a level uses the first L rows, so levels are nested: a code with more hyperplanes refines
the partition of a code with fewer.
"""

from __future__ import annotations

import torch

FAMILIES = ("ternary", "gaussian")


def sample_hyperplanes(
    rows: int, dim: int, *, family: str = "ternary", sparsity: float = 2 / 3, seed: int = 0
) -> torch.Tensor:
    """Sample ``rows`` hyperplane normals of dimension ``dim`` (float32, CPU), reproducibly from ``seed``.

    ``ternary``: entries 0 with probability ``sparsity``, +1 / -1 with probability (1 - sparsity) / 2
    each (hashing is then additions only). ``gaussian``: standard normal entries (SimHash).
    """
    if family not in FAMILIES:
        raise ValueError(f"hash must be one of {', '.join(FAMILIES)}; got {family!r}")
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must be in [0, 1); got {sparsity!r}")
    gen = torch.Generator().manual_seed(int(seed))
    if family == "gaussian":
        return torch.randn(rows, dim, generator=gen)
    u = torch.rand(rows, dim, generator=gen)
    half = (1.0 - sparsity) / 2
    planes = torch.zeros(rows, dim)
    planes[u < half] = 1.0
    planes[(u >= half) & (u < 2 * half)] = -1.0
    return planes


def hash_codes(regions: torch.Tensor, planes: torch.Tensor) -> torch.Tensor:
    """Integer code of every channel of every region.

    Args:
        regions: (B, C, D) uncentred channel vectors of B regions.
        planes: (L, D) hyperplane normals.

    Returns:
        (B, C) int64 codes, ``sum_l 2**l * [<z_c, R_l> > 0]`` where ``z_c`` is the channel centred
        across channels per pixel. Centring is applied after projecting (``<x_c - m, R> = <x_c, R> -
        <m, R>``), which is the same quantity without materialising the centred copy.
    """
    proj = torch.matmul(regions, planes.to(regions.dtype).t())  # B, C, L
    proj = proj - proj.mean(dim=1, keepdim=True)
    weights = 2 ** torch.arange(planes.shape[0], device=regions.device, dtype=torch.int64)
    return ((proj > 0).to(torch.int64) * weights).sum(dim=-1)


#: Relative tolerance of the within-channel hash: a centred projection counts as positive only above
#: ``WITHIN_TOLERANCE * |sum of the channel| * max |R|``, so that flat (constant) channels, whose exact
#: centred projections are 0, get code 0 whatever the rounding of the engine.
WITHIN_TOLERANCE = 1e-5


def hash_codes_within(regions: torch.Tensor, planes: torch.Tensor) -> torch.Tensor:
    """Codes of the channels centred *within* each channel (over its pixels) instead of across channels.

    ``sum_l 2**l * [<x_c - mean(x_c), R_l> > tol_c]``, computed as ``<x_c, R_l> - mean(x_c) * sum(R_l)``;
    ``tol_c = WITHIN_TOLERANCE * |sum(x_c)| * max|R|``. The code depends on the shape of the channel in the
    region, not on its offset or scale: the bucketing of the ``scaled`` merge (``merge.scale_factors``).
    """
    planes = planes.to(regions.dtype)
    proj = torch.matmul(regions, planes.t())  # B, C, L
    total = regions.sum(dim=2, keepdim=True)  # B, C, 1
    proj = proj - total / regions.shape[2] * planes.sum(dim=1)
    tol = WITHIN_TOLERANCE * total.abs() * planes.abs().max()
    weights = 2 ** torch.arange(planes.shape[0], device=regions.device, dtype=torch.int64)
    return ((proj > tol).to(torch.int64) * weights).sum(dim=-1)
