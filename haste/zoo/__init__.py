"""Models by name: the reference models trained by ``haste train`` (safetensors checkpoints with a
model card each), torchvision's pre-trained classifiers, and local checkpoints; loaded without network.

    model = haste.zoo.load("fmnist-resnet34")   # eval mode, dense; carries its card
    haste.convert(model)                        # uses the card's calibrated levels
    haste.zoo.card("fmnist-resnet34")           # architecture, input spec, labels, accuracy, FLOPs, levels
    haste.zoo.load("resnet50:IMAGENET1K_V2")    # torchvision weights from torchvision's cache
    haste.zoo.load("path/to/model.json")        # a card in the reference format, weights beside it
"""

from __future__ import annotations

import json
from pathlib import Path

from safetensors.torch import load_file
from torch import nn

from . import torchvision as tv
from .architectures import build
from .registry import REGISTRY, entry

WEIGHTS_DIR = Path(__file__).parent / "weights"


def names() -> list[str]:
    """Registered reference models."""
    return list(REGISTRY)


def paths(name: str, root: Path | None = None) -> tuple[Path, Path]:
    """(weights, card) paths of a reference model, or of a local card ``name`` ending in .json."""
    if str(name).endswith(".json"):
        card_path = Path(name)
        return card_path.with_suffix(".safetensors"), card_path
    root = Path(root) if root is not None else WEIGHTS_DIR
    return root / f"{name}.safetensors", root / f"{name}.json"


def _unknown(name: str) -> ValueError:
    return ValueError(
        f"unknown model {name!r}; accepted: a reference model ({', '.join(REGISTRY)}), a torchvision "
        "classifier as arch or arch:WEIGHTS (e.g. resnet50:IMAGENET1K_V2), or a path to a card .json"
    )


def card(name: str, root: Path | None = None) -> dict:
    """The model card of a model (reference, torchvision or local card path), as a dict."""
    if str(name).endswith(".json"):
        card_path = Path(name)
        if not card_path.is_file():
            raise FileNotFoundError(f"no model card at {card_path}")
        return json.loads(card_path.read_text())
    if name not in REGISTRY:
        if tv.is_torchvision_name(name):
            return tv.card(name)
        raise _unknown(name)
    entry(name)
    card_path = paths(name, root)[1]
    if not card_path.is_file():
        raise FileNotFoundError(f"no card for {name} at {card_path}: train it with `haste train --model {name}`")
    return json.loads(card_path.read_text())


def load(name: str, root: Path | None = None, *, download: bool | None = None) -> nn.Module:
    """The model ``name`` in eval mode, with its card as ``model.haste_card``: the dense, unconverted
    model (a plain torch module, usable as the baseline). ``haste.convert(model)`` then converts it with
    the card's calibrated options and levels.

    ``download`` applies to torchvision weights only (default: allowed unless ``HASTE_OFFLINE=1``).
    """
    if not str(name).endswith(".json") and name not in REGISTRY and tv.is_torchvision_name(name):
        return tv.load(name, download=download)
    info = card(name, root)
    weights_path = paths(name, root)[0]
    if not weights_path.is_file():
        raise FileNotFoundError(f"no weights for {name} at {weights_path}")
    model = build(info["arch"], width=info["width"], in_channels=info["input"]["channels"],
                  num_classes=len(info["labels"]))  # fmt: skip
    model.load_state_dict(load_file(str(weights_path)))
    model.haste_card = info
    return model.eval()


__all__ = ["build", "card", "load", "names", "paths", "WEIGHTS_DIR"]
