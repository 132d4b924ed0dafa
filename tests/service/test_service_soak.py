"""The reliability soak (scripts/soak.py): its short profile against the real service passes every check
of the bar; the committed report (results/soak.json) is a full run that passes, and results/soak.md is
the summary the script generates from it; the checks bite (a failing figure fails its check)."""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from service_support import MODEL, WEIGHTS_DIR, require_model

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "soak.py"
REPORT = ROOT / "results" / "soak.json"


def _module():
    spec = importlib.util.spec_from_file_location("soak", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["soak"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def soak():
    return _module()


def test_short_soak_passes_every_check(soak, tmp_path):
    require_model()
    env = {**os.environ, **({"HASTE_WEIGHTS_DIR": str(WEIGHTS_DIR)} if WEIGHTS_DIR else {})}
    out, md = tmp_path / "soak.json", tmp_path / "soak.md"
    command = [sys.executable, str(SCRIPT), "run", "--short", "--model", str(MODEL), "--out", str(out)]
    run = subprocess.run([*command, "--markdown", str(md)], capture_output=True, text=True, timeout=600, env=env)
    assert out.is_file(), run.stderr[-3000:]
    report = json.loads(out.read_text())
    failed = [name for name, ok in report["verdict"].items() if not ok]
    assert run.returncode == 0 and not failed, (failed, run.stdout[-3000:], run.stderr[-3000:])
    s = report["scenarios"]
    assert s["bad_input"]["cases"] >= 300 and s["bad_input"]["answered_5xx"] == 0 and s["bad_input"]["hangs"] == 0
    assert s["overload"]["concurrency"] == 400 and s["overload"]["undocumented_5xx"] == 0
    assert s["overload"]["rss_mib"]["samples"] >= 3 and s["overload"]["rss_mib"]["peak"] > 0
    assert s["slow_clients"]["normal_requests"] > 0 and set(s["slow_clients"]["normal_statuses"]) == {"200"}
    assert s["metrics"]["series_added_by_them"] == 0 and not s["metrics"]["stray_label_values"]
    assert s["sigterm"]["accepted_by_server"] > 0 and s["sigterm"]["accepted_not_answered"] == 0
    assert md.read_text() == soak.table(report) and run.stdout.startswith(md.read_text())


def test_committed_report_is_a_full_run_that_passes(soak):
    report = json.loads(REPORT.read_text())
    assert report["profile"] == "full"
    assert all(report["verdict"].values()), report["verdict"]
    assert soak.verdict(report) == report["verdict"]
    s = report["scenarios"]
    assert set(s) == {"bad_input", "overload", "slow_clients", "metrics", "sigterm"}
    assert s["bad_input"]["cases"] >= 300
    assert (s["overload"]["concurrency"], s["overload"]["seconds"]) == (400, 30)
    assert (s["slow_clients"]["slowloris_sockets"], s["slow_clients"]["idle_sockets"]) == (200, 500)
    assert s["slow_clients"]["seconds"] == 60
    assert (ROOT / "results" / "soak.md").read_text() == soak.table(report)


def test_the_checks_bite(soak):
    report = json.loads(REPORT.read_text())
    for path, value in [
        (("bad_input", "answered_5xx"), 1), (("bad_input", "hangs"), 1), (("bad_input", "cases"), 299),
        (("overload", "undocumented_5xx"), 3), (("slow_clients", "normal_statuses"), {"200": 10, "0": 1}),
        (("metrics", "series_added_by_them"), 4), (("sigterm", "accepted_not_answered"), 1),
        (("sigterm", "exit_s"), None), (("sigterm", "restart_answers"), False),
    ]:  # fmt: skip
        broken = copy.deepcopy(report)
        broken["scenarios"][path[0]][path[1]] = value
        assert not all(soak.verdict(broken).values()), path


def test_error_bodies_with_a_trace_or_a_path_are_caught(soak):
    def response(body: dict) -> httpx.Response:
        return httpx.Response(400, json=body, headers={"X-Request-ID": "r"})

    assert soak.check_error_body(response({"error": "bad level", "code": "invalid_level", "request_id": "r"})) is None
    for message in ('Traceback (most recent call last):\n  File "x"', f"cannot open {ROOT}/haste/zoo", "x" * 1001):
        assert soak.check_error_body(response({"error": message, "code": "invalid_image", "request_id": "r"}))
    assert soak.check_error_body(response({"detail": "not found"}))
    assert soak.check_error_body(httpx.Response(400, text="Internal Server Error", headers={"X-Request-ID": "r"}))
