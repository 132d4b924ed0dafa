"""Where HASTE pays in time, layer by layer: each converted conv timed dense and at a level, in one run.

Every HASTE layer runs on the input it sees inside the model (captured by a forward pre-hook on real
images): its wrapped conv's own forward on the dense model's input, and the HASTE conv at ``level`` on
the converted model's input at that level, interleaved round by round (medians). With the layer's share
of the model's FLOPs saved, this says which layers turn their saving into time, which cost time, and by
how much each moves the whole model against the issue's bar ``ratio <= 1 - saving / 2``: a layer helps
the bar when the fraction of the dense model's time it saves exceeds half the fraction of its FLOPs it
saves (``margin`` > 0). BatchNorm, ReLU and the residual additions are not timed (they run on the layer's
channels-last output), so the sum over layers is close to, not equal to, the whole model's difference.
"""

from __future__ import annotations

import statistics

import torch
from torch import nn

from haste.levels import compression
from haste.module import HasteConv2d
from haste.profile import profile

from .interleaved import seconds


def layer_inputs(model: nn.Module, x: torch.Tensor, level: str) -> dict[HasteConv2d, torch.Tensor]:
    """The input every HASTE layer of ``model`` receives in a forward of ``x`` at ``level``."""
    inputs: dict[HasteConv2d, torch.Tensor] = {}
    hooks = [
        m.register_forward_pre_hook(lambda mod, args: inputs.__setitem__(mod, args[0]))
        for m in model.modules()
        if isinstance(m, HasteConv2d)
    ]
    try:
        with torch.inference_mode():
            forward_at(model, x, level)
    finally:
        for h in hooks:
            h.remove()
    return inputs


def layer_times(model: nn.Module, x: torch.Tensor, level: str, *, rounds: int = 15, warmup: int = 3) -> dict:
    """Per HASTE layer of the converted ``model`` on the batch ``x``: median ms of its dense conv and of
    its HASTE conv at ``level``, their ratio, the FLOPs it saves as a fraction of the model's dense FLOPs,
    and ``margin`` = (dense - HASTE ms) / whole dense model ms - saved fraction / 2 (> 0: the layer helps
    the latency bar). Also the whole model's median ms, dense and at ``level``, from the same rounds."""
    dense_in = layer_inputs(model, x, "off")
    with profile(model) as report:  # one forward at the level: the layers' inputs and their FLOPs
        level_in = layer_inputs(model, x, level)

    def dense_fn(layer):
        conv, inp = layer.conv, dense_in[layer]
        return lambda: conv._conv_forward(inp, conv.weight, conv.bias)

    def level_fn(layer):
        inp = level_in[layer]

        def run():
            with compression(level):
                layer(inp)

        return run

    # the whole model's "dense" is the converted model at level off (bit-exact, the wrapped convs' own forward)
    layers = [m for m in model.modules() if isinstance(m, HasteConv2d) and m.levels[level] > 0]
    variants = {
        ("model", "dense"): lambda: forward_at(model, x, "off"),
        ("model", level): lambda: forward_at(model, x, level),
    }
    for layer in layers:
        variants[(layer.name, "dense")] = dense_fn(layer)
        variants[(layer.name, level)] = level_fn(layer)
    times: dict[tuple[str, str], list[float]] = {k: [] for k in variants}
    with torch.inference_mode():
        for _ in range(warmup):
            for fn in variants.values():
                fn()
        for r in range(rounds):
            for layer in layers if r % 2 == 0 else layers[::-1]:  # alternate the order, and dense / HASTE
                pair = [(layer.name, "dense"), (layer.name, level)]
                for key in pair if r % 2 == 0 else pair[::-1]:
                    times[key].append(seconds(variants[key]))
            for key in [("model", "dense"), ("model", level)][:: 1 if r % 2 == 0 else -1]:
                times[key].append(seconds(variants[key]))
    med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
    model_dense = med["model", "dense"]
    total_flops = report.dense_flops
    rows = []
    for layer in layers:
        d, h = med[layer.name, "dense"], med[layer.name, level]
        stats = report.layers[layer.name]
        saved = (stats.dense_flops - stats.executed_flops - stats.overhead_flops) / total_flops
        rows.append({
            "layer": layer.name, "hyperplanes": layer.levels[level], "channels": layer.conv.in_channels,
            "dense_ms": d, "haste_ms": h, "ratio": h / d, "layer_saving": stats.saving,
            "model_flops_saved": saved, "model_time_saved": (d - h) / model_dense,
            "margin": (d - h) / model_dense - saved / 2,
        })  # fmt: skip
    return {
        "level": level,
        "model_dense_ms": model_dense,
        "model_level_ms": med["model", level],
        "model_saving": report.saving,
        "layers": rows,
    }


def forward_at(model: nn.Module, x: torch.Tensor, level: str) -> torch.Tensor:
    """``model(x)`` at ``level``."""
    with compression(level):
        return model(x)
