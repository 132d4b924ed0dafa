"""Graph mode: a converted model recorded at one level by ``torch.jit.trace``, its HASTE layers as the CPU kernel's
torch operator, with the multiply-adds each traced forward saves, per image.

    traced = haste.trace(model, example, "high")  # example: a batch as it will be served (its size picks the plan)
    logits, saved = traced(x)                      # saved: (N,) multiply-adds the HASTE layers saved, net of overhead

A traced forward runs the same kernels as the converted model at that level, without Python between the ops: on the
reference model at batch 1 it takes 0.82-0.87 of the eager forward's time (docs/engines.md, graph mode). What the
trace holds is fixed when it is made: the level, the plan for the example's batch size (``haste.plans``), the input
size (the FLOPs count is per tile) and the weights (the kernel's operands are constants; a dense layer reads the
model's parameters). CPU float32 only: the operator is the fused CPU kernel.
"""

from __future__ import annotations

import contextlib
import contextvars
import warnings
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn

from . import engine
from .levels import compression, current
from .profile import Counted

#: While ``trace`` records: the HASTE layers' calls, (Counted, per-image sums tensor), in call order.
_SINK: contextvars.ContextVar[list[tuple[Counted, torch.Tensor]] | None] = contextvars.ContextVar(
    "haste_trace_sums", default=None
)


def recording() -> list[tuple[Counted, torch.Tensor]] | None:
    """The list a HASTE layer appends its traced call to (``HasteConv2d._traced``), or None outside ``trace``."""
    return _SINK.get()


@contextlib.contextmanager
def _recording(sink: list) -> Iterator[None]:
    token = _SINK.set(sink)
    try:
        yield
    finally:
        _SINK.reset(token)


class _WithSums(nn.Module):
    """The model, returning (its output, the HASTE calls' per-image sums stacked (calls, N, 2)) when traced."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.calls: list[Counted] = []

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        sink: list[tuple[Counted, torch.Tensor]] = []
        with _recording(sink):
            y = self.model(x)
        self.calls = [counted for counted, _ in sink]
        if not isinstance(y, torch.Tensor):
            raise TypeError(f"haste.trace takes a model whose output is one tensor; got {type(y).__name__}")
        sums = torch.stack([s for _, s in sink]) if sink else torch.zeros(0, dtype=torch.float64)
        return y, sums


@dataclass(frozen=True, eq=False)
class Traced:
    """A converted model recorded at one level (``trace``): call it on a batch of the traced image size."""

    module: torch.jit.ScriptModule
    level: str | None  # None: explicit hyperplanes
    batch: int  # the batch size it was traced at: its plan entry is the one that runs
    size: tuple[int, int]  # the traced input's height and width
    calls: tuple[Counted, ...]  # the HASTE layers it runs, in call order

    def __post_init__(self) -> None:
        c = self.calls
        # per HASTE call: saved = dense - executed - overhead = base - per_sum * gv + per_bucket * g (Counted.lists)
        base = sum(k.dense - k.fixed - k.overhead_max for k in c)
        object.__setattr__(self, "_base", float(base))
        object.__setattr__(self, "_per_sum", torch.tensor([k.per_sum for k in c], dtype=torch.float64)[:, None])
        object.__setattr__(self, "_per_bucket", torch.tensor([k.per_bucket for k in c], dtype=torch.float64)[:, None])

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(the model's output on ``x``, (N,) float64 multiply-adds the HASTE layers saved per image, overhead
        included: what ``haste.profile(dense_layers=False)`` reports as dense - executed - overhead)."""
        if x.dim() != 4 or tuple(x.shape[2:]) != self.size:
            raise ValueError(
                f"this trace takes (N, C, {self.size[0]}, {self.size[1]}) inputs, the size it was traced at (its "
                f"FLOPs are counted per tile); got shape {tuple(x.shape)}"
            )
        with torch.no_grad():  # the kernel computes no gradient; the dense layers' parameters may require one
            y, sums = self.module(x)
        if not self.calls:
            return y, torch.zeros(len(x), dtype=torch.float64)
        saved = self._base - (self._per_sum * sums[..., 0]).sum(0) + (self._per_bucket * sums[..., 1]).sum(0)
        return y, saved


def trace(
    model: nn.Module, example: torch.Tensor, level: str | None = None, *, hyperplanes: int | None = None
) -> Traced:
    """Record ``model`` (converted; a model without HASTE layers traces as it is) on ``example`` (N, C, H, W),
    float32 on the CPU, at ``level`` (or ``hyperplanes``; default: the current context's setting): a ``Traced``
    whose forward runs the level's HASTE layers on the fused CPU kernel (the plan for ``example``'s batch size) and
    its other layers as plain ops. Checked against the eager model on ``example``. RuntimeError when a HASTE layer
    would not run the CPU kernel (it says why); the model must return one tensor."""
    if not isinstance(example, torch.Tensor) or example.dim() != 4:
        raise ValueError("haste.trace takes an example batch (N, C, H, W)")
    if not engine.cpu_kernel_available():
        raise RuntimeError(f"haste.trace needs the fused CPU kernel: {engine.unavailable}")
    wrapped = _WithSums(model)
    chosen = level is not None or hyperplanes is not None
    setting = compression(level, hyperplanes=hyperplanes) if chosen else contextlib.nullcontext(current())
    with torch.no_grad(), setting as active, warnings.catch_warnings():
        warnings.filterwarnings("ignore", "`torch.jit.trace", FutureWarning)  # deprecated in favour of torch.export
        module = torch.jit.trace(wrapped, example, check_trace=False)
        expected = model(example)
        got, _ = module(example)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5, msg=lambda m: f"haste.trace: {m}")
    return Traced(module, active.level, len(example), tuple(example.shape[2:]), tuple(wrapped.calls))
