"""An eval-mode BatchNorm2d as the per-channel affine map it is: what a HASTE layer that took its BatchNorm in
(``haste.fold``) applies in the CPU kernel's output."""

from __future__ import annotations

import torch
from torch import nn


def affine(bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, shift), per channel, of ``bn`` in eval mode: ``bn(y) = y * scale + shift``."""
    with torch.no_grad():
        scale = torch.rsqrt(bn.running_var + bn.eps)
        if bn.weight is not None:
            scale = scale * bn.weight
        shift = -bn.running_mean * scale
        if bn.bias is not None:
            shift = shift + bn.bias
    return scale.detach().contiguous(), shift.detach().contiguous()


def foldable(bn: nn.BatchNorm2d) -> bool:
    """Whether ``bn`` computes ``affine(bn)`` in this call: eval mode with running statistics."""
    return not bn.training and bn._buffers.get("running_var") is not None


def state(bn: nn.BatchNorm2d) -> tuple:
    """What changes when ``bn``'s statistics or parameters are replaced or edited in place (``affine`` again).
    Asked on every call of a layer that folds ``bn``: read from the module's dicts, not through its attributes."""
    buffers, params = bn._buffers, bn._parameters
    mean, var, weight, bias = buffers["running_mean"], buffers["running_var"], params["weight"], params["bias"]
    return (
        mean._version, mean.data_ptr(), var._version, var.data_ptr(),
        None if weight is None else (weight._version, weight.data_ptr()),
        None if bias is None else (bias._version, bias.data_ptr()), bn.eps,
    )  # fmt: skip


#: What a BatchNorm2d computes (its class's forward, whatever class a folded one has now: ``haste.fold``).
BATCHNORM_FORWARD = nn.BatchNorm2d.forward
