"""Preprocessing shared by evaluation and the service: one InputSpec, one code path.

An InputSpec says how a model wants its pixels: colour mode, resize, centre crop, zero padding,
normalisation. Fashion-MNIST arrays and decoded PIL images go through the same arithmetic, so the
service's answer for an exported test image equals the offline evaluation's.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image


@dataclass(frozen=True)
class InputSpec:
    """mode: PIL mode ("L" or "RGB"); resize: shorter side in pixels (0 = keep); crop: centre crop
    side (0 = none); pad: zero padding per side after the crop; mean/std: per-channel normalisation
    of [0, 1] pixels."""

    mode: str = "RGB"
    resize: int = 0
    crop: int = 0
    pad: int = 0
    mean: tuple[float, ...] = field(default=(0.485, 0.456, 0.406))
    std: tuple[float, ...] = field(default=(0.229, 0.224, 0.225))

    @property
    def channels(self) -> int:
        return 1 if self.mode == "L" else 3

    @property
    def size(self) -> tuple[int, int]:
        """Model input (H, W) for inputs already at ``crop`` (or ``resize``) size."""
        side = (self.crop or self.resize) + 2 * self.pad
        return side, side

    def as_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict) -> InputSpec:
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


def normalize(pixels: torch.Tensor, spec: InputSpec) -> torch.Tensor:
    """uint8 pixels (N, C, H, W) at model size before padding -> normalised float (N, C, H', W')."""
    x = pixels.to(torch.float32) / 255.0
    mean = torch.tensor(spec.mean, dtype=torch.float32)[None, :, None, None]
    std = torch.tensor(spec.std, dtype=torch.float32)[None, :, None, None]
    x = (x - mean) / std
    if spec.pad:
        # pad with the normalised value of a black pixel, i.e. zero pixels before normalisation
        x = F.pad(x - (-mean / std), (spec.pad,) * 4) + (-mean / std)
    return x


def image_to_pixels(image: Image.Image, spec: InputSpec) -> torch.Tensor:
    """A decoded PIL image -> uint8 (C, H, W) in the spec's mode, resized and centre-cropped."""
    image = image.convert(spec.mode)
    if spec.resize and min(image.size) != spec.resize:
        w, h = image.size
        scale = spec.resize / min(w, h)
        image = image.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.BILINEAR)
    if spec.crop:
        w, h = image.size
        left, top = (w - spec.crop) // 2, (h - spec.crop) // 2
        image = image.crop((left, top, left + spec.crop, top + spec.crop))
    arr = np.asarray(image, dtype=np.uint8)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return torch.from_numpy(arr.copy()).permute(2, 0, 1)


def preprocess(image: Image.Image, spec: InputSpec) -> torch.Tensor:
    """A decoded PIL image -> the model's normalised input (C, H, W)."""
    return normalize(image_to_pixels(image, spec)[None], spec)[0]
