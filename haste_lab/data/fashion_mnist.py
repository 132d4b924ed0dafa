"""Fashion-MNIST from the IDX files of the Debian package ``dataset-fashion-mnist``."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import torch

from haste.zoo.registry import FASHION_MNIST_LABELS  # noqa: F401 (re-exported: haste_lab.data)

FASHION_MNIST_DIR = Path(os.environ.get("HASTE_FASHION_MNIST", "/usr/share/datasets/fashion-mnist"))
#: The last CALIBRATION_SIZE training images are held out to calibrate levels; training uses the rest.
CALIBRATION_SIZE = 5000
SPLITS = ("train", "calibration", "test", "train-full")
_FILES = {"train": "train", "test": "t10k"}


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    magic = int.from_bytes(data[:4], "big")
    if magic >> 8 != 0x08:
        raise ValueError(f"{path} is not an unsigned-byte IDX file (magic {magic:#x})")
    ndim = magic & 0xFF
    shape = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def _find(root: Path, stem: str) -> Path:
    for name in (f"{stem}.gz", stem):
        if (root / name).is_file():
            return root / name
    raise FileNotFoundError(
        f"Fashion-MNIST file {stem}(.gz) not found in {root}: install the Debian package "
        "(apt-get install dataset-fashion-mnist) or pass the directory holding the IDX files "
        "(--data-dir, or HASTE_FASHION_MNIST)"
    )


def fashion_mnist(split: str = "test", root: str | Path | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (N, 28, 28) uint8 and labels (N,) int64 of a split.

    Splits: ``test`` (10k), ``train`` (the first 55k training images), ``calibration`` (the last 5k
    training images, held out from training to calibrate levels), ``train-full`` (all 60k).
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}; got {split!r}")
    root = Path(root) if root is not None else FASHION_MNIST_DIR
    stem = _FILES["test" if split == "test" else "train"]
    images = _read_idx(_find(root, f"{stem}-images-idx3-ubyte"))
    labels = _read_idx(_find(root, f"{stem}-labels-idx1-ubyte"))
    if split == "train":
        images, labels = images[:-CALIBRATION_SIZE], labels[:-CALIBRATION_SIZE]
    elif split == "calibration":
        images, labels = images[-CALIBRATION_SIZE:], labels[-CALIBRATION_SIZE:]
    return torch.from_numpy(images.copy()), torch.from_numpy(labels.astype(np.int64))
