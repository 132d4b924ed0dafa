"""Preprocessing shared by evaluation and the service: one InputSpec, one code path.

An InputSpec says how a model wants its pixels: colour mode, resize, centre crop, zero padding,
normalisation. Fashion-MNIST arrays and decoded PIL images go through the same arithmetic, so the
service's answer for an exported test image equals the offline evaluation's.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import torch
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
    """uint8 pixels (N, C, H, W) at model size before padding -> normalised float (N, C, H', W'): float32
    ``(pixels / 255 - mean) / std``, the padding the normalised value of a black pixel (zero pixels before
    normalisation). In NumPy: the same float32 operations as torch's, a few microseconds each on one image where
    torch's take tens (a served image is preprocessed on its own)."""
    x = pixels.numpy().astype(np.float32) / np.float32(255.0)
    mean = np.asarray(spec.mean, dtype=np.float32)[None, :, None, None]
    std = np.asarray(spec.std, dtype=np.float32)[None, :, None, None]
    x = (x - mean) / std
    if spec.pad:
        black, pad = -mean / std, spec.pad  # (x - black) + black: torch's F.pad(x - black) + black, bit for bit
        n, c, h, w = x.shape
        padded = np.empty((n, c, h + 2 * pad, w + 2 * pad), dtype=np.float32)
        padded[...] = black
        padded[:, :, pad : pad + h, pad : pad + w] = (x - black) + black
        x = padded
    return torch.from_numpy(np.ascontiguousarray(x))


#: Pillow modes of 16-bit single-channel images (16-bit grayscale PNG, TIFF, PGM), any byte order.
SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N")


def eight_bit(image: Image.Image) -> Image.Image:
    """A single-channel image of more than 8 bits per pixel -> the same image as 8-bit "L"; other modes
    are returned unchanged.

    Pillow's ``convert("L")`` / ``convert("RGB")`` clips such pixels at 255 instead of scaling them. Here
    16-bit pixels (modes ``SIXTEEN_BIT_MODES``, and mode "I" when every value is in 0..65535, which is how
    some Pillow versions and formats decode 16-bit grayscale) keep their high byte, ``value >> 8`` (full
    scale 65535 -> 255; an 8-bit value v stored as v * 257 comes back as v). Mode "I" with values outside
    0..65535 (32-bit integer TIFF) raises ValueError: its scale is unknown. Float images (mode "F", e.g.
    float TIFF) are taken on Pillow's 0..255 scale (as ``convert("L")`` does): rounded to the nearest
    integer and clipped to 0..255, NaN as 0; an image of [0, 1] floats must be scaled by 255 beforehand.
    """
    if image.mode in SIXTEEN_BIT_MODES or image.mode == "I":
        pixels = np.asarray(image)
        if image.mode == "I" and pixels.size and (pixels.min() < 0 or pixels.max() > 65535):
            raise ValueError(
                f"32-bit integer pixels ({pixels.min()}..{pixels.max()}) have no known scale; accepted: "
                "8-bit images, 16-bit grayscale (0..65535) and float images on a 0..255 scale"
            )
        return Image.fromarray((pixels.astype(np.uint32) >> 8).astype(np.uint8))
    if image.mode == "F":
        pixels = np.nan_to_num(np.asarray(image, dtype=np.float32), nan=0.0, posinf=255.0, neginf=0.0)
        return Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8))
    return image


def image_to_pixels(image: Image.Image, spec: InputSpec) -> torch.Tensor:
    """A decoded PIL image -> uint8 (C, H, W) in the spec's mode, resized and centre-cropped. Images of
    more than 8 bits per pixel are scaled to 8 bits first (``eight_bit``)."""
    image = eight_bit(image).convert(spec.mode)
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
