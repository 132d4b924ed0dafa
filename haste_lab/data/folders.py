"""CIFAR-10 and ImageNet-style folders from local copies (never downloaded)."""

from __future__ import annotations

from pathlib import Path

import torchvision
from torch.utils.data import Dataset


def cifar10(root: str | Path, split: str = "test", transform=None) -> Dataset:
    """torchvision's CIFAR10 from a local ``root`` holding ``cifar-10-batches-py``; no download."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be train or test; got {split!r}")
    try:
        return torchvision.datasets.CIFAR10(str(root), train=split == "train", download=False, transform=transform)
    except RuntimeError as exc:
        raise FileNotFoundError(
            f"CIFAR-10 not found under {root}: expected {Path(root) / 'cifar-10-batches-py'} "
            "(the python version of the dataset, extracted); nothing is downloaded"
        ) from exc


def image_folder(root: str | Path, transform=None) -> Dataset:
    """An ImageNet-style folder tree (``root/<class>/<image>``) through torchvision's ImageFolder."""
    if not Path(root).is_dir():
        raise FileNotFoundError(f"image folder {root} does not exist (expected root/<class>/<image files>)")
    return torchvision.datasets.ImageFolder(str(root), transform=transform, loader=_open_unconverted)


def _open_unconverted(path: str):
    """The decoded image in its own mode: torchvision's default loader converts to RGB first, which clips
    16-bit grayscale; ``haste.preprocess`` scales it (``eight_bit``) and converts."""
    from PIL import Image

    with open(path, "rb") as f:
        image = Image.open(f)
        image.load()
    return image
