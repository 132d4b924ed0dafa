"""Folding a BatchNorm into the HASTE layer before it.

In a CNN nearly every conv is followed by a ``BatchNorm2d`` that alone reads its output. ``haste.convert``
(option ``fold_batchnorm``, on by default) lets such a conv's ``HasteConv2d`` take the BatchNorm in, and makes the
BatchNorm a ``FoldedBatchNorm2d`` (its class swapped, as ``torch.nn.utils.parametrize`` does: the same module, the
same parameters and state_dict keys). At level off the layer returns the conv's output and the BatchNorm runs where
the model calls it, bit-exact as before. At the other levels the layer returns the BatchNorm's output and the
BatchNorm passes its input on: the fused CPU kernel applies an eval-mode BatchNorm as it writes its output
(``y = conv * scale + shift``, ``haste.batchnorm.affine``), sparing the BatchNorm's own pass over the output; other
engines, and a BatchNorm in training mode or without running statistics, run the BatchNorm's computation right
after the conv. Both sides read the level from the same context, so they agree in every call.

The pairs are found with torch.fx (``batchnorm_pairs``): a model it cannot trace keeps its BatchNorms as they
are, and ``haste.conversion(model).unfolded`` says why. ``haste.revert`` gives the BatchNorms their class back.
"""

from __future__ import annotations

import torch
import torch.fx
from torch import nn

from .levels import current


class _Leaves(torch.fx.Tracer):
    """A tracer that keeps convs and BatchNorms as single calls (whatever class they are)."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, (nn.Conv2d, nn.BatchNorm2d)) or super().is_leaf_module(m, qualname)


def batchnorm_pairs(model: nn.Module) -> tuple[dict[str, str], str | None]:
    """conv name -> name of the ``nn.BatchNorm2d`` that is the only reader of its output, for every such pair in
    ``model``'s forward (a conv and a BatchNorm each called once, the BatchNorm exactly ``nn.BatchNorm2d`` applied
    to the conv's output alone), found by tracing ``model`` with torch.fx; ({}, why) if it cannot be traced."""
    try:
        graph = _Leaves().trace(model)
    except Exception as exc:  # data-dependent control flow, unsupported ops: no folding, said why
        return {}, f"torch.fx cannot trace the model ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})"
    calls: dict[int, int] = {}  # id(module) -> call sites in the graph
    for node in graph.nodes:
        if node.op == "call_module":
            m = model.get_submodule(node.target)
            calls[id(m)] = calls.get(id(m), 0) + 1
    pairs = {}
    for node in graph.nodes:
        if node.op != "call_module" or len(node.users) != 1:
            continue
        conv = model.get_submodule(node.target)
        user = next(iter(node.users))
        if not isinstance(conv, nn.Conv2d) or user.op != "call_module":
            continue
        bn = model.get_submodule(user.target)
        if (
            type(bn) is nn.BatchNorm2d and user.args == (node,) and not user.kwargs
            and calls[id(conv)] == 1 and calls[id(bn)] == 1 and bn.num_features == conv.out_channels
        ):  # fmt: skip
            pairs[node.target] = user.target
    return pairs, None


class FoldedBatchNorm2d(nn.BatchNorm2d):
    """A BatchNorm2d taken in by the HASTE layer before it (``haste.fold``): at level off it runs as a BatchNorm2d;
    at the other levels that layer has applied it, and it passes its input on."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if current().level != "off":
            return x
        return super().forward(x)


def fold(bn: nn.BatchNorm2d) -> None:
    """Make ``bn`` (exactly an ``nn.BatchNorm2d``) a ``FoldedBatchNorm2d``, in place."""
    bn.__class__ = FoldedBatchNorm2d


def unfold(bn: nn.BatchNorm2d) -> None:
    """Give a ``FoldedBatchNorm2d`` its class ``nn.BatchNorm2d`` back, in place."""
    bn.__class__ = nn.BatchNorm2d
