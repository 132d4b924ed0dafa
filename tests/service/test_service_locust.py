"""scripts/locustfile.py against the real server (loopback, 4 levels x 4 requests/s for 4 s: 64 requests):
every level is sent, nothing fails, and the server counts what locust sent, per level."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from service_support import MODEL, metrics, sample

ROOT = Path(__file__).resolve().parents[2]
LEVELS = ("off", "low", "medium", "high")


@pytest.mark.parametrize("api", ["v2", "v1"])
def test_locustfile_sends_a_fixed_rate_per_level(server, client, api):
    before = metrics(client)
    env = {**os.environ, "HASTE_LOCUST_RATE": "4", "HASTE_LOCUST_MODEL": str(MODEL), "HASTE_LOCUST_API": api}
    proc = subprocess.run(
        [sys.executable, "-m", "locust", "-f", str(ROOT / "scripts" / "locustfile.py"), "--headless",
         "--host", server.url, "-u", "4", "-r", "4", "-t", "4s", "--json", "--loglevel", "WARNING",
         "--stop-timeout", "10"],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = {row["name"]: row for row in json.loads(proc.stdout)}  # the final statistics (--json)
    after = metrics(client)
    for level in LEVELS:
        sent, failed = rows[level]["num_requests"], rows[level]["num_failures"]
        assert sent >= 8 and failed == 0, (level, rows[level])  # about 16 in 4 s at 4/s
        key = {"model": MODEL, "level": level, "code": "200"}
        assert sample(after, "haste_requests_total", **key) - sample(before, "haste_requests_total", **key) == sent
