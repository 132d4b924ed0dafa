"""haste.preprocess on images of more than 8 bits per pixel: scaled to 8 bits, never clipped."""

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from haste.preprocess import InputSpec, eight_bit, normalize, preprocess
from haste.zoo.registry import FMNIST_SPEC

FIXTURES = Path(__file__).parent / "fixtures"


def _mode(path: Path) -> str:
    with Image.open(path) as image:
        return image.mode


GREY = sorted(p for p in FIXTURES.glob("fmnist-*.png") if _mode(p) == "L")
RGB_SPEC = InputSpec(mode="RGB", resize=32, crop=32)


def reopened(image: Image.Image, fmt: str) -> Image.Image:
    """``image`` saved as ``fmt`` and decoded again, as the service and the image folders see files."""
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    return Image.open(io.BytesIO(buffer.getvalue()))


def sixteen_bit_versions(pixels: np.ndarray) -> dict[str, Image.Image]:
    """8-bit grey ``pixels`` widened to 16 bits (v * 257, full scale 255 -> 65535) in each way Pillow holds them."""
    wide = pixels.astype(np.uint16) * 257
    h, w = pixels.shape
    return {
        "png I;16": reopened(Image.fromarray(wide), "PNG"),
        "tiff I;16": reopened(Image.fromarray(wide), "TIFF"),
        "I;16B": Image.frombytes("I;16B", (w, h), wide.astype(">u2").tobytes()),
        "I;16L": Image.frombytes("I;16L", (w, h), wide.astype("<u2").tobytes()),
        "I": Image.fromarray(wide.astype(np.int32)),
    }


@pytest.mark.parametrize("path", GREY, ids=[p.stem for p in GREY])
@pytest.mark.parametrize("spec", [FMNIST_SPEC, RGB_SPEC], ids=["L", "RGB"])
def test_sixteen_bit_grey_preprocesses_like_the_8_bit_image(path, spec):
    original = Image.open(path)
    expected = preprocess(original, spec)
    for how, image in sixteen_bit_versions(np.asarray(original)).items():
        assert image.mode.startswith("I"), how
        assert torch.equal(preprocess(image, spec), expected), how


def test_the_ankle_boot_keeps_its_brightness():
    """The audit's case: saved as 16-bit grey, the image came out twice as bright (mean 86.8 vs 42.7)."""
    original = Image.open(FIXTURES / "fmnist-0000-ankle-boot.png")
    image = sixteen_bit_versions(np.asarray(original))["png I;16"]
    assert np.asarray(eight_bit(image)).mean() == pytest.approx(np.asarray(original).mean())


def test_sixteen_bit_values_keep_their_high_byte():
    values = np.array([[0, 255, 256, 32767, 32768, 65280, 65535]], dtype=np.uint16)
    assert np.asarray(eight_bit(Image.fromarray(values))).tolist() == [[0, 0, 1, 127, 128, 255, 255]]


def test_float_images_are_on_a_0_to_255_scale():
    values = np.array([[-5.0, 0.4, 0.6, 127.5, 254.6, 300.0, np.nan]], dtype=np.float32)
    assert np.asarray(eight_bit(Image.fromarray(values))).tolist() == [[0, 0, 1, 128, 255, 255, 0]]
    original = Image.open(GREY[0])
    assert torch.equal(preprocess(original.convert("F"), FMNIST_SPEC), preprocess(original, FMNIST_SPEC))


def test_32_bit_integer_images_are_refused():
    image = Image.fromarray(np.array([[0, 70000]], dtype=np.int32))
    with pytest.raises(ValueError, match="32-bit integer pixels .* accepted: 8-bit images, 16-bit grayscale"):
        preprocess(image, FMNIST_SPEC)


def test_8_bit_images_are_untouched():
    for path in [*GREY[:1], FIXTURES / "fmnist-0019-t-shirt-top-rgba.png", FIXTURES / "photo-chelsea.jpg"]:
        with Image.open(path) as image:
            assert eight_bit(image) is image


@pytest.mark.parametrize("pad", [0, 2])
@pytest.mark.parametrize("channels", [1, 3])
def test_normalize_is_torchs_float32_arithmetic_bit_for_bit(pad, channels):
    """normalize runs in NumPy (a served image is preprocessed alone, where torch's per-op cost dominates); its
    result is what the same float32 operations give in torch, padding included."""
    import torch.nn.functional as F

    spec = InputSpec(mode="L" if channels == 1 else "RGB", mean=(0.286, 0.41, 0.5)[:channels],
                     std=(0.353, 0.22, 0.19)[:channels], pad=pad)  # fmt: skip
    pixels = torch.randint(0, 256, (2, channels, 17, 23), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    mean = torch.tensor(spec.mean)[None, :, None, None]
    std = torch.tensor(spec.std)[None, :, None, None]
    expected = (pixels.to(torch.float32) / 255.0 - mean) / std
    if pad:
        expected = F.pad(expected - (-mean / std), (pad,) * 4) + (-mean / std)
    got = normalize(pixels, spec)
    assert got.dtype == torch.float32 and got.is_contiguous() and torch.equal(got, expected)
