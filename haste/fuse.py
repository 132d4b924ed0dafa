"""Fusing BatchNorms into the convs before them, for inference: the dense baseline a deployment runs.

An eval-mode ``BatchNorm2d`` that alone reads a conv's output is a per-channel affine map, so it can live in the
conv's weight and bias (``W' = W * scale``, ``b' = b * scale + shift``): one op instead of two, equal up to float
rounding. Every inference stack does this (torch.fx's ``fuse``, oneDNN, TensorRT); a dense model that keeps its
BatchNorms is a slow baseline. Measured on fmnist-resnet34 at batch 1, 2 threads: 9.3 ms a forward as trained,
8.3 ms fused and converted, at level off (``results/bench-fmnist-resnet34-plans.json``, ``dense`` and ``off``).

``fuse_batchnorm(model)`` does it in place before ``haste.convert``: the convs keep their names (a card's levels and
plans still apply), each fused BatchNorm becomes ``nn.Identity``. HASTE on a fused conv is HASTE on the original
conv followed by the BatchNorm: the merge sums input-channel slices of the filter and the BatchNorm scales output
channels, so the two commute (up to rounding, which may flip a hash sign on a tie).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_weights

from .convert import conversion
from .fold import batchnorm_pairs


def fuse_batchnorm(model: nn.Module) -> dict[str, str]:
    """Fold every BatchNorm2d that alone reads a Conv2d's output into that conv, in place (``haste.fold``'s pairs,
    found with torch.fx); returns conv name -> name of the BatchNorm fused into it (now an ``nn.Identity``).

    For inference only: the model must be in eval mode (the running statistics are what is folded) and not yet
    converted (``haste.convert`` then wraps the fused convs). A model torch.fx cannot trace is left as it is
    ({} returned). ValueError otherwise."""
    if model.training:
        raise ValueError("fuse_batchnorm folds running statistics: call model.eval() first")
    if conversion(model) is not None:
        raise ValueError("fuse_batchnorm must run before haste.convert (the model is already converted)")
    pairs, _ = batchnorm_pairs(model)
    fused = {}
    for conv_name, bn_name in pairs.items():
        conv, bn = model.get_submodule(conv_name), model.get_submodule(bn_name)
        if bn.running_mean is None or bn.running_var is None:  # track_running_stats=False: batch statistics
            continue
        with torch.no_grad():
            weight, bias = fuse_conv_bn_weights(
                conv.weight, conv.bias, bn.running_mean, bn.running_var, bn.eps, bn.weight, bn.bias
            )
        conv.weight, conv.bias = weight, bias
        parent, _, leaf = bn_name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, leaf, nn.Identity())
        fused[conv_name] = bn_name
    return fused
