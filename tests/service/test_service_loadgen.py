"""scripts/loadgen.py against the shared server with a tiny sweep: JSON per (concurrency, level) and the
README table; non-loopback targets are refused."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from service_support import MODEL

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "loadgen.py"


def loadgen(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=600)


def test_sweep_writes_json_and_table(server, tmp_path):
    out = tmp_path / "loadgen.json"
    run = loadgen("run", "--url", server.url, "--model", str(MODEL), "--levels", "off,high", "--concurrency", "1,2",
                  "--requests", "6", "--warmup", "1", "--out", str(out))  # fmt: skip
    assert run.returncode == 0, run.stderr
    report = json.loads(out.read_text())
    assert report["meta"]["model"] == MODEL and report["meta"]["requests_per_cell"] == 6
    cells = {(r["concurrency"], r["level"]): r for r in report["results"]}
    assert set(cells) == {(1, "off"), (1, "high"), (2, "off"), (2, "high")}
    for r in cells.values():
        assert r["ok"] == r["requests"] == 6 and r["codes"] == {"200": 6}
        assert r["rps"] > 0
        lat = r["latency_ms"]
        assert 0 < lat["p50"] <= lat["p95"] <= lat["p99"] <= lat["max"]
        assert r["mean_batch_size"] >= 1
    assert cells[(1, "off")]["flops_saved_ratio"] == 0 and cells[(1, "high")]["flops_saved_ratio"] > 0
    table = loadgen("table", str(out), "--concurrency", "2")
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].startswith("| concurrency | level | req/s | vs off |")
    assert lines[2].startswith("| 2 | off |") and "1.00x" in lines[2]
    assert lines[3].startswith("| 2 | high |")


def test_refuses_non_loopback_servers():
    run = loadgen("run", "--url", "http://example.com:8000", "--requests", "1")
    assert run.returncode != 0 and "loopback" in run.stderr
