"""Open-loop load on haste with locust: requests arrive at a fixed rate per level, whatever the latency
(a closed loop, where a user waits for its answer before the next request, lets a slow server slow its own
load and hides its queueing). One locust user per level (off, low, medium, high); each sends
HASTE_LOCUST_RATE requests per second on its own schedule, every request in its own greenlet, so that a
slow answer never delays the next arrival. The requests are Open Inference Protocol infers (binary tensor
extension, as tritonclient sends them) or, with HASTE_LOCUST_API=v1, /v1/classify uploads; the level is
the locust request name, so that locust's table and CSV give latency percentiles per level.

    locust -f scripts/locustfile.py --headless --host http://127.0.0.1:8000 -u 4 -r 4 -t 60s --csv /tmp/haste

-u must be the number of levels (4; fewer leaves levels out). Environment: HASTE_LOCUST_RATE (requests/s per
level, default 5), HASTE_LOCUST_MODEL (default fmnist-resnet34), HASTE_LOCUST_IMAGE (an image file; default
the first test fixture), HASTE_LOCUST_API (v2 or v1), HASTE_LOCUST_TOKEN (bearer token, when the server has
one). Loopback or a test deployment only: this is load.
"""

from __future__ import annotations

import itertools
import json
import os
import struct
import time
from pathlib import Path

import gevent
from locust import FastHttpUser, constant, task

ROOT = Path(__file__).resolve().parents[1]
LEVELS = ("off", "low", "medium", "high")
RATE = float(os.environ.get("HASTE_LOCUST_RATE", "5"))
MODEL = os.environ.get("HASTE_LOCUST_MODEL", "fmnist-resnet34")
API = os.environ.get("HASTE_LOCUST_API", "v2")
IMAGE = Path(os.environ.get("HASTE_LOCUST_IMAGE", ROOT / "tests" / "fixtures" / "fmnist-0019-t-shirt-top.png"))
TOKEN = os.environ.get("HASTE_LOCUST_TOKEN", "")
if RATE <= 0:
    raise SystemExit(f"HASTE_LOCUST_RATE must be a positive number of requests per second; got {RATE}")
if API not in ("v1", "v2"):
    raise SystemExit(f"HASTE_LOCUST_API must be v1 or v2; got {API!r}")
DATA = IMAGE.read_bytes()
_next_level = itertools.cycle(LEVELS)


def v2_request(level: str) -> tuple[bytes, dict[str, str]]:
    """An infer request with one image as binary tensor data, and its headers."""
    header = json.dumps(
        {
            "inputs": [
                {"name": "image", "datatype": "BYTES", "shape": [1], "parameters": {"binary_data_size": 4 + len(DATA)}}
            ],
            "outputs": [{"name": "labels", "parameters": {"binary_data": False}}],
            "parameters": {"level": level, "top_k": 1},
        }
    ).encode()
    return header + struct.pack("<I", len(DATA)) + DATA, {
        "Inference-Header-Content-Length": str(len(header)),
        "Content-Type": "application/octet-stream",
    }


class LevelUser(FastHttpUser):
    """Sends RATE requests per second at one level (the users take the levels in turn), open loop."""

    wait_time = constant(0)
    concurrency = 64  # connections of this user's pool: arrivals do not wait for a free one

    def on_start(self) -> None:
        self.level = next(_next_level)
        self.auth = {"Authorization": f"Bearer {TOKEN}"} if TOKEN else {}
        self.started = time.monotonic()
        self.sent = 0
        self.pending: set[gevent.Greenlet] = set()

    def on_stop(self) -> None:
        """Let the requests in flight finish, so that locust's statistics hold every request sent."""
        gevent.joinall(list(self.pending), timeout=30)

    def send(self) -> None:
        if API == "v2":
            body, headers = v2_request(self.level)
            path = f"/v2/models/{MODEL}/infer"
        else:
            body, headers = DATA, {"Content-Type": "image/png"}
            path = f"/v1/classify?level={self.level}&model={MODEL}"
        self.client.post(path, data=body, headers={**headers, **self.auth}, name=self.level)

    @task
    def arrivals(self) -> None:
        """Spawn the next request at its arrival time, and never wait for it."""
        due = self.started + self.sent / RATE
        gevent.sleep(max(0.0, due - time.monotonic()))
        self.sent += 1
        request = gevent.spawn(self.send)
        self.pending.add(request)
        request.link(self.pending.discard)
