"""Dense multiply-adds of a whole model, HASTE layers counted as the convs they wrap."""

from __future__ import annotations

import torch
from torch import nn

from .flops import conv_flops, linear_flops
from .levels import compression
from .module import HasteConv2d


def count_flops(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Dense multiply-adds per image of the Conv2d and Linear layers of ``model`` for an input of
    ``input_shape`` ((C, H, W) or (N, C, H, W)). HASTE layers are counted dense."""
    shape = tuple(input_shape)
    if len(shape) == 3:
        shape = (1, *shape)
    if len(shape) != 4:
        raise ValueError(f"input_shape must be (C, H, W) or (N, C, H, W); got {input_shape!r}")
    total = 0

    def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        nonlocal total
        if isinstance(module, HasteConv2d):
            total += conv_flops(module.conv, output)
        elif isinstance(module, nn.Conv2d):
            total += conv_flops(module, output)
        elif isinstance(module, nn.Linear):
            total += linear_flops(module, output)

    inner = {id(m.conv) for m in model.modules() if isinstance(m, HasteConv2d)}
    handles = [
        m.register_forward_hook(hook)
        for m in model.modules()
        if isinstance(m, (nn.Conv2d, nn.Linear, HasteConv2d)) and id(m) not in inner
    ]
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None else torch.float32
    training = model.training
    model.eval()  # BatchNorm statistics must not move
    try:
        with torch.no_grad(), compression("off"):
            model(torch.zeros(1, *shape[1:], device=device, dtype=dtype))
    finally:
        model.train(training)
        for h in handles:
            h.remove()
    return total
