"""Image bytes -> model input: format sniffing, size caps, Pillow decoding, EXIF orientation, and the
preprocessing shared with evaluation (``haste.preprocess``).

Untrusted bytes are checked in this order, cheapest first: empty; format from the magic bytes (JPEG,
PNG and WebP accepted; other image formats 415; anything else 400); dimensions from the header against
the pixel cap (413, before any pixel is decoded: decompression bombs), the smallest side and the
aspect ratio (400); then the full decode (truncated or corrupt data 400).
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from typing import NoReturn

import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from haste.preprocess import InputSpec, preprocess

from .errors import ServiceError

#: Decodable formats: Pillow format name -> media type.
SUPPORTED = {"JPEG": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp"}

#: Content types accepted for a raw body (the bytes decide the format).
RAW_CONTENT_TYPES = frozenset({*SUPPORTED.values(), "image/jpg", "image/pjpeg", "application/octet-stream"})

#: Image formats recognised by their magic bytes but not served (415 rather than 400).
_OTHER_IMAGES = (
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"BM", "BMP"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"\x00\x00\x01\x00", "ICO"),
    (b"\x00\x00\x00\x0cjP  ", "JPEG 2000"),
    (b"8BPS", "PSD"),
)


@dataclass(frozen=True)
class Limits:
    """Caps applied to every image: pixels (width x height), smallest side, long/short side ratio."""

    max_pixels: int = 25_000_000
    min_side: int = 8
    max_aspect_ratio: float = 32.0


def sniff(data: bytes) -> str | None:
    """The image format named by the magic bytes: JPEG, PNG, WEBP, another format's name, or None."""
    if data[:3] == b"\xff\xd8\xff":
        return "JPEG"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "PNG"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    if data[4:12] in (b"ftypavif", b"ftypheic", b"ftypheix", b"ftypmif1"):
        return "HEIF/AVIF"
    for magic, name in _OTHER_IMAGES:
        if data.startswith(magic):
            return name
    return None


def decode(data: bytes, limits: Limits = Limits()) -> Image.Image:
    """Decode untrusted bytes to a PIL image in display orientation (EXIF applied), or raise
    ServiceError (invalid_image 400, payload_too_large 413, unsupported_media_type 415)."""
    if not data:
        raise ServiceError("invalid_image", "empty body: send a JPEG, PNG or WebP image")
    fmt = sniff(data)
    if fmt is None:
        raise ServiceError("invalid_image", "not a JPEG, PNG or WebP image (unrecognised leading bytes)")
    if fmt not in SUPPORTED:
        raise ServiceError("unsupported_media_type", f"{fmt} images are not supported; send JPEG, PNG or WebP")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # DecompressionBombWarning: our own cap is checked below
        try:
            image = Image.open(io.BytesIO(data), formats=[fmt])
        except Image.DecompressionBombError:  # over Pillow's own ceiling: say it with our cap
            _refuse_bomb(data, fmt, limits)
        except Exception as exc:  # Pillow raises many types on corrupt headers
            raise ServiceError("invalid_image", f"cannot read the {fmt} header: {_reason(exc)}") from None
        width, height = image.size
        _check_size(width, height, limits)
        try:
            image.load()
            image = ImageOps.exif_transpose(image)
        except Image.DecompressionBombError:
            raise ServiceError(
                "payload_too_large", f"image too large; at most {limits.max_pixels} pixels are accepted"
            ) from None
        except Exception as exc:  # truncated, corrupt data or metadata
            raise ServiceError("invalid_image", f"cannot decode the {fmt} image: {_reason(exc)}") from None
    return image


def _refuse_bomb(data: bytes, fmt: str, limits: Limits) -> NoReturn:
    """413 for an image Pillow refused to open as a decompression bomb (over twice
    ``Image.MAX_IMAGE_PIXELS``), stating the configured cap: the dimensions are read from the header
    again by the format's plugin alone, which does not apply Pillow's check (nothing is decoded)."""
    try:
        factory, _ = Image.OPEN[fmt]
        width, height = factory(io.BytesIO(data)).size
    except Exception:  # cannot happen for a header Image.open just parsed; stay a 413 anyway
        raise ServiceError(
            "payload_too_large", f"image too large; at most {limits.max_pixels} pixels are accepted"
        ) from None
    _check_size(width, height, limits)
    raise ServiceError(  # only when HASTE_MAX_PIXELS is set above Pillow's ceiling
        "payload_too_large",
        f"image is {width}x{height} = {width * height} pixels; the decoder accepts at most "
        f"{2 * Image.MAX_IMAGE_PIXELS} pixels whatever the configured cap",
    )


def _check_size(width: int, height: int, limits: Limits) -> None:
    if width * height > limits.max_pixels:
        raise ServiceError(
            "payload_too_large",
            f"image is {width}x{height} = {width * height} pixels; at most {limits.max_pixels} pixels are accepted",
        )
    if min(width, height) < limits.min_side:
        raise ServiceError(
            "invalid_image", f"image is {width}x{height} pixels; each side must be at least {limits.min_side} pixels"
        )
    if max(width, height) > limits.max_aspect_ratio * min(width, height):
        raise ServiceError(
            "invalid_image",
            f"image is {width}x{height} pixels; the long side may be at most {limits.max_aspect_ratio:g} "
            "times the short side",
        )


def _reason(exc: Exception) -> str:
    if isinstance(exc, UnidentifiedImageError):
        return "not a valid image file"
    text = str(exc).strip() or type(exc).__name__
    return text[:200]


def small(data: bytes, pixels: int) -> bool:
    """Whether ``data`` is a JPEG, PNG or WebP image whose header gives it at most ``pixels`` pixels (nothing is
    decoded); False for anything else, which the decode pool then decodes or refuses."""
    fmt = sniff(data) if pixels > 0 else None
    if fmt not in SUPPORTED:
        return False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            width, height = Image.open(io.BytesIO(data), formats=[fmt]).size
        except Exception:  # a header Pillow cannot read: decode says why, on the pool
            return False
    return width * height <= pixels


def to_input(data: bytes, spec: InputSpec, limits: Limits = Limits()) -> torch.Tensor:
    """Untrusted bytes -> the model's normalised input (C, H, W), through the shared preprocessing."""
    image = decode(data, limits)
    try:
        return preprocess(image, spec)
    except Exception as exc:  # e.g. a mode Pillow cannot convert
        raise ServiceError("invalid_image", f"cannot convert the image to {spec.mode}: {_reason(exc)}") from None
