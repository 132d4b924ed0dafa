"""Reliability soak of the HASTE service: starts the real server (``python -m haste.cli serve``) on a
loopback port and runs five bounded, self-stopping scenarios against it, then writes a JSON report and a
markdown summary generated from it.

    python scripts/soak.py run                       # the full soak: results/soak.json + results/soak.md
    python scripts/soak.py run --short --out /tmp/soak.json --markdown /tmp/soak.md   # a few s per scenario
    python scripts/soak.py table results/soak.json   # the markdown summary of a report

Scenarios, in this order, against one server (then a second one, the restart):
  1. bad_input: a seeded generator of >= 300 cases (corrupt, truncated and forged images in every format,
     decompression bombs, animated and multi-page images, odd colour modes and sizes, content types,
     multipart and raw bodies, chunked bodies past the byte cap, bad and repeated query values, odd model
     names and paths). Each case states the statuses the documented API allows (4xx for bad input, 200 with
     predictions for a valid image); every error body must have the documented shape and leak no stack
     trace or file path; after each batch the server must be ready and answer a known image correctly.
  2. overload: ``hey -c 400`` posting an image; fast 429/503 or bounded queueing (no 5xx other than 503
     and 504), RSS sampled every second, latency before and after (seconds until it is back to normal).
  3. slow_clients: 200 slowloris sockets (headers trickled, reconnecting when closed) and 500 idle
     keep-alive sockets, while a normal client keeps classifying; its latency against the baseline.
  4. metrics: the series count in /metrics after all of the above against the count at start-up, and the
     label values (bad models, levels and paths must not create any).
  5. sigterm: the same server (its access log on) gets SIGTERM under load: every request it accepted
     (its request id in the access log) must be answered, new connections refused, the process gone within
     the grace period; a restarted server then answers again.

Load goes to 127.0.0.1 only, each scenario bounded in time and requests. The soft open-file limit is raised
to the hard limit (the sockets of scenario 3 and hey's 400 connections). Exit status 0 when every check of
the bar passes, 1 otherwise (the report says which failed), 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import re
import resource
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "fixtures" / "fmnist-0019-t-shirt-top.png"
LEVELS = ("off", "low", "medium", "high")
#: 5xx statuses the API documents: 503 queue_full / not_ready (with Retry-After), 504 timeout.
DOCUMENTED_5XX = {503, 504}
#: A request not answered in this many seconds is a hang (the default request deadline is 10 s).
HANG_S = 30.0
#: Seconds the service may take to exit after SIGTERM: uvicorn's drain (30 s) plus the batchers' join (10 s).
GRACE_S = 40.0
#: Words that must never appear in an error body: stack traces and paths of the installation.
LEAKS = ("Traceback", 'File "', "site-packages", ".py", str(ROOT))

#: The two profiles: the full soak (its report is committed) and the short one CI runs.
PROFILES = {
    "full": {
        "overload_s": 30,
        "concurrency": 400,
        "slow_s": 60,
        "slowloris": 200,
        "idle": 500,
        "sigterm_load_s": 3,
        "baseline": 30,
    },
    "short": {
        "overload_s": 3,
        "concurrency": 400,
        "slow_s": 4,
        "slowloris": 200,
        "idle": 500,
        "sigterm_load_s": 1,
        "baseline": 10,
    },
}
#: Server settings of the soak (the service's defaults otherwise: caps, queue, in-flight limit, deadline).
#: The access log (info, the default level) shows which requests the server accepted (scenario sigterm).
SERVER_ENV = {"HASTE_TORCH_THREADS": "1", "HASTE_DECODE_THREADS": "1", "HASTE_LOG_LEVEL": "info"}


# --------------------------------------------------------------------------------------------- the server


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``python -m haste.cli serve`` on a free loopback port, its output in a temporary file."""

    def __init__(self, model: str, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        full = {**os.environ, **SERVER_ENV, "HASTE_MODELS": model, **(env or {})}
        self.log = tempfile.NamedTemporaryFile(prefix="haste-soak-", suffix=".log", delete=False)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "haste.cli", "serve", "--host", "127.0.0.1", "--port", str(self.port)],
            env=full,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )

    def output(self) -> str:
        return Path(self.log.name).read_text(errors="replace")

    def wait_ready(self, timeout: float = 600.0) -> float:
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.output()[-3000:]}")
            try:
                if httpx.get(self.url + "/readyz", timeout=5).status_code == 200:
                    return time.monotonic() - start
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"not ready after {timeout} s:\n{self.output()[-3000:]}")

    def rss_mib(self) -> float:
        try:
            for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        except OSError:
            pass
        return 0.0

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if not self.log.closed:
            self.log.close()
            os.unlink(self.log.name)


def raise_open_file_limit() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = 65536 if hard == resource.RLIM_INFINITY else hard
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


def ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 1)


# ------------------------------------------------------------------------------------------ the images


def _picture(rng: random.Random, size: tuple[int, int] = (48, 48), mode: str = "RGB") -> Image.Image:
    """A small noisy gradient (compresses like a photo, not like a flat field)."""
    image = Image.linear_gradient("L").resize(size).convert("RGB")
    noise = Image.effect_noise(size, rng.randint(10, 80)).convert("RGB")
    return Image.blend(image, noise, 0.4).convert(mode)


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **options)
    return buf.getvalue()


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_bomb(width: int, height: int, real: bool) -> bytes:
    """A grayscale PNG of ``width`` x ``height``: real zero rows (zlib makes them tiny) or, when not
    ``real``, one compressed row only (the header alone claims the size)."""
    row = b"\x00" * (width + 1 if real else 1)
    compressor = zlib.compressobj(6)
    raw = b"".join(compressor.compress(row) for _ in range(height if real else 1)) + compressor.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", raw) + _png_chunk(b"IEND", b"")


def jpeg_with_size(data: bytes, width: int, height: int) -> bytes:
    """A JPEG whose SOF marker claims ``width`` x ``height``."""
    i = 2
    while i < len(data) - 9:
        marker, length = data[i + 1], struct.unpack(">H", data[i + 2 : i + 4])[0]
        if marker in (0xC0, 0xC1, 0xC2):
            return data[: i + 5] + struct.pack(">HH", height, width) + data[i + 9 :]
        i += 2 + length
    raise ValueError("no SOF marker")


def webp_with_size(width: int, height: int) -> bytes:
    """A lossless WebP header claiming ``width`` x ``height`` (at most 16384 a side), no real pixels."""
    bits = (width - 1) | ((height - 1) << 14)
    body = b"\x2f" + struct.pack("<I", bits) + b"\x00" * 16
    chunk = b"VP8L" + struct.pack("<I", len(body)) + body
    return b"RIFF" + struct.pack("<I", 4 + len(chunk)) + b"WEBP" + chunk


def gif_with_size(width: int, height: int) -> bytes:
    return b"GIF89a" + struct.pack("<HH", width, height) + b"\x00\x00\x00" + b";"


def exif_rotated_jpeg(rng: random.Random, orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(_picture(rng, (64, 40)), "JPEG", exif=exif.tobytes())


def multipage_tiff(rng: random.Random) -> bytes:
    frames = [_picture(rng) for _ in range(3)]
    return encode(frames[0], "TIFF", save_all=True, append_images=frames[1:])


def animated(rng: random.Random, fmt: str) -> bytes:
    frames = [_picture(rng) for _ in range(4)]
    return encode(frames[0], fmt, save_all=True, append_images=frames[1:], duration=50, loop=0)


# ------------------------------------------------------------------------------------------- the cases


@dataclass
class Case:
    """One request and the statuses the documented API allows for it."""

    name: str
    category: str
    expect: frozenset[int]
    method: str = "POST"
    path: str = "/v1/classify"
    query: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes | None = None
    chunks: list[bytes] | None = None  # sent with Transfer-Encoding: chunked
    multipart: list[tuple[str, tuple[str, bytes, str | None]]] | None = None
    top_k: int = 5


def _raw(name: str, category: str, data: bytes, expect: set[int], ctype: str | None = "image/png", **kw) -> Case:
    return Case(name, category, frozenset(expect), headers={"Content-Type": ctype} if ctype else {}, body=data, **kw)


BAD = {400}
TOO_LARGE = {413}
UNSUPPORTED = {415}
OK = {200}
#: A corrupted image may still decode (a flipped bit in JPEG scan data): a valid answer or a 4xx.
CORRUPT = {200, 400, 413, 415}


def bad_input_cases(seed: int, max_bytes: int) -> list[Case]:
    """The seeded case list (the same seed gives the same cases)."""
    rng = random.Random(seed)
    good = FIXTURE.read_bytes()
    cases: list[Case] = []
    add = cases.append
    pic = _picture(rng)

    # valid images in every served format and mode: 200 with predictions
    valid = {
        "png-rgb": encode(pic, "PNG"),
        "png-gray": encode(pic.convert("L"), "PNG"),
        "png-16bit": encode(pic.convert("I").point(lambda v: v * 256).convert("I;16"), "PNG"),
        "png-rgba": encode(pic.convert("RGBA"), "PNG"),
        "png-la": encode(pic.convert("LA"), "PNG"),
        "png-palette-alpha": encode(pic.convert("P", palette=Image.Palette.ADAPTIVE), "PNG", transparency=0),
        "png-1bit": encode(pic.convert("1"), "PNG"),
        "png-optimized": encode(pic, "PNG", optimize=True),
        "apng-animated": animated(rng, "PNG"),
        "jpeg-rgb": encode(pic, "JPEG", quality=85),
        "jpeg-gray": encode(pic.convert("L"), "JPEG"),
        "jpeg-cmyk": encode(pic.convert("CMYK"), "JPEG"),
        "jpeg-progressive": encode(pic, "JPEG", progressive=True),
        "jpeg-subsampling-444": encode(pic, "JPEG", subsampling=0),
        "webp-lossy": encode(pic, "WEBP", quality=70),
        "webp-lossless": encode(pic, "WEBP", lossless=True),
        "webp-alpha": encode(pic.convert("RGBA"), "WEBP"),
        "webp-animated": animated(rng, "WEBP"),
        "png-8x8-smallest": encode(_picture(rng, (8, 8)), "PNG"),
        "png-256x8-widest": encode(_picture(rng, (256, 8)), "PNG"),
        "png-2000x1500-large": encode(_picture(rng, (2000, 1500)), "PNG"),
        "fixture-png": good,
    }
    for orientation in range(1, 9):
        valid[f"jpeg-exif-orientation-{orientation}"] = exif_rotated_jpeg(rng, orientation)
    for name, data in valid.items():
        add(_raw(name, "valid image", data, OK, ctype=None))
    for ctype in ("image/png", "image/jpeg", "image/webp", "image/jpg", "image/pjpeg", "application/octet-stream",
                  "IMAGE/PNG", "image/png; charset=binary"):  # fmt: skip
        add(_raw(f"fixture as {ctype!r}", "valid image", good, OK, ctype=ctype))
    add(_raw("fixture without content type", "valid image", good, OK, ctype=None))
    add(Case("fixture multipart", "valid image", frozenset(OK), multipart=[("file", ("x.png", good, "image/png"))]))
    add(Case("fixture multipart, part type text/plain", "valid image", frozenset(OK),
             multipart=[("file", ("x.png", good, "text/plain"))]))  # fmt: skip
    add(Case("fixture PUT", "valid image", frozenset(OK), method="PUT", headers={"Content-Type": "image/png"},
             body=good))  # fmt: skip
    add(Case("fixture on /classify", "valid image", frozenset(OK), path="/classify",
             headers={"Content-Type": "image/png"}, body=good))  # fmt: skip
    for level in LEVELS:
        for top_k in (1, 10):
            add(_raw(f"fixture level={level} top_k={top_k}", "valid image", good, OK,
                     query=f"level={level}&top_k={top_k}", top_k=top_k))  # fmt: skip

    # sizes refused by the documented caps
    add(_raw("png-1x1", "size", encode(_picture(rng, (1, 1)), "PNG"), BAD))
    add(_raw("png-10000x1", "size", encode(Image.new("L", (10000, 1), 128), "PNG"), BAD))
    add(_raw("png-1x10000", "size", encode(Image.new("L", (1, 10000), 128), "PNG"), BAD))
    add(_raw("png-7x7", "size", encode(_picture(rng, (7, 7)), "PNG"), BAD))
    add(_raw("png-300x8-too-wide", "size", encode(_picture(rng, (300, 8)), "PNG"), BAD))
    add(_raw("jpeg-1x1", "size", encode(_picture(rng, (1, 1)), "JPEG"), BAD))
    add(_raw("webp-10000x1", "size", encode(Image.new("L", (10000, 1), 128), "WEBP", lossless=True), BAD))

    # decompression bombs in several formats
    add(_raw("png-bomb-6000x5000-real", "bomb", png_bomb(6000, 5000, real=True), TOO_LARGE))
    add(_raw("png-bomb-100000x100000-header", "bomb", png_bomb(100_000, 100_000, real=False), TOO_LARGE))
    add(_raw("png-bomb-20000x20000-header", "bomb", png_bomb(20_000, 20_000, real=False), TOO_LARGE))
    add(_raw("png-bomb-2^31-header", "bomb", png_bomb(2**31 - 1, 2**31 - 1, real=False), {400, 413}))
    jpeg = encode(pic, "JPEG")
    add(_raw("jpeg-bomb-65000x65000-header", "bomb", jpeg_with_size(jpeg, 65_000, 65_000), TOO_LARGE))
    add(_raw("jpeg-bomb-8000x4000-header", "bomb", jpeg_with_size(jpeg, 8000, 4000), TOO_LARGE))
    add(_raw("jpeg-bomb-6000x5000-real", "bomb", encode(Image.new("L", (6000, 5000), 7), "JPEG"), TOO_LARGE))
    flat = Image.new("L", (6000, 5000), 7)
    add(_raw("webp-bomb-6000x5000-real", "bomb", encode(flat, "WEBP", lossless=True, method=0), TOO_LARGE))
    add(_raw("webp-bomb-16384x16384-header", "bomb", webp_with_size(16384, 16384), {400, 413}))
    add(_raw("webp-bomb-6000x6000-header", "bomb", webp_with_size(6000, 6000), {400, 413}))
    add(_raw("gif-bomb-65535x65535-header", "bomb", gif_with_size(65535, 65535), UNSUPPORTED))
    add(_raw("tiff-bomb-claims-60000x60000", "bomb", encode(Image.new("1", (600, 600)), "TIFF", compression="group4"),
             UNSUPPORTED))  # fmt: skip

    # formats recognised and not served: 415
    for name, data in {
        "gif-static": encode(pic.convert("P"), "GIF"),
        "gif-animated": animated(rng, "GIF"),
        "tiff-rgb": encode(pic, "TIFF"),
        "tiff-multipage": multipage_tiff(rng),
        "tiff-16bit": encode(pic.convert("I;16"), "TIFF"),
        "bmp": encode(pic, "BMP"),
        "ico": encode(pic, "ICO"),
    }.items():
        add(_raw(name, "unsupported format", data, UNSUPPORTED, ctype="application/octet-stream"))

    # truncated images: cut inside the pixel data (4xx; GIF and TIFF are 415 whatever their state)
    formats = {
        "PNG": (encode(pic, "PNG"), BAD),
        "JPEG": (encode(pic, "JPEG"), BAD),
        "WEBP": (encode(pic, "WEBP"), BAD),
        "GIF": (encode(pic.convert("P"), "GIF"), {400, 415}),
        "TIFF": (encode(pic, "TIFF"), {400, 415}),
    }
    for fmt, (data, expect) in formats.items():
        for _ in range(14):
            cut = rng.randrange(0, int(len(data) * 0.9))
            add(_raw(f"{fmt.lower()}-truncated-at-{cut}", "truncated", data[:cut], expect | {400}))
    # corrupted images: bytes overwritten, slices dropped or repeated
    for fmt, (data, _) in formats.items():
        for i in range(14):
            buf = bytearray(data)
            for _ in range(rng.randint(1, 12)):
                buf[rng.randrange(len(buf))] = rng.randrange(256)
            if i % 3 == 0:
                a = rng.randrange(len(buf))
                buf[a : a + rng.randint(1, 64)] = b""
            if i % 3 == 1:
                a = rng.randrange(len(buf))
                buf[a:a] = buf[a : a + 64] * rng.randint(2, 8)
            add(_raw(f"{fmt.lower()}-corrupt-{i}", "corrupt", bytes(buf), CORRUPT))
    # random bytes and forged magic numbers
    for i in range(30):
        data = bytes(rng.randrange(256) for _ in range(rng.choice((1, 7, 64, 1024, 4096))))
        add(_raw(f"random-bytes-{i}-{len(data)}", "random bytes", data, {400, 415}, ctype="application/octet-stream"))
    magics = [b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"RIFF\x00\x00\x00\x00WEBPVP8 ", b"RIFF\xff\xff\xff\x7fWEBPVP8L",
              b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", b"\xff\xd8\xff\xc0\x00\x11\x08"]  # fmt: skip
    for i in range(24):
        data = rng.choice(magics) + bytes(rng.randrange(256) for _ in range(rng.randint(0, 512)))
        add(_raw(f"forged-magic-{i}", "forged header", data, {400, 413, 415}))
    add(_raw("empty body", "empty", b"", BAD))
    add(_raw("empty body, no content type", "empty", b"", BAD, ctype=None))

    # content types and bodies
    for ctype in ("text/plain", "application/json", "image/gif", "image/tiff", "video/mp4", "text/html; charset=utf-8",
                  "application/x-www-form-urlencoded", "image/svg+xml", "*/*", "image"):  # fmt: skip
        add(_raw(f"fixture as {ctype!r}", "content type", good, UNSUPPORTED, ctype=ctype))
    add(_raw("multipart without boundary", "multipart", good, BAD, ctype="multipart/form-data"))
    add(_raw("multipart, empty boundary", "multipart", good, BAD, ctype="multipart/form-data; boundary="))
    add(_raw("multipart, unterminated part", "multipart",
             b"--xyz\r\nContent-Disposition: form-data; name=file; filename=a\r\n\r\n" + good, {400},
             ctype="multipart/form-data; boundary=xyz"))  # fmt: skip
    add(_raw("multipart, garbage", "multipart", bytes(rng.randrange(256) for _ in range(600)), BAD,
             ctype="multipart/form-data; boundary=xyz"))  # fmt: skip
    add(Case("multipart, field 'image' not 'file'", "multipart", frozenset(BAD),
             multipart=[("image", ("x.png", good, "image/png"))]))  # fmt: skip
    add(Case("multipart, two files", "multipart", frozenset(BAD),
             multipart=[("file", ("x.png", good, "image/png")), ("file", ("y.png", good, "image/png"))]))  # fmt: skip
    add(Case("multipart, empty file", "multipart", frozenset(BAD), multipart=[("file", ("x.png", b"", "image/png"))]))
    add(Case("multipart, corrupt file", "multipart", frozenset(BAD),
             multipart=[("file", ("x.png", good[: len(good) // 2], "image/png"))]))  # fmt: skip
    add(Case("multipart, gif file", "multipart", frozenset(UNSUPPORTED),
             multipart=[("file", ("x.gif", encode(pic.convert("P"), "GIF"), "image/gif"))]))  # fmt: skip
    boundary = "b0undary"
    form = f'--{boundary}\r\nContent-Disposition: form-data; name="file"\r\n\r\nnot a file\r\n--{boundary}--\r\n'
    add(_raw("multipart, 'file' is a text field", "multipart", form.encode(), BAD,
             ctype=f"multipart/form-data; boundary={boundary}"))  # fmt: skip
    # the byte cap: announced, streamed (chunked), multipart
    big = good + b"\x00" * (max_bytes + 1 - len(good))
    add(_raw("body one byte over the cap (Content-Length)", "size cap", big, TOO_LARGE))
    add(_raw("body twice the cap (Content-Length)", "size cap", big + big, TOO_LARGE))
    step = 256 * 1024
    add(Case("chunked body past the cap", "size cap", frozenset(TOO_LARGE), headers={"Content-Type": "image/png"},
             chunks=[big[i : i + step] for i in range(0, len(big), step)]))  # fmt: skip
    add(Case("chunked body 3x the cap", "size cap", frozenset(TOO_LARGE), headers={"Content-Type": "image/png"},
             chunks=[(big * 3)[i : i + step] for i in range(0, 3 * len(big), step)]))  # fmt: skip
    add(Case("chunked body under the cap, valid", "size cap", frozenset(OK), headers={"Content-Type": "image/png"},
             chunks=[good[i : i + 100] for i in range(0, len(good), 100)]))  # fmt: skip
    add(Case("chunked body, garbage", "size cap", frozenset(BAD), headers={"Content-Type": "image/png"},
             chunks=[b"\x00" * 1000] * 5))  # fmt: skip
    add(Case("multipart file past the cap", "size cap", frozenset(TOO_LARGE),
             multipart=[("file", ("x.png", big, "image/png"))]))  # fmt: skip

    # query values
    long = "a" * 5000
    queries = {
        "level=extreme": ({400}, "invalid_level"), "level=": ({400}, None), "level=HIGH": ({400}, None),
        "level=high%20": ({400}, None), "level=%00": ({400}, None), "level=%ff%fe": ({400}, None),
        "level=high&level=low": ({400}, None), "level=high&level=high": ({400}, None), f"level={long}": ({400}, None),
        "top_k=0": ({400}, None), "top_k=-1": ({400}, None), "top_k=abc": ({400}, None), "top_k=1.5": ({400}, None),
        "top_k=11": ({400}, None), "top_k=99999999999999999999999": ({400}, None), "top_k=": ({400}, None),
        "top_k=1&top_k=2": ({400}, None), "top_k=%2B3": ({200}, None), "top_k=1e3": ({400}, None),
        "levle=high": ({400}, None), "model=": ({400}, None), "x=1&y=2": ({400}, None),
        "level=high&top_k=3&model=m&extra=1": ({400}, None), "%00=1": ({400}, None),
        "model=..%2F..%2Fetc%2Fpasswd": ({404}, None), "model=../../etc/passwd": ({404}, None),
        "model=%2e%2e%2f%2e%2e%2f": ({404}, None), "model=%252e%252e%252f": ({404}, None),
        f"model={long}": ({404}, None), f"model={'b' * 30000}": ({404, 414, 431, 400}, None),
        "model=%00": ({404}, None), "model=%0d%0aSet-Cookie:%20x=1": ({404}, None),
        "model=%E2%80%AEresnet": ({404}, None), "model=FMNIST-RESNET18": ({404}, None),
        "model=fmnist-resnet18%2F..%2F..": ({404}, None), "model=a&model=b": ({400}, None),
        "model=%C0%AE%C0%AE%2F": ({404}, None), "model=%": ({404, 400}, None), "level=%": ({400}, None),
        "model=*": ({404}, None), "model=$(id)": ({404}, None), "model=;ls": ({404}, None),
    }  # fmt: skip
    for query, (expect, _) in queries.items():
        top_k = 3 if query == "top_k=%2B3" else 5
        add(_raw(f"query {query[:60]}", "query", good, expect, query=query, top_k=top_k))

    # model names and paths outside classify
    for path, expect in {
        "/v1/models/..%2F..%2Fetc%2Fpasswd": {404}, "/v1/models/%2e%2e/%2e%2e/etc/passwd": {404},
        f"/v1/models/{long}": {404}, "/v1/models/%00": {404}, "/v1/models/fmnist-resnet18/../../x": {404},
        "/v1/models/%252e%252e": {404}, "/v1/models/%E2%80%AE": {404}, "/v1/models/": {404},
        "/nope": {404}, "/v1/classify/../../etc/passwd": {404}, "/static/../../etc/passwd": {404},
        "/docs/../../../etc/passwd": {404}, "/%2e%2e/%2e%2e/etc/passwd": {404}, "/v2/models": {404},
    }.items():  # fmt: skip
        add(Case(f"GET {path[:60]}", "path", frozenset(expect), method="GET", path=path))
    for method in ("GET", "DELETE", "PATCH"):
        add(Case(f"{method} /v1/classify", "method", frozenset({405}), method=method))
    add(Case("POST /v1/models", "method", frozenset({405}), path="/v1/models", body=good))
    add(Case("POST /metrics", "method", frozenset({405}), path="/metrics", body=good))
    return cases


# ------------------------------------------------------------------------------------ checking answers


def check_error_body(response: httpx.Response) -> str | None:
    """None if ``response`` is the documented error shape with a clear message and no leak, else why not."""
    try:
        body = response.json()
    except ValueError:
        return f"not JSON: {response.text[:120]!r}"
    if not isinstance(body, dict) or set(body) != {"error", "code", "request_id"}:
        return f"not the error shape: {str(body)[:120]}"
    if not body["error"] or not body["code"] or body["request_id"] != response.headers.get("x-request-id"):
        return f"empty message or code, or request id not the header's: {body}"
    if len(body["error"]) > 1000:
        return f"message of {len(body['error'])} characters"
    for word in LEAKS:
        if word in response.text:
            return f"error body contains {word!r}"
    return None


def check_answer(response: httpx.Response, top_k: int) -> str | None:
    body = response.json()
    predictions = body.get("predictions")
    if not isinstance(predictions, list) or len(predictions) != top_k:
        return f"{top_k} predictions expected: {str(body)[:160]}"
    if not all(0.0 <= p["score"] <= 1.0 and p["label"] for p in predictions):
        return f"bad prediction: {predictions}"
    return None


def send(client: httpx.Client, case: Case) -> httpx.Response:
    url = case.path + (f"?{case.query}" if case.query else "")
    if case.multipart is not None:
        return client.request(case.method, url, files=case.multipart, headers=case.headers)
    if case.chunks is not None:
        return client.request(case.method, url, content=iter(case.chunks), headers=case.headers)
    return client.request(case.method, url, content=case.body, headers=case.headers)


class Health:
    """The known-good request and its first answer; ``check`` says whether the server still gives it."""

    def __init__(self, client: httpx.Client) -> None:
        self.client = client
        self.reference = self._classify()

    def _classify(self) -> dict:
        response = self.client.post(
            "/v1/classify?level=medium&top_k=3", content=FIXTURE.read_bytes(), headers={"Content-Type": "image/png"}
        )
        response.raise_for_status()
        return response.json()

    def check(self) -> str | None:
        try:
            ready = self.client.get("/readyz")
            if ready.status_code != 200:
                return f"/readyz {ready.status_code}"
            answer = self._classify()
        except (httpx.HTTPError, ValueError) as exc:
            return f"health request failed: {exc!r}"
        want = [(p["index"], p["score"]) for p in self.reference["predictions"]]
        got = [(p["index"], p["score"]) for p in answer["predictions"]]
        if [i for i, _ in want] != [i for i, _ in got] or any(abs(a - b) > 1e-4 for (_, a), (_, b) in zip(want, got)):
            return f"the known image is answered {got}, first {want}"
        return None


def run_bad_input(server: Server, seed: int, batch: int = 25) -> dict:
    cases = bad_input_cases(seed, max_bytes=10 * 1024 * 1024)
    results, failures, health_failures = [], [], []
    statuses: Counter[int] = Counter()
    codes: Counter[str] = Counter()
    hangs = 0
    start = time.monotonic()
    with httpx.Client(base_url=server.url, timeout=HANG_S) as client:
        health = Health(client)
        for i, case in enumerate(cases):
            t0 = time.monotonic()
            problem = None
            status = None
            try:
                response = send(client, case)
                status = response.status_code
            except httpx.TimeoutException:
                hangs += 1
                problem = f"no answer in {HANG_S:g} s"
            except httpx.HTTPError as exc:
                problem = f"transport error: {exc!r}"
            if status is not None:
                statuses[status] += 1
                if status not in case.expect:
                    problem = f"status {status}, expected {sorted(case.expect)}: {response.text[:200]!r}"
                elif status == 200:
                    problem = check_answer(response, case.top_k)
                else:
                    problem = check_error_body(response)
                    if problem is None:
                        codes[response.json()["code"]] += 1
            results.append({"name": case.name, "category": case.category, "status": status,
                            "seconds": round(time.monotonic() - t0, 4)})  # fmt: skip
            if problem:
                failures.append({"case": case.name, "category": case.category, "problem": problem})
            if (i + 1) % batch == 0 or i + 1 == len(cases):
                why = health.check()
                if why:
                    health_failures.append({"after_case": i + 1, "problem": why})
    categories = Counter(c.category for c in cases)
    return {
        "seed": seed,
        "cases": len(cases),
        "categories": dict(categories),
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "error_codes": dict(sorted(codes.items())),
        "answered_5xx": sum(v for k, v in statuses.items() if k >= 500),
        "hangs": hangs,
        "unexpected": failures,
        "health_checks": (len(cases) + batch - 1) // batch,
        "health_failures": health_failures,
        "slowest_case_s": max((r["seconds"] for r in results), default=None),
        "seconds": round(time.monotonic() - start, 1),
        "results": results,
    }


# ------------------------------------------------------------------------------------------- overload


def timed_classify(client: httpx.Client, data: bytes) -> tuple[httpx.Response | None, float]:
    """One classify request of ``data`` at level medium: (its response, None if the transport failed; seconds)."""
    t0 = time.perf_counter()
    try:
        response = client.post("/v1/classify?level=medium", content=data, headers={"Content-Type": "image/png"})
    except httpx.HTTPError:
        response = None
    return response, time.perf_counter() - t0


def latencies(url: str, n: int, timeout: float = HANG_S) -> list[float]:
    """Seconds of ``n`` sequential classify requests of the fixture (all must be 200)."""
    data = FIXTURE.read_bytes()
    out = []
    with httpx.Client(base_url=url, timeout=timeout) as client:
        for _ in range(n):
            response, took = timed_classify(client, data)
            out.append(took)
            if response is None or response.status_code != 200:
                answer = "no answer" if response is None else f"{response.status_code}: {response.text[:200]}"
                raise RuntimeError(f"baseline request answered {answer}")
    return out


def parse_hey(text: str) -> dict:
    statuses = {m[0]: int(m[1]) for m in re.findall(r"\[(\d{3})\]\s+(\d+) responses", text)}
    errors = {m[1].strip(): int(m[0]) for m in re.findall(r"\[(\d+)\]\s+(.+)", text.split("Error distribution:")[-1])}
    if "Error distribution:" not in text:
        errors = {}
    pct = {f"p{m[0]}": float(m[1]) for m in re.findall(r"(\d+)%% in ([\d.]+) secs".replace("%%", "%"), text)}
    rps = re.search(r"Requests/sec:\s+([\d.]+)", text)
    slowest = re.search(r"Slowest:\s+([\d.]+) secs", text)
    return {
        "statuses": statuses,
        "errors": errors,
        "latency_s": pct,
        "slowest_s": float(slowest[1]) if slowest else None,
        "requests_per_s": float(rps[1]) if rps else None,
    }


class RssSampler(threading.Thread):
    def __init__(self, server: Server, period: float = 1.0) -> None:
        super().__init__(daemon=True)
        self.server, self.period, self.samples = server, period, []
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.is_set():
            self.samples.append(round(self.server.rss_mib(), 1))
            self.stopped.wait(self.period)

    def stop(self) -> list[float]:
        self.stopped.set()
        self.join()
        return self.samples


def recovery(url: str, normal_s: float, within_s: float = 30.0, run: int = 5) -> dict:
    """Sequential requests from the moment load stops: seconds until ``run`` in a row take at most
    ``normal_s``; their latencies."""
    data = FIXTURE.read_bytes()
    start = time.monotonic()
    seen: list[tuple[float, float, int]] = []
    streak = 0
    with httpx.Client(base_url=url, timeout=HANG_S) as client:
        while time.monotonic() - start < within_s:
            response, took = timed_classify(client, data)
            status = response.status_code if response is not None else 0
            seen.append((round(time.monotonic() - start, 3), took, status))
            streak = streak + 1 if status == 200 and took <= normal_s else 0
            if streak == run:
                recovered = seen[-run][0]
                return {"recovered_after_s": recovered, "requests": len(seen),
                        "latency_ms": [ms(t) for _, t, _ in seen[-run:]]}  # fmt: skip
    return {"recovered_after_s": None, "requests": len(seen), "latency_ms": [ms(t) for _, t, _ in seen[-run:]]}


def run_overload(server: Server, seconds: int, concurrency: int, baseline: int = 30) -> dict:
    hey = shutil.which("hey")
    if hey is None:
        raise RuntimeError("hey is not installed (apt-get install hey)")
    before = latencies(server.url, baseline)
    normal_s = max(2 * percentile(before, 95), percentile(before, 50) + 0.05)
    sampler = RssSampler(server)
    rss_start = server.rss_mib()
    sampler.start()
    t0 = time.monotonic()
    run = subprocess.run(
        [hey, "-z", f"{seconds}s", "-c", str(concurrency), "-t", str(int(HANG_S)), "-m", "POST", "-T", "image/png",
         "-D", str(FIXTURE), f"{server.url}/v1/classify?level=medium"],
        capture_output=True, text=True, timeout=seconds + HANG_S + 60,
    )  # fmt: skip
    wall = time.monotonic() - t0
    samples = sampler.stop()
    back = recovery(server.url, normal_s)
    after = latencies(server.url, baseline)
    hey_report = parse_hey(run.stdout)
    statuses = {int(k): v for k, v in hey_report["statuses"].items()}
    return {
        "concurrency": concurrency,
        "seconds": seconds,
        "wall_s": round(wall, 1),
        "hey_exit": run.returncode,
        **hey_report,
        "requests": sum(statuses.values()),
        "undocumented_5xx": sum(v for k, v in statuses.items() if k >= 500 and k not in DOCUMENTED_5XX),
        "rss_mib": {
            "start": round(rss_start, 1),
            "peak": max(samples, default=None),
            "end": round(server.rss_mib(), 1),
            "samples": len(samples),
            "every_s": 1.0,
        },  # fmt: skip
        "latency_before_ms": {"p50": ms(percentile(before, 50)), "p95": ms(percentile(before, 95))},
        "normal_ms": ms(normal_s),
        "recovery": back,
        "latency_after_ms": {"p50": ms(percentile(after, 50)), "p95": ms(percentile(after, 95))},
    }


# ------------------------------------------------------------------------------------- slow and idle clients


SLOW_HEAD = b"POST /v1/classify HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/png\r\n"


def _slowloris(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.sendall(SLOW_HEAD)
    sock.setblocking(False)
    return sock


def _closed(sock: socket.socket) -> bool:
    try:
        return sock.recv(4096) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


def run_slow_clients(server: Server, seconds: int, slowloris: int, idle: int, baseline: int = 20) -> dict:
    """``slowloris`` sockets trickling headers (one header line every 2 s; reopened when the server closes
    them) and ``idle`` keep-alive sockets (one /livez answered, then silent) for ``seconds``, while one
    normal client classifies every 0.2 s."""
    before = latencies(server.url, baseline)
    data = FIXTURE.read_bytes()
    loris = [_slowloris(server.port) for _ in range(slowloris)]
    idlers = []
    for _ in range(idle):
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        sock.sendall(b"GET /livez HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        sock.recv(4096)
        sock.setblocking(False)
        idlers.append(sock)
    opened_at = time.monotonic()
    closed_by_server, first_close_s, reopen_failed = 0, None, 0
    normal: list[float] = []
    normal_status: Counter[int] = Counter()
    next_trickle = time.monotonic() + 2
    n = 0
    with httpx.Client(base_url=server.url, timeout=HANG_S) as client:
        while time.monotonic() - opened_at < seconds:
            response, took = timed_classify(client, data)
            status = response.status_code if response is not None else 0
            normal.append(took)
            normal_status[status] += 1
            if time.monotonic() >= next_trickle:
                n += 1
                for i, sock in enumerate(loris):
                    try:
                        sock.send(f"X-Slow-{n}: {n}\r\n".encode())
                        dead = _closed(sock)
                    except OSError:
                        dead = True
                    if dead:
                        closed_by_server += 1
                        first_close_s = first_close_s or round(time.monotonic() - opened_at, 1)
                        sock.close()
                        try:
                            loris[i] = _slowloris(server.port)
                        except OSError:
                            reopen_failed += 1
                next_trickle = time.monotonic() + 2
            time.sleep(0.2)
    idle_open = sum(not _closed(s) for s in idlers)
    loris_open = sum(not _closed(s) for s in loris)
    for sock in loris + idlers:
        sock.close()
    return {
        "seconds": seconds,
        "slowloris_sockets": slowloris,
        "idle_sockets": idle,
        "normal_requests": len(normal),
        "normal_statuses": {str(k): v for k, v in sorted(normal_status.items())},
        "latency_before_ms": {"p50": ms(percentile(before, 50)), "p95": ms(percentile(before, 95))},
        "latency_during_ms": {
            "p50": ms(percentile(normal, 50)),
            "p95": ms(percentile(normal, 95)),
            "max": ms(max(normal, default=None)),
        },  # fmt: skip
        "slowloris_closed_by_server": closed_by_server,
        "slowloris_first_closed_after_s": first_close_s,
        "slowloris_reopen_failed": reopen_failed,
        "slowloris_open_at_end": loris_open,
        "idle_open_at_end": idle_open,
    }


# -------------------------------------------------------------------------------------------- metrics


def series(url: str) -> tuple[int, dict[str, set[str]]]:
    """(number of samples in /metrics, label name -> values seen)."""
    text = httpx.get(url + "/metrics", timeout=30).text
    count, labels = 0, {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            count += 1
            for key, value in s.labels.items():
                labels.setdefault(key, set()).add(value)
    return count, labels


def run_metrics(server: Server, at_start: int, model: str, distinct: int = 50) -> dict:
    """Label values and series count after the scenarios before; then ``distinct`` requests each with a
    new unknown model name, a new bad level, a new unknown path and a new request id must add no series."""
    count, labels = series(server.url)
    allowed = {"model": {model, "none"}, "level": {*LEVELS, "none"}}
    stray = {key: sorted(labels.get(key, set()) - values) for key, values in allowed.items()}
    codes = sorted(labels.get("code", set()))
    bad_codes = [c for c in codes if not re.fullmatch(r"[1-5]\d\d", c)]
    data = FIXTURE.read_bytes()
    with httpx.Client(base_url=server.url, timeout=HANG_S) as client:
        for i in range(distinct):
            headers = {"Content-Type": "image/png", "X-Request-ID": f"cardinality-{i}"}
            client.post(f"/v1/classify?model=no-such-model-{i}", content=data, headers=headers)
            client.post(f"/v1/classify?level=level-{i}", content=data, headers=headers)
            client.get(f"/no/such/path/{i}", headers=headers)
            client.get(f"/v1/models/no-such-model-{i}", headers=headers)
    final, _ = series(server.url)
    return {
        "series_at_start": at_start,
        "series_after": count,
        "label_values": {k: sorted(v) for k, v in sorted(labels.items()) if k in ("model", "level", "code")},
        "stray_label_values": {k: v for k, v in stray.items() if v} | ({"code": bad_codes} if bad_codes else {}),
        "distinct_bad_requests": 4 * distinct,
        "series_added_by_them": final - count,
    }


# ------------------------------------------------------------------------------------------- SIGTERM


def run_sigterm(server: Server, model: str, load_s: float, workers: int = 32) -> dict:
    """``server`` (its access log at info level) under ``workers`` clients (a new connection per request)
    gets SIGTERM after ``load_s`` seconds; the clients go on until the process has exited. Every request id
    the access log shows was answered must have reached its client. Then a new server must answer."""
    try:
        data = FIXTURE.read_bytes()
        stop = threading.Event()
        outcomes: dict[str, tuple[str, int | None, float]] = {}
        lock = threading.Lock()
        signalled_at: list[float] = []

        def client(k: int) -> None:
            i = 0
            while not stop.is_set():
                i += 1
                rid = f"soak-{k}-{i}"
                sent_after = time.monotonic() - signalled_at[0] if signalled_at else -1.0
                try:
                    headers = {"Content-Type": "image/png", "X-Request-ID": rid, "Connection": "close"}
                    r = httpx.post(
                        f"{server.url}/v1/classify?level=medium", content=data, headers=headers, timeout=HANG_S
                    )
                    outcome = (f"answered {r.status_code}", r.status_code, sent_after)
                except httpx.ConnectError:
                    outcome = ("refused", None, sent_after)
                    time.sleep(0.05)
                except httpx.HTTPError as exc:
                    outcome = (f"dropped: {type(exc).__name__}", None, sent_after)
                if outcome[1] is not None and sent_after < 0 and signalled_at:
                    outcome = (f"{outcome[0]} after the signal", outcome[1], sent_after)  # in flight at SIGTERM
                with lock:
                    outcomes[rid] = outcome

        with ThreadPoolExecutor(workers) as pool:
            for k in range(workers):
                pool.submit(client, k)
            time.sleep(load_s)
            signalled_at.append(time.monotonic())
            server.proc.send_signal(signal.SIGTERM)
            try:
                server.proc.wait(GRACE_S + 20)
                exit_s = time.monotonic() - signalled_at[0]
            except subprocess.TimeoutExpired:
                exit_s = None
            time.sleep(0.5)  # new requests after the exit: refused
            stop.set()
        log = server.output()
        logged = {rid: int(status) for status, rid in re.findall(r'" (\d{3}) [\d.]+ ms request_id=(soak-\d+-\d+)', log)}
        lost = sorted(
            rid for rid, (kind, _, _) in outcomes.items() if rid in logged and not kind.startswith("answered")
        )
        kinds = Counter(kind for kind, _, _ in outcomes.values())
        after = Counter(kind for kind, _, sent in outcomes.values() if sent >= 0)
        restart = Server(model)
        try:
            restart_s = restart.wait_ready()
            with httpx.Client(base_url=restart.url, timeout=HANG_S) as c:
                ok = Health(c).check() is None
        finally:
            restart.stop()
        return {
            "workers": workers,
            "load_s_before_signal": load_s,
            "exit_s": None if exit_s is None else round(exit_s, 2),
            "exit_code": server.proc.returncode,
            "grace_s": GRACE_S,
            "requests": len(outcomes),
            "outcomes": dict(kinds),
            "outcomes_sent_after_signal": dict(after),
            "accepted_by_server": len(logged),
            "accepted_not_answered": len(lost),
            "lost_ids": lost[:20],
            "restart_ready_s": round(restart_s, 1),
            "restart_answers": ok,
        }
    finally:
        server.stop()


# ----------------------------------------------------------------------------------------- the report


def verdict(report: dict) -> dict[str, bool]:
    """Each check of the bar: True when it passes."""
    s = report["scenarios"]
    checks = {}
    if "bad_input" in s:
        b = s["bad_input"]
        checks["bad_input: >= 300 cases"] = b["cases"] >= 300
        checks["bad_input: 0 answered 5xx"] = b["answered_5xx"] == 0
        checks["bad_input: 0 hangs"] = b["hangs"] == 0
        checks["bad_input: every answer as documented"] = not b["unexpected"]
        checks["bad_input: healthy after every batch"] = not b["health_failures"]
    if "overload" in s:
        o = s["overload"]
        checks["overload: 0 undocumented 5xx"] = o["undocumented_5xx"] == 0 and o["requests"] > 0
        checks["overload: no client errors (resets, timeouts)"] = not o["errors"]
        checks["overload: latency back to normal within 10 s"] = (o["recovery"]["recovered_after_s"] or 99) <= 10
    if "slow_clients" in s:
        c = s["slow_clients"]
        checks["slow_clients: every normal request answered 200"] = set(c["normal_statuses"]) == {"200"}
    if "metrics" in s:
        m = s["metrics"]
        checks["metrics: no stray label values"] = not m["stray_label_values"]
        checks["metrics: distinct bad models, levels and paths add no series"] = m["series_added_by_them"] == 0
    if "sigterm" in s:
        t = s["sigterm"]
        checks["sigterm: no accepted request lost"] = t["accepted_not_answered"] == 0 and t["accepted_by_server"] > 0
        checks["sigterm: exit within the grace period"] = t["exit_s"] is not None and t["exit_s"] <= t["grace_s"]
        checks["sigterm: a restart answers"] = t["restart_answers"]
    return checks


def table(report: dict) -> str:
    """The markdown summary of a report."""
    s = report["scenarios"]
    lines = [
        f"# Reliability soak ({report['profile']}): {report['model']}, {report['date']}",
        "",
        f"Generated by `python scripts/soak.py table {report.get('path', 'results/soak.json')}` from the JSON "
        f"report of `{report['command']}` ({report['machine']}).",
        "",
        "| check | result |",
        "|---|---|",
    ]
    lines += [f"| {name} | {'pass' if ok else '**FAIL**'} |" for name, ok in report["verdict"].items()]
    if "bad_input" in s:
        b = s["bad_input"]
        lines += ["", "## Bad input", "",
                  f"{b['cases']} cases (seed {b['seed']}), {b['answered_5xx']} answered 5xx, {b['hangs']} hangs, "
                  f"{len(b['unexpected'])} not as documented, {b['health_checks']} health checks "
                  f"({len(b['health_failures'])} failed); slowest case {b['slowest_case_s']} s.", "",
                  "| category | cases |", "|---|---|"]  # fmt: skip
        lines += [f"| {k} | {v} |" for k, v in b["categories"].items()]
        lines += ["", "Statuses: " + ", ".join(f"{k}: {v}" for k, v in b["statuses"].items()),
                  "", "Error codes: " + ", ".join(f"{k}: {v}" for k, v in b["error_codes"].items())]  # fmt: skip
        for f in b["unexpected"][:20]:
            lines.append(f"- not as documented: {f['case']}: {f['problem']}")
    if "overload" in s:
        o = s["overload"]
        lat = o["latency_s"]
        lines += ["", f"## Overload: hey -c {o['concurrency']} for {o['seconds']} s", "",
                  f"{o['requests']} responses ({o['requests_per_s']} /s): "
                  + ", ".join(f"{k}: {v}" for k, v in o["statuses"].items())
                  + f"; undocumented 5xx {o['undocumented_5xx']}; client errors {o['errors'] or 'none'}.", "",
                  f"Latency under load: p50 {lat.get('p50')} s, p90 {lat.get('p90')} s, p99 {lat.get('p99')} s, "
                  f"slowest {o['slowest_s']} s.", "",
                  f"RSS (sampled every second, {o['rss_mib']['samples']} samples): {o['rss_mib']['start']} MiB at "
                  "start, "
                  f"peak {o['rss_mib']['peak']} MiB, {o['rss_mib']['end']} MiB after.", "",
                  f"Latency of one client: before p50 {o['latency_before_ms']['p50']} ms / p95 "
                  f"{o['latency_before_ms']['p95']} ms; back under {o['normal_ms']} ms "
                  f"{o['recovery']['recovered_after_s']} s after the load stopped; after p50 "
                  f"{o['latency_after_ms']['p50']} ms / p95 {o['latency_after_ms']['p95']} ms."]  # fmt: skip
    if "slow_clients" in s:
        c = s["slow_clients"]
        lines += ["", f"## Slow and idle clients: {c['slowloris_sockets']} slowloris + {c['idle_sockets']} idle "
                  f"keep-alive sockets for {c['seconds']} s", "",
                  f"Normal client: {c['normal_requests']} requests, statuses {c['normal_statuses']}; latency before "
                  f"p50 {c['latency_before_ms']['p50']} ms / p95 {c['latency_before_ms']['p95']} ms, during p50 "
                  f"{c['latency_during_ms']['p50']} ms / p95 {c['latency_during_ms']['p95']} ms / max "
                  f"{c['latency_during_ms']['max']} ms.", "",
                  f"Slowloris sockets closed by the server: {c['slowloris_closed_by_server']} (first after "
                  f"{c['slowloris_first_closed_after_s']} s; each reopened); idle sockets still open at the end: "
                  f"{c['idle_open_at_end']} of {c['idle_sockets']}."]  # fmt: skip
    if "metrics" in s:
        m = s["metrics"]
        lines += ["", "## Metrics cardinality", "",
                  f"Series in /metrics: {m['series_at_start']} after start-up, {m['series_after']} after the "
                  f"scenarios above. Label values: "
                  + "; ".join(f"{k}: {', '.join(v)}" for k, v in m["label_values"].items())
                  + f". Stray values: {m['stray_label_values'] or 'none'}. Then {m['distinct_bad_requests']} "
                  f"requests with distinct unknown models, bad levels, unknown paths and request ids added "
                  f"{m['series_added_by_them']} series."]  # fmt: skip
    if "sigterm" in s:
        t = s["sigterm"]
        lines += ["", "## SIGTERM under load", "",
                  f"{t['workers']} clients (a new connection per request), SIGTERM after "
                  f"{t['load_s_before_signal']} s: "
                  f"exit after {t['exit_s']} s (grace {t['grace_s']} s), exit code {t['exit_code']}. "
                  f"{t['requests']} requests: {t['outcomes']}; sent after the signal: "
                  f"{t['outcomes_sent_after_signal']}. Accepted by the server (access log): {t['accepted_by_server']}, "
                  f"of them not answered: {t['accepted_not_answered']}. Restart ready after {t['restart_ready_s']} s, "
                  f"answers correctly: {t['restart_answers']}."]  # fmt: skip
    return "\n".join(lines) + "\n"


def run(args: argparse.Namespace) -> int:
    profile = PROFILES["short" if args.short else "full"]
    scenarios = args.only.split(",") if args.only else ["bad_input", "overload", "slow_clients", "metrics", "sigterm"]
    limit = raise_open_file_limit()
    report = {
        "profile": "short" if args.short else "full",
        "model": args.model,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "command": "python scripts/soak.py run" + (" --short" if args.short else ""),
        "machine": f"{os.cpu_count()} CPUs, open-file limit {limit}",
        "settings": {**SERVER_ENV, **profile},
        "scenarios": {},
    }
    server = Server(args.model)
    try:
        report["ready_s"] = round(server.wait_ready(), 1)
        at_start, _ = series(server.url)
        for name in scenarios:
            t0 = time.monotonic()
            print(f"soak: {name} ...", file=sys.stderr, flush=True)
            if name == "bad_input":
                result = run_bad_input(server, args.seed)
            elif name == "overload":
                result = run_overload(server, profile["overload_s"], profile["concurrency"], profile["baseline"])
            elif name == "slow_clients":
                result = run_slow_clients(
                    server, profile["slow_s"], profile["slowloris"], profile["idle"], profile["baseline"]
                )
            elif name == "metrics":
                result = run_metrics(server, at_start, args.model)
            elif name == "sigterm":
                result = run_sigterm(server, args.model, profile["sigterm_load_s"])
            else:
                raise ValueError(f"unknown scenario {name!r}")
            result["scenario_s"] = round(time.monotonic() - t0, 1)
            report["scenarios"][name] = result
    finally:
        server.stop()
    report["verdict"] = verdict(report)
    out = Path(args.out).resolve()
    report["path"] = str(out.relative_to(ROOT)) if out.is_relative_to(ROOT) else str(out)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    summary = table(report)
    if args.markdown:
        Path(args.markdown).write_text(summary)
    print(summary)
    return 0 if all(report["verdict"].values()) else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run", help="start the service and run the scenarios")
    p.add_argument("--short", action="store_true", help="a few seconds per scenario (CI)")
    p.add_argument("--model", default="fmnist-resnet18", help="the model served (default fmnist-resnet18)")
    p.add_argument("--seed", type=int, default=18, help="seed of the bad-input generator")
    p.add_argument("--only", help="comma-separated scenarios (default: all, in order)")
    p.add_argument("--out", type=Path, default=ROOT / "results" / "soak.json", help="the JSON report")
    p.add_argument(
        "--markdown", type=Path, help="the markdown summary (default: results/soak.md with the default --out)"
    )
    t = sub.add_parser("table", help="print the markdown summary of a report")
    t.add_argument("report", type=Path)
    args = parser.parse_args(argv)
    if args.command == "table":
        print(table(json.loads(args.report.read_text())), end="")
        return 0
    if args.markdown is None and args.out == ROOT / "results" / "soak.json":
        args.markdown = ROOT / "results" / "soak.md"
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
