"""The memory layout the lab times models in: channels-last (NHWC), as the service holds them by default
(``HASTE_CHANNELS_LAST``), or PyTorch's default NCHW. The fused CPU kernel writes channels-last outputs; a
channels-last model keeps one layout from the first conv to the last, an NCHW one mixes layouts wherever a
HASTE layer meets a dense one."""

from __future__ import annotations

import argparse

import torch
from torch import nn

LAYOUTS = ("channels_last", "nchw")


def in_layout(model: nn.Module, layout: str) -> nn.Module:
    """``model`` with its 4-D parameters and buffers in ``layout`` (one of ``LAYOUTS``), in place."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {', '.join(LAYOUTS)}; got {layout!r}")
    return model.to(memory_format=torch.channels_last if layout == "channels_last" else torch.contiguous_format)


def add_argument(parser: argparse.ArgumentParser) -> None:
    """``--layout``: the memory layout the models are timed in."""
    parser.add_argument(
        "--layout",
        choices=LAYOUTS,
        default="channels_last",
        help="memory layout of the models (default channels_last, as the service holds them; nchw: PyTorch's default)",
    )
