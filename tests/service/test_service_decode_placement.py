"""Where an image is decoded: small ones on the event loop (a thread hop costs more), the rest on the pool."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from service.decode import small


def _png(width: int, height: int) -> bytes:
    out = io.BytesIO()
    Image.new("L", (width, height)).save(out, format="PNG")
    return out.getvalue()


@pytest.mark.parametrize(
    ("data", "pixels", "inline"),
    [
        (_png(28, 28), 4096, True),
        (_png(64, 64), 4096, True),  # at the limit
        (_png(65, 64), 4096, False),
        (_png(28, 28), 0, False),  # 0: never inline
        (_png(4000, 4000), 4096, False),  # a few kB of PNG, 16 M pixels: the pool decodes (or refuses) it
        (_png(28, 28)[:20], 4096, False),  # a header Pillow cannot read: the pool says why
        (b"GIF89a" + bytes(40), 4096, False),  # not an accepted format
        (b"", 4096, False),
    ],
)
def test_only_small_accepted_images_are_decoded_on_the_event_loop(data, pixels, inline):
    assert small(data, pixels) is inline
