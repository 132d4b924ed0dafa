"""HasteConv2d: a drop-in wrapper around a pre-trained ``nn.Conv2d`` (kept unchanged as ``.conv``)."""

from __future__ import annotations

import torch
from torch import nn

from . import engine
from . import levels as _levels
from .flops import haste_flops, tile_sums
from .functional import check_merge, conv_padding
from .lsh import sample_hyperplanes
from .profile import active
from .tiles import Geometry, geometry


class HasteConv2d(nn.Module):
    """Runs the wrapped conv with HASTE channel merging at the level of the current context.

    Args:
        conv: the pre-trained conv (groups=1, dilation=1, zero padding).
        name: the layer's qualified name in its model (reports, per-layer schedules).
        patch_size: tile side P in output pixels.
        hash: hyperplane family, "ternary" or "gaussian".
        sparsity: probability of a zero entry of a ternary hyperplane.
        seed: seed of this layer's hyperplanes.
        max_hyperplanes: rows sampled; a level uses the first L.
        levels: this layer's table level name -> hyperplanes (see ``levels.resolve_table``).
        merge: "mean" (the paper) or "scaled" (within-channel hashing, least-squares scaled filter merge;
            see ``haste.functional``).
    """

    def __init__(
        self,
        conv: nn.Conv2d,
        *,
        name: str = "",
        patch_size: int = 4,
        hash: str = "ternary",
        sparsity: float = 2 / 3,
        seed: int = 0,
        max_hyperplanes: int = _levels.MAX_HYPERPLANES,
        levels: dict[str, int] | None = None,
        merge: str = "mean",
    ) -> None:
        super().__init__()
        if isinstance(patch_size, bool) or not isinstance(patch_size, int) or patch_size < 1:
            raise ValueError(f"patch_size must be a positive integer; got {patch_size!r}")
        self.conv = conv
        self.name = name
        self.patch_size = patch_size
        self.hash = hash
        self.sparsity = sparsity
        self.seed = seed
        self.max_hyperplanes = max_hyperplanes
        self.merge = check_merge(merge)
        self.levels = dict(levels) if levels is not None else _levels.resolve_table(None, name)
        self.padding = conv_padding(conv)
        region = tuple((patch_size - 1) * s + k for s, k in zip(conv.stride, conv.kernel_size))
        planes = sample_hyperplanes(max_hyperplanes, region[0] * region[1], family=hash, sparsity=sparsity, seed=seed)
        self.register_buffer("planes", planes.to(conv.weight.device, conv.weight.dtype), persistent=False)
        self._cpu_cache: tuple | None = None  # see _cpu_operands
        self._geometry: dict[tuple[int, int], Geometry] = {}
        self._static = (conv.kernel_size, conv.stride, self.padding, patch_size, merge == "scaled")  # kernel args
        # Additions per channel for the first L planes (projection cost), precomputed per L.
        self._nnz = [0, *torch.count_nonzero(planes, dim=1).cumsum(0).tolist()]

    def extra_repr(self) -> str:
        return (
            f"patch_size={self.patch_size}, hash={self.hash}, sparsity={self.sparsity:.3g}, merge={self.merge}, "
            f"levels={self.levels}"
        )

    def _cpu_operands(self, hyperplanes: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(weight in the kernel's layout, bias, first ``hyperplanes`` planes) for the CPU kernel: one cache,
        rebuilt when the weight or bias is replaced or changed in place (``_apply``, e.g. ``.to()``, clears
        it); the plane slices are kept per level."""
        conv = self.conv
        weight, bias = conv.weight, conv.bias
        bias_version = None if bias is None else bias._version
        cache = self._cpu_cache
        if (
            cache is None
            or cache[0] is not weight
            or cache[1] != weight._version
            or cache[2] is not bias
            or cache[3] != bias_version
        ):
            bias_t = engine.EMPTY if bias is None else bias.detach()
            cache = (weight, weight._version, bias, bias_version, engine.weight_layout(weight), bias_t, {})
            self._cpu_cache = cache
        planes = cache[6].get(hyperplanes)
        if planes is None:
            planes = cache[6][hyperplanes] = self.planes[:hyperplanes].contiguous()
        return cache[4], cache[5], planes

    def _apply(self, fn, recurse=True):
        self._cpu_cache = None
        return super()._apply(fn, recurse)

    def _geometry_for(self, size: tuple[int, int]) -> Geometry:
        """The tiling for inputs of ``size`` (ValueError if the conv has no output), memoised per size."""
        geo = self._geometry.get(size)
        if geo is None:
            geo = geometry(size, self.conv.kernel_size, self.conv.stride, self.padding, self.patch_size)
            self._geometry[size] = geo
        return geo

    def hyperplanes(self, setting: _levels.Setting | None = None) -> int:
        """Hyperplanes this layer uses for ``setting`` (default: the current context's); 0 = dense."""
        setting = setting or _levels.current()
        if setting.hyperplanes is not None:
            return _levels.check_hyperplanes(setting.hyperplanes, self.max_hyperplanes)
        return self.levels[setting.level]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hyperplanes = self.hyperplanes()
        collector = active()
        if hyperplanes == 0:
            conv = self.conv
            y = conv._conv_forward(x, conv.weight, conv.bias)  # what conv(x) runs, without a 2nd module call
            if collector is not None:
                kh, kw = self.conv.kernel_size
                per = [float(y[0].numel() * self.conv.in_channels * kh * kw)] * y.shape[0]
                collector.add(self.name, "haste", per, per, [0.0] * y.shape[0], channels=self.conv.in_channels)
            return y
        if x.dim() != 4:
            raise ValueError(
                f"{self.name or 'HasteConv2d'} expects a 4D input (N, C, H, W); got shape {tuple(x.shape)}"
            )
        if x.shape[1] != self.conv.in_channels:
            raise ValueError(
                f"{self.name or 'HasteConv2d'} expects {self.conv.in_channels} input channels; got {x.shape[1]}"
            )
        weight = self.conv.weight
        name = engine.choose(x, weight)
        size = (x.shape[2], x.shape[3])
        if name == "cpu":  # the per-call fast path: operands cached, sizes checked once
            geo = self._geometry_for(size)
            y, _, sums = engine.cpu_conv2d(x, *self._cpu_operands(hyperplanes), *self._static)
            if collector is None:
                return y
            sums = sums.tolist()
        else:
            result = engine.conv2d(
                x, weight, self.conv.bias, stride=self.conv.stride, padding=self.padding, patch=self.patch_size,
                planes=self.planes[:hyperplanes], engine=name, merge=self.merge,
            )  # fmt: skip
            y = result.output
            if collector is None:
                return y
            geo = result.geometry or self._geometry_for(size)
            sums = tile_sums(geo, result.groups)
        dense, executed, overhead, buckets = haste_flops(
            geo, sums, c_in=self.conv.in_channels, c_out=self.conv.out_channels,
            used_planes_nnz=self._nnz[hyperplanes], hyperplanes=hyperplanes, merge=self.merge,
        )  # fmt: skip
        collector.add(
            self.name, "haste", dense, executed, overhead,
            hyperplanes=hyperplanes, buckets=buckets, channels=self.conv.in_channels,
        )  # fmt: skip
        return y
