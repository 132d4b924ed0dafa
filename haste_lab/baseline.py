"""The dense baseline the lab measures against: the model with its BatchNorms fused into the convs before them
(``haste.fuse_batchnorm``), as the service holds it (``HASTE_FUSE_BATCHNORM``, on by default), or as trained
(``--no-fuse-batchnorm``). A fused model is what a deployment would run without HASTE: timing HASTE against a
dense model that keeps its BatchNorms credits HASTE with the fusion its fused kernel does on the way."""

from __future__ import annotations

import argparse

from torch import nn

from haste.fuse import fuse_batchnorm


def prepared(model: nn.Module, fuse: bool) -> nn.Module:
    """``model`` in eval mode, its BatchNorms fused when ``fuse`` (in place)."""
    model.eval()
    if fuse:
        fuse_batchnorm(model)
    return model


def add_argument(parser: argparse.ArgumentParser) -> None:
    """``--fuse-batchnorm`` / ``--no-fuse-batchnorm``."""
    parser.add_argument(
        "--fuse-batchnorm",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="fuse BatchNorms into their convs before converting, as the service does (default; "
        "--no-fuse-batchnorm: the model as trained, BatchNorms kept)",
    )
