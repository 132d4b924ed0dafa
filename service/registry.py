"""Loading the served models: once by name through ``haste.zoo``, converted with ``haste.convert`` and
moved to the device (what a loaded model does, warm-up and batches, is ``served.ServedModel``)."""

from __future__ import annotations

import inspect
import logging
from pathlib import Path

import torch
from torch import nn

import haste
import haste.zoo
from haste.preprocess import InputSpec

from .served import ServedModel
from .settings import Settings

log = logging.getLogger("service")

SPEC_KEYS = ("mode", "resize", "crop", "pad", "mean", "std")

__all__ = ["ServedModel", "check", "load", "resolve_device"]


def resolve_device(setting: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; ``cuda`` without a GPU is a ValueError."""
    if setting == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            "HASTE_DEVICE=cuda but CUDA is not available here (torch.cuda.is_available() is false); "
            "accepted on this machine: auto or cpu"
        )
    if setting == "cpu" or (setting == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    return torch.device("cuda")


def _zoo_load(name: str, settings: Settings) -> nn.Module:
    """``haste.zoo.load`` with the configured weights directory; never downloads."""
    kwargs: dict = {}
    params = inspect.signature(haste.zoo.load).parameters
    if settings.weights_dir is not None:
        kwargs["root"] = settings.weights_dir
    if "download" in params:
        kwargs["download"] = False
    return haste.zoo.load(name, **kwargs)


def check(name: str, settings: Settings) -> None:
    """Raise ValueError or FileNotFoundError, naming HASTE_MODELS and what is accepted, if ``name`` cannot
    be loaded: an unknown name, or a card or weights file that is missing (nothing is loaded)."""
    root = settings.weights_dir
    try:
        card = haste.zoo.card(name, root) if root is not None else haste.zoo.card(name)
    except (ValueError, FileNotFoundError) as exc:
        raise type(exc)(f"HASTE_MODELS: {exc}") from None
    weights = Path(card["cache_path"]) if card.get("cache_path") else haste.zoo.paths(name, root)[0]
    if not weights.is_file():
        raise FileNotFoundError(f"HASTE_MODELS: no weights for {name} at {weights} (nothing is downloaded)")


def _hyperplanes(model: nn.Module) -> dict[str, object]:
    layers = [m for m in model.modules() if isinstance(m, haste.HasteConv2d)]
    table: dict[str, object] = {}
    for level in haste.LEVELS:
        values = sorted({m.levels[level] for m in layers}) or [haste.LEVELS[level]]
        table[level] = values[0] if len(values) == 1 else {"min": values[0], "max": values[-1]}
    return table


def load(name: str, settings: Settings, device: torch.device) -> ServedModel:
    """Load ``name`` through haste.zoo, fuse its BatchNorms (``HASTE_FUSE_BATCHNORM``), convert it (the card's
    calibrated levels when present), move it."""
    model = _zoo_load(name, settings).eval()
    card = dict(getattr(model, "haste_card", None) or haste.zoo.card(name))
    fused = haste.fuse_batchnorm(model) if settings.fuse_batchnorm else {}
    haste.convert(model)
    layout = torch.channels_last if settings.channels_last else torch.preserve_format
    model = model.to(device, memory_format=layout).eval()
    spec = InputSpec.from_dict({k: card["input"][k] for k in SPEC_KEYS})
    log.info("loaded %s (%s) on %s", name, card.get("arch"), device)
    return ServedModel(
        name=name,
        model=model,
        card=card,
        spec=spec,
        labels=list(card["labels"]),
        device=device,
        hyperplanes=_hyperplanes(model),
        layout="channels_last" if settings.channels_last else "nchw",
        fused_batchnorms=len(fused),
    )
