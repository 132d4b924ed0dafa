"""torchvision's pre-trained classification models by name and weights enum, with a model card.

    haste.zoo.load("resnet50:IMAGENET1K_V2")   # torchvision.models.get_model(..., weights=...), eval mode
    haste.zoo.card("resnet50")                 # DEFAULT weights: labels, input spec, accuracy, FLOPs

Weights come from torchvision's own API and cache (``$TORCH_HOME/hub/checkpoints``, see
``torch.hub.get_dir()``); nothing else is downloaded. Without a cached file and without network (or with
``HASTE_OFFLINE=1``) loading raises FileNotFoundError naming the file torchvision expects.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlparse

import torch
import torchvision
from torch import nn
from torchvision.models import get_model, get_model_weights, list_models

from ..preprocess import InputSpec


def architectures() -> list[str]:
    """torchvision classification architectures (``torchvision.models.list_models``)."""
    return list_models(module=torchvision.models)


def is_torchvision_name(name: str) -> bool:
    """True if ``name`` is ``arch`` or ``arch:WEIGHTS`` with ``arch`` a torchvision classification model."""
    return isinstance(name, str) and name.split(":", 1)[0] in architectures()


def weights(name: str):
    """The torchvision weights enum member for ``arch`` (DEFAULT weights), ``arch:WEIGHTS`` or
    ``arch:ResNet50_Weights.WEIGHTS``."""
    arch, _, member = name.partition(":")
    if arch not in architectures():
        raise ValueError(f"unknown torchvision classification model {arch!r}; see torchvision.models.list_models()")
    enum = get_model_weights(arch)
    member = member.rpartition(".")[2] or "DEFAULT"
    try:
        return enum[member]
    except KeyError:
        accepted = ", ".join(["DEFAULT", *(w.name for w in enum)])
        raise ValueError(f"{arch} has no weights {member!r}; accepted: {accepted}") from None


def cache_path(name: str) -> Path:
    """The file torchvision's cache holds for the weights of ``name``."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(weights(name).url).path)


def input_spec(name: str) -> InputSpec:
    """The weights' own preprocessing (resize, centre crop, mean, std) as an InputSpec."""
    t = weights(name).transforms()
    return InputSpec(
        mode="RGB",
        resize=int(t.resize_size[0]),
        crop=int(t.crop_size[0]),
        mean=tuple(float(v) for v in t.mean),
        std=tuple(float(v) for v in t.std),
    )


def card(name: str) -> dict:
    """A model card synthesised from ``weights.meta``: categories as labels, the weights' transforms
    as the input spec, ImageNet top-1 as a fraction, ``_ops`` (GFLOPS, multiply-adds) as dense FLOPs."""
    w = weights(name)
    arch = name.split(":", 1)[0]
    spec = input_spec(name)
    metrics = next(iter(w.meta.get("_metrics", {}).values()), {})
    return {
        "name": f"{arch}:{w.name}",
        "arch": arch,
        "source": "torchvision",
        "weights": str(w),
        "architecture": f"torchvision.models.{arch} with {w}",
        "dataset": "imagenet",
        "input": {**spec.as_dict(), "channels": spec.channels, "size": list(spec.size)},
        "labels": list(w.meta["categories"]),
        "test_accuracy": metrics["acc@1"] / 100 if "acc@1" in metrics else None,
        "flops_dense": round(w.meta["_ops"] * 1e9) if "_ops" in w.meta else None,
        "flops_convention": "multiply-adds per image (torchvision GFLOPS convention)",
        "num_params": w.meta.get("num_params"),
        "recipe": {"url": w.meta.get("recipe")},
        "url": w.url,
        "cache_path": str(cache_path(name)),
    }


def load(name: str, *, download: bool | None = None) -> nn.Module:
    """The torchvision model ``name`` with its pre-trained weights, in eval mode, card as ``haste_card``.

    Args:
        download: let torchvision download missing weights (default: yes unless ``HASTE_OFFLINE=1``).
    """
    info = card(name)
    path = Path(info["cache_path"])
    if download is None:
        download = os.environ.get("HASTE_OFFLINE", "") not in ("1", "true", "yes")
    missing = (
        f"weights of {info['name']} are not in torchvision's cache: expected {path} "
        f"(set TORCH_HOME, or put the file from {info['url']} there)"
    )
    if not path.is_file() and not download:
        raise FileNotFoundError(missing + "; offline, so nothing is downloaded")
    try:
        model = get_model(info["arch"], weights=weights(name))
    except (OSError, RuntimeError) as exc:  # URLError is an OSError; hash mismatches are RuntimeErrors
        if path.is_file():
            raise
        raise FileNotFoundError(f"{missing}; download failed: {exc}") from exc
    model.haste_card = info
    return model.eval()
