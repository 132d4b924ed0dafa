"""scripts/loadgen.py against the shared server with a tiny sweep: JSON per (concurrency, level) and the
README table; non-loopback targets are refused; bad arguments, a server that is down, an unknown model or
level end with one line and exit status 2 before anything is written; the JSON is strict (null, never NaN);
the default output is in the current directory, never the committed results."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from service_support import MODEL, free_port

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "loadgen.py"


def loadgen(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=600, cwd=cwd)


def _module():
    spec = importlib.util.spec_from_file_location("loadgen", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def assert_one_line_error(run: subprocess.CompletedProcess, *words: str) -> None:
    assert run.returncode == 2, (run.returncode, run.stdout, run.stderr)
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and "error: " in lines[0] and "Traceback" not in run.stderr, run.stderr
    for word in words:
        assert word in lines[0], (word, lines[0])


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


BAD_ARGUMENTS = {
    "port not a number": (["--url", "http://127.0.0.1:notaport"], ["port"]),
    "not http": (["--url", "ftp://127.0.0.1/x"], ["http://"]),
    "concurrency not a number": (["--concurrency", "abc"], ["--concurrency", "abc"]),
    "concurrency trailing comma": (["--concurrency", "1,"], ["--concurrency", "1,"]),
    "concurrency 0": (["--concurrency", "0,8"], ["from 1 to 512"]),
    "missing image": (["--images", "no-such-image.png"], ["no-such-image.png", "no such file"]),
    "unknown level": (["--levels", "off,max"], ["'max'", "off, low, medium, high"]),
    "zero rounds": (["--rounds", "0"], ["--rounds", "from 1"]),
    "zero requests": (["--requests", "0"], ["--requests"]),
    "bad env": (["--spawn", "--env", "MAX_BATCH=4"], ["HASTE_"]),
}


@pytest.mark.parametrize("case", list(BAD_ARGUMENTS))
def test_bad_arguments_end_with_one_line_and_write_nothing(case, tmp_path):
    args, words = BAD_ARGUMENTS[case]
    assert_one_line_error(loadgen("run", *args, cwd=tmp_path), *words)
    assert not list(tmp_path.iterdir())


def test_a_server_that_is_down_is_one_line_not_a_traceback(tmp_path):
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    assert_one_line_error(loadgen("run", "--url", url, cwd=tmp_path), "cannot query the server", url)
    assert not list(tmp_path.iterdir())


def test_a_model_the_server_does_not_serve_stops_before_the_sweep(server, tmp_path):
    run = loadgen("run", "--url", server.url, "--model", "nope", "--requests", "1", cwd=tmp_path)
    assert_one_line_error(run, "'nope' is not served", str(MODEL))
    assert not list(tmp_path.iterdir())


def test_default_output_is_in_the_current_directory_not_the_committed_results(server, tmp_path):
    committed = ROOT / "results" / f"loadgen-{MODEL}.json"
    before = committed.read_bytes() if committed.exists() else None
    run = loadgen("run", "--url", server.url, "--model", str(MODEL), "--levels", "off", "--concurrency", "1",
                  "--requests", "2", "--warmup", "0", cwd=tmp_path)  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert json.loads((tmp_path / f"loadgen-{MODEL}.json").read_text())["meta"]["model"] == MODEL
    assert (committed.read_bytes() if committed.exists() else None) == before


def test_a_cell_without_successes_is_strict_json_with_nulls_and_renders():
    loadgen_module = _module()
    cell = loadgen_module.Cell(1, "off")
    cell.codes["ConnectError"] += 3
    cell.seconds = 1.0
    row = cell.result()
    assert row["latency_ms"] == dict.fromkeys(("p50", "p90", "p95", "p99", "mean", "max"))
    assert row["rps"] == 0 and row["ok"] == 0 and row["requests"] == 3
    text = json.dumps({"results": [row]}, allow_nan=False)  # raises on NaN
    meta = {"model": MODEL, "device": "cpu", "requests_per_cell": 3, "rounds": 1, "host": {"cpus": 2}, "command": "x"}
    rendered = loadgen_module.table({"meta": meta, "results": json.loads(text)["results"]})
    assert "| 1 | off | 0.0 | - | - | - | - | - | - | 3 |" in rendered


def test_a_failed_metrics_scrape_does_not_stop_the_sweep():
    loadgen_module = _module()

    async def scrape():
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{free_port()}", timeout=5) as client:
            return await loadgen_module.scrape_batch_stats(client, str(MODEL))

    assert asyncio.run(scrape()) is None


def test_loadtest_pairs_sequential_requests_per_level(server, client):
    """scripts/loadtest.py --paired: for each level but off, (20 untimed +) N pairs of sequential requests, the
    level's and off's; paired ratios of the client's wall time and of the replies' server timings, and the table."""
    spec = importlib.util.spec_from_file_location("loadtest", ROOT / "scripts" / "loadtest.py")
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(ROOT / "scripts"))  # loadtest imports loadgen, beside it
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(ROOT / "scripts"))

    def images(level: str) -> float:
        text = client.get("/metrics").text
        return sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith("haste_images_total{") and f'level="{level}"' in line and f'model="{MODEL}"' in line
        )

    before = {level: images(level) for level in ("off", "high")}
    rows = module.paired(server.url, ["off", "high"], 6, MODEL)
    assert {level: images(level) - before[level] for level in before} == {"off": 26, "high": 26}
    (row,) = rows
    assert row["level"] == "high" and row["pairs"] == 6
    for key in ("wall", "inference", "total"):
        ratio = row[key]["vs_off"]
        assert ratio["ci95"][0] <= ratio["median"] <= ratio["ci95"][1] and ratio["median"] > 0
        assert row[key]["level_ms"] > 0 and row[key]["off_ms"] > 0
    assert row["total"]["off_ms"] < row["wall"]["off_ms"]  # the server's own time is within the client's
    table = module.paired_markdown({"paired": {"levels": rows}})
    assert table.splitlines()[2].startswith(f"| high | {row['wall']['level_ms']:.2f} / {row['wall']['off_ms']:.2f} |")
