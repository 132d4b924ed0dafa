"""Tile geometry: cut a convolution's output into P x P tiles and its padded input into the
(P-1)*S + k regions those tiles depend on, and put tiles back together.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Geometry:
    """Tiling of one conv layer for one input size.

    Attributes are in pixels: ``out`` is the output size (h, w), ``tiles`` the number of tiles per
    axis, ``region`` the input region side per axis, ``step`` the input distance between regions.
    """

    patch: int
    kernel: tuple[int, int]
    stride: tuple[int, int]
    out: tuple[int, int]
    tiles: tuple[int, int]
    region: tuple[int, int]
    step: tuple[int, int]

    @property
    def count(self) -> int:
        """Tiles per image."""
        return self.tiles[0] * self.tiles[1]

    def padded_input(self) -> tuple[int, int]:
        """Input size (after conv padding and extra bottom/right padding) that the tiles cover."""
        return tuple((t * self.patch - 1) * s + k for t, s, k in zip(self.tiles, self.stride, self.kernel))

    def valid_pixels(self, device: torch.device | None = None) -> torch.Tensor:
        """Number of real (not cropped) output pixels of every tile, shape (tiles_h * tiles_w,)."""
        rows = [min(self.patch, self.out[0] - i * self.patch) for i in range(self.tiles[0])]
        cols = [min(self.patch, self.out[1] - j * self.patch) for j in range(self.tiles[1])]
        return (torch.tensor(rows)[:, None] * torch.tensor(cols)[None, :]).flatten().to(device)


def output_size(
    size: tuple[int, int], kernel: tuple[int, int], stride: tuple[int, int], padding: tuple[int, int, int, int]
) -> tuple[int, int]:
    """Conv output (h, w) of an input of ``size`` padded by (left, right, top, bottom); ValueError if the
    padded input is smaller than the kernel."""
    left, right, top, bottom = padding
    padded = (size[0] + top + bottom, size[1] + left + right)
    out = tuple((p - k) // s + 1 for p, k, s in zip(padded, kernel, stride))
    if min(out) < 1:
        raise ValueError(f"input of size {tuple(size)} is smaller than the kernel {tuple(kernel)} after padding")
    return out


def geometry(
    size: tuple[int, int],
    kernel: tuple[int, int],
    stride: tuple[int, int],
    padding: tuple[int, int, int, int],
    patch: int,
) -> Geometry:
    """Tiling of a conv with ``kernel``/``stride`` on an input of ``size`` (h, w) padded by
    ``padding`` = (left, right, top, bottom), in tiles of ``patch`` x ``patch`` output pixels."""
    out = output_size(size, kernel, stride, padding)
    tiles = tuple(math.ceil(o / patch) for o in out)
    region = tuple((patch - 1) * s + k for s, k in zip(stride, kernel))
    step = tuple(patch * s for s in stride)
    return Geometry(patch, kernel, stride, out, tiles, region, step)


def regions(x: torch.Tensor, geo: Geometry, padding: tuple[int, int, int, int]) -> torch.Tensor:
    """Cut ``x`` (N, C, H, W) into tile regions: returns (N * tiles, C, region_h * region_w).

    ``padding`` is the conv's own (left, right, top, bottom) zero padding; the bottom/right edge is
    padded further so that the tiles cover the whole output.
    """
    n, c, h, w = x.shape
    left, right, top, bottom = padding
    need_h, need_w = geo.padded_input()
    extra_b = need_h - (h + top + bottom)
    extra_r = need_w - (w + left + right)
    # Cropping (negative extra) happens when stride does not divide the input exactly.
    x = F.pad(x, (left, right + extra_r, top, bottom + extra_b))
    rh, rw = geo.region
    patches = x.unfold(2, rh, geo.step[0]).unfold(3, rw, geo.step[1])  # N, C, Th, Tw, rh, rw
    return patches.permute(0, 2, 3, 1, 4, 5).reshape(n * geo.count, c, rh * rw)


def assemble(tiles: torch.Tensor, geo: Geometry, n: int) -> torch.Tensor:
    """Put per-tile outputs (N * tiles, C_out, P, P) back into (N, C_out, H_out, W_out), cropping
    the padding tiles."""
    p = geo.patch
    th, tw = geo.tiles
    c_out = tiles.shape[1]
    out = tiles.reshape(n, th, tw, c_out, p, p).permute(0, 3, 1, 4, 2, 5).reshape(n, c_out, th * p, tw * p)
    return out[:, :, : geo.out[0], : geo.out[1]]
