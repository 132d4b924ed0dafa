"""GPU engine: hashing, bucketing and input merging as vectorised torch ops on the device, then one
fused Triton kernel for the merged convolution that sums the filter columns of every bucket in
registers (no per-tile merged filters in memory; weighted by the channels' scale factors for the scaled
merge) and accumulates the tile's P x P outputs.

Selected automatically for CUDA tensors when Triton is importable. The same kernel runs on CPU
tensors under Triton's interpreter (TRITON_INTERPRET=1), which is how tests/test_engine.py checks it
against the reference implementation on machines without a GPU.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from ..functional import Result, haste_conv2d, merged_regions
from ..tiles import assemble


@triton.jit
def _merged_conv(
    merged_ptr, order_ptr, starts_ptr, groups_ptr, w_ptr, scale_ptr, out_ptr,
    C, O, GMAX, D, RW, SH, SW,  # noqa: E741
    KH: tl.constexpr, KW: tl.constexpr, P: tl.constexpr, PP: tl.constexpr, OB: tl.constexpr, SCALED: tl.constexpr,
):  # fmt: skip
    """out[b, o, p] = sum_g sum_(ky,kx) (sum_{c in g} a[b, c] W[o, c, ky, kx]) * merged[b, g, p + (ky, kx)],
    a = the scale factors when SCALED, else 1."""
    b = tl.program_id(0)
    ob = tl.program_id(1)
    offs_o = ob * OB + tl.arange(0, OB)
    mask_o = offs_o < O
    pix = tl.arange(0, PP)
    mask_p = pix < P * P
    base = (pix // P) * SH * RW + (pix % P) * SW
    acc = tl.zeros((OB, PP), dtype=tl.float32)
    groups = tl.load(groups_ptr + b)
    for g in range(0, groups):
        first = tl.load(starts_ptr + b * (GMAX + 1) + g)
        last = tl.load(starts_ptr + b * (GMAX + 1) + g + 1)
        for ky in tl.static_range(KH):
            for kx in tl.static_range(KW):
                wcol = tl.zeros((OB,), dtype=tl.float32)
                for i in range(first, last):
                    c = tl.load(order_ptr + b * C + i)
                    wc = tl.load(w_ptr + (offs_o * C + c) * (KH * KW) + ky * KW + kx, mask=mask_o, other=0.0)
                    if SCALED:
                        wc = wc * tl.load(scale_ptr + b * C + c)
                    wcol += wc
                xv = tl.load(merged_ptr + (b * GMAX + g) * D + base + ky * RW + kx, mask=mask_p, other=0.0)
                acc += wcol[:, None] * xv[None, :]
    out = out_ptr + b * O * P * P + offs_o[:, None] * (P * P) + pix[None, :]
    tl.store(out, acc, mask=mask_o[:, None] & mask_p[None, :])


def conv2d(
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
    """HASTE convolution with the fused Triton kernel (same arguments as haste.functional.haste_conv2d). Needs
    CUDA tensors (RuntimeError otherwise), or Triton's interpreter (TRITON_INTERPRET=1) for CPU tensors."""
    if x.device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        raise RuntimeError(
            f"the triton engine needs CUDA tensors; got {x.device.type} tensors (on the CPU use the cpu or "
            "reference engine, or Triton's interpreter: TRITON_INTERPRET=1)"
        )
    if x.shape[0] == 0:  # no images, nothing to hash: the reference returns the empty output
        return haste_conv2d(x, weight, bias, stride=stride, padding=padding, patch=patch, planes=planes, merge=merge)
    n, c = x.shape[:2]
    o, _, kh, kw = weight.shape
    geo, buckets, merged, scale = merged_regions(
        x.float(), (kh, kw), stride=stride, padding=padding, patch=patch, planes=planes, merge=merge
    )
    merged = merged.contiguous()  # B, G, D
    b, width = merged.shape[:2]
    order = buckets.index.argsort(dim=1, stable=True).to(torch.int32).contiguous()  # channels by bucket
    counts = torch.zeros(b, width, dtype=torch.int64, device=x.device).scatter_add_(
        1, buckets.index, torch.ones_like(buckets.index)
    )
    starts = torch.cat([counts.new_zeros(b, 1), counts.cumsum(1)], 1).to(torch.int32).contiguous()
    out = torch.empty(b, o, patch, patch, device=x.device, dtype=torch.float32)
    block_o = min(64, triton.next_power_of_2(o))
    grid = (b, triton.cdiv(o, block_o))
    _merged_conv[grid](
        merged, order, starts, buckets.groups.to(torch.int32).contiguous(), weight.detach().float().contiguous(),
        merged if scale is None else scale.contiguous(), out,
        c, o, width, geo.region[0] * geo.region[1], geo.region[1], stride[0], stride[1],
        KH=kh, KW=kw, P=patch, PP=triton.next_power_of_2(patch * patch), OB=block_o, SCALED=scale is not None,
    )  # fmt: skip
    y = assemble(out, geo, n)
    if bias is not None:
        y = y + bias.detach().float()[None, :, None, None]
    return Result(y.to(x.dtype).contiguous(), geo, buckets.groups)
