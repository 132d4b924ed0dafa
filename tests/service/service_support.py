"""Helpers of the service tests: the real server in a subprocess, the offline reference model, and
metrics/error assertions. The model is the smallest trained reference model available (fmnist-resnet18,
else -34); HASTE_TEST_MODEL and HASTE_TEST_WEIGHTS_DIR override the choice."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import pytest
import torch
from PIL import Image, ImageOps
from prometheus_client.parser import text_string_to_metric_families

import haste
import haste.zoo
from haste.preprocess import InputSpec, preprocess
from service.settings import Settings

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
MANIFEST = json.loads((FIXTURES / "manifest.json").read_text())
#: The bytes of the first fixture image (a Fashion-MNIST PNG), for requests that need any valid image.
PNG = (FIXTURES / MANIFEST[0]["file"]).read_bytes()
WEIGHTS_DIR = Path(os.environ["HASTE_TEST_WEIGHTS_DIR"]) if os.environ.get("HASTE_TEST_WEIGHTS_DIR") else None


def _pick_model() -> str | None:
    if os.environ.get("HASTE_TEST_MODEL"):
        return os.environ["HASTE_TEST_MODEL"]
    root = WEIGHTS_DIR or haste.zoo.WEIGHTS_DIR
    for name in ("fmnist-resnet18", "fmnist-resnet34"):
        if all(p.is_file() for p in haste.zoo.paths(name, root)):
            return name
    return None


MODEL = _pick_model()


def require_model() -> None:
    """Skip the calling test or fixture when no trained reference model is available."""
    if MODEL is None:
        pytest.skip("no trained reference model (haste train --model fmnist-resnet18)")


#: Settings of every test server unless a test says otherwise: small and lean on a shared 2-core machine.
BASE_ENV = {
    "HASTE_TORCH_THREADS": "1",
    "HASTE_DECODE_THREADS": "1",
    "HASTE_MAX_BATCH_SIZE": "4",
    "HASTE_MAX_BATCH_DELAY_MS": "2",
    "HASTE_WARMUP_ROUNDS": "1",
    "HASTE_LOG_LEVEL": "warning",
    "HASTE_MAX_BYTES": str(1024 * 1024),
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``python -m haste.cli serve`` in a subprocess, configured through HASTE_* variables (``settings``)
    and other environment variables (``env``)."""

    def __init__(self, env: dict[str, str] | None = None, **settings: object) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, **BASE_ENV, "HASTE_MODELS": str(MODEL), **(env or {})}
        if WEIGHTS_DIR is not None:
            env["HASTE_WEIGHTS_DIR"] = str(WEIGHTS_DIR)
        env.update({f"HASTE_{k.upper()}": str(v) for k, v in settings.items()})
        self.log = tempfile.NamedTemporaryFile(prefix="haste-serve-", suffix=".log", delete=False)
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "haste.cli", "serve", "--host", "127.0.0.1", "--port", str(self.port)],
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    def output(self) -> str:
        return Path(self.log.name).read_text(errors="replace")

    def wait(self, path: str = "/readyz", timeout: float = 300.0) -> None:
        """Poll ``path`` until it answers 200 (the process must stay alive)."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.output()}")
            try:
                if httpx.get(self.url + path, timeout=5).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.01)
        raise TimeoutError(f"{path} not 200 after {timeout}s:\n{self.output()}")

    def rss_bytes(self) -> int:
        """Resident memory of the server process."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        return 0

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        os.unlink(self.log.name)


def trained(name: str) -> torch.nn.Module:
    """``name`` from haste.zoo (WEIGHTS_DIR when set), as trained: dense, BatchNorms kept, in eval mode."""
    return (haste.zoo.load(name, WEIGHTS_DIR) if WEIGHTS_DIR else haste.zoo.load(name)).eval()


class Offline:
    """The same model, its BatchNorms fused (HASTE_FUSE_BATCHNORM's default), converted the same way and in the same
    memory layout (HASTE_CHANNELS_LAST's default), run in this process: the reference answers."""

    def __init__(self, name: str) -> None:
        self.model = trained(name)
        self.card = self.model.haste_card
        if Settings().fuse_batchnorm:
            haste.fuse_batchnorm(self.model)
        haste.convert(self.model)
        if Settings().channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.spec = InputSpec.from_dict(
            {k: self.card["input"][k] for k in ("mode", "resize", "crop", "pad", "mean", "std")}
        )
        self.labels = list(self.card["labels"])

    def inputs(self, path: Path) -> torch.Tensor:
        with Image.open(path) as image:
            return preprocess(ImageOps.exif_transpose(image), self.spec)

    def predict(self, path: Path, level: str) -> tuple[torch.Tensor, float, float]:
        """(softmax scores, dense FLOPs, executed FLOPs incl. overhead) of one image at ``level``."""
        x = self.inputs(path)[None]
        with torch.inference_mode(), haste.compression(level), haste.profile(self.model) as report:
            probs = self.model(x).softmax(1)[0]
        dense, executed, overhead = report.per_image[0]
        return probs, dense, executed + overhead


def metrics(client: httpx.Client) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """/metrics parsed by prometheus_client: (sample name, sorted labels) -> value."""
    text = client.get("/metrics").text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def sample(values: dict, name: str, **labels: str) -> float:
    """Value of one sample (0 if absent)."""
    return values.get((name, tuple(sorted(labels.items()))), 0.0)


def start_upload(
    server: Server, path: str, length: int, first: bytes, content_type: str = "image/png"
) -> socket.socket:
    """A raw connection that sends a POST's headers announcing ``length`` body bytes, then ``first`` of
    them, and leaves the rest to the caller (or never sends it: a stalled upload)."""
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {content_type}\r\nContent-Length: {length}\r\n\r\n"
    )
    sock.sendall(head.encode() + first)
    return sock


def read_response(sock: socket.socket, timeout: float = 30.0) -> tuple[int, dict[str, str], bytes]:
    """(status, lower-cased headers, body) of the one response on ``sock``, read until the server closes
    the connection or the body announced by Content-Length is in; TimeoutError if none comes in time."""
    sock.settimeout(timeout)
    data = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            chunk = b""
        if not chunk:
            break
        data += chunk
        head, sep, body = data.partition(b"\r\n\r\n")
        if sep:
            lines = head.decode("latin-1").split("\r\n")
            headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
            if len(body) >= int(headers.get("content-length", 1 << 62)):
                break
    head, _, body = data.partition(b"\r\n\r\n")
    if not head:
        raise ConnectionError("the connection closed without a response")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split()[1]), headers, body


def assert_error(response: httpx.Response, status: int, code: str) -> dict:
    """The response is the common JSON error with this status and code, and carries its request id."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error", "code", "request_id"}, body
    assert body["code"] == code, body
    assert body["error"]
    assert body["request_id"] == response.headers["x-request-id"]
    return body
