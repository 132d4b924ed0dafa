"""Reference models trained by ``haste train``: safetensors checkpoints with a model card each,
loaded without network.

    model = haste.zoo.load("fmnist-resnet34")   # eval mode, dense; carries its card
    haste.convert(model)                        # uses the card's calibrated levels
    haste.zoo.card("fmnist-resnet34")           # architecture, input spec, labels, accuracy, FLOPs, levels
"""

from __future__ import annotations

import json
from pathlib import Path

from safetensors.torch import load_file
from torch import nn

from .architectures import build
from .registry import REGISTRY, entry

WEIGHTS_DIR = Path(__file__).parent / "weights"


def names() -> list[str]:
    """Registered reference models."""
    return list(REGISTRY)


def paths(name: str, root: Path | None = None) -> tuple[Path, Path]:
    """(weights, card) paths of a reference model."""
    root = Path(root) if root is not None else WEIGHTS_DIR
    return root / f"{name}.safetensors", root / f"{name}.json"


def card(name: str, root: Path | None = None) -> dict:
    """The model card of a reference model, as a dict."""
    entry(name)
    card_path = paths(name, root)[1]
    if not card_path.is_file():
        raise FileNotFoundError(f"no card for {name} at {card_path}: train it with `haste train --model {name}`")
    return json.loads(card_path.read_text())


def load(name: str, root: Path | None = None) -> nn.Module:
    """The trained reference model ``name`` in eval mode, with its card as ``model.haste_card``."""
    info = card(name, root)
    model = build(info["arch"], width=info["width"], in_channels=info["input"]["channels"],
                  num_classes=len(info["labels"]))  # fmt: skip
    model.load_state_dict(load_file(str(paths(name, root)[0])))
    model.haste_card = info
    return model.eval()


__all__ = ["build", "card", "load", "names", "paths", "WEIGHTS_DIR"]
