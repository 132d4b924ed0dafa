"""Export the image fixtures of the service tests to tests/fixtures/ (committed; rerun to regenerate).

- The first Fashion-MNIST test image of each class as PNG (lossless) and JPEG (quality 90).
- One image in other encodings and modes: RGB, palette and RGBA PNG, lossless WebP, and copies stored
  rotated with an EXIF orientation tag (PNG and WebP) that must be served as the upright image.
- A real photo (scikit-image's ``chelsea``) as JPEG, and a copy stored rotated with EXIF orientation 6.
- A decompression bomb: a valid 8000 x 8000 all-black PNG of a few tens of kilobytes.
- manifest.json: what each file is (test-set index, label, and the upright file it must equal).

    python scripts/make_fixtures.py [--out tests/fixtures]
"""

from __future__ import annotations

import argparse
import json
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from haste_lab.data import FASHION_MNIST_LABELS, fashion_mnist

ROOT = Path(__file__).resolve().parents[1]
#: EXIF orientation 6 = "rotate 90 degrees clockwise to display": store the image rotated 90 degrees
#: counter-clockwise, and ImageOps.exif_transpose turns it back upright.
ORIENTATION_TAG, ROTATE_CW = 0x0112, 6


def _exif_rotated(image: Image.Image) -> tuple[Image.Image, Image.Exif]:
    exif = Image.Exif()
    exif[ORIENTATION_TAG] = ROTATE_CW
    return image.transpose(Image.Transpose.ROTATE_90), exif


def bomb_png(side: int) -> bytes:
    """A valid side x side 8-bit grayscale PNG, all black, compressed as far as zlib goes."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    comp = zlib.compressobj(9)
    row = b"\x00" * (side + 1)  # filter byte + pixels
    idat = b"".join(comp.compress(row) for _ in range(side)) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def slug(label: str) -> str:
    return label.lower().replace("/", "-").replace(" ", "-")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "tests" / "fixtures")
    args = parser.parse_args(argv)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    images, labels = fashion_mnist("test")
    manifest: list[dict] = []

    def add(image: Image.Image, name: str, upright: str | None = None, **save) -> None:
        image.save(out / name, **save)
        manifest.append({"file": name, "upright": upright or name, **meta})

    for cls in range(len(FASHION_MNIST_LABELS)):
        index = int((labels == cls).nonzero()[0, 0])
        meta = {"source": "fashion-mnist test", "index": index, "label": cls, "label_name": FASHION_MNIST_LABELS[cls]}
        gray = Image.fromarray(images[index].numpy(), mode="L")
        stem = f"fmnist-{index:04d}-{slug(FASHION_MNIST_LABELS[cls])}"
        add(gray, f"{stem}.png")
        add(gray, f"{stem}.jpg", quality=90)
        if cls == 0:
            # lossless re-encodings: each must be served exactly as the grayscale PNG
            add(gray.convert("RGB"), f"{stem}-rgb.png", upright=f"{stem}.png")
            add(gray.convert("RGB").convert("P", palette=Image.Palette.ADAPTIVE), f"{stem}-palette.png",
                upright=f"{stem}.png")  # fmt: skip
            add(gray.convert("RGBA"), f"{stem}-rgba.png", upright=f"{stem}.png")
            add(gray, f"{stem}.webp", upright=f"{stem}.png", lossless=True)
            rotated, exif = _exif_rotated(gray)
            add(rotated, f"{stem}-exif6.png", upright=f"{stem}.png", exif=exif)
            add(rotated, f"{stem}-exif6.webp", upright=f"{stem}.png", exif=exif, lossless=True)

    from skimage import data

    meta = {"source": "skimage.data.chelsea", "index": None, "label": None, "label_name": None}
    photo = Image.fromarray(np.asarray(data.chelsea()), mode="RGB")
    add(photo, "photo-chelsea.jpg", quality=90)
    upright = Image.open(out / "photo-chelsea.jpg")
    upright.load()
    rotated, exif = _exif_rotated(upright)
    add(rotated, "photo-chelsea-exif6.png", upright="photo-chelsea.jpg", exif=exif)

    (out / "bomb-8000x8000.png").write_bytes(bomb_png(8000))
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    print(f"wrote {len(manifest) + 1} fixtures to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
