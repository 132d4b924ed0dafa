"""scripts/gpu_check.sh in its dry mode: every step of the GPU check runs on the CPU at tiny sizes and the JSON
it writes says what each found, so the script that runs on a GPU host does not rot where no GPU is lent."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STEPS = ["tests", "bench-fmnist", "bench-resnet50", "service", "profile"]


def test_gpu_check_dry_run_writes_every_step(tmp_path):
    out = tmp_path / "gpu"
    env = {**os.environ, "PYTHON": sys.executable, "GPU_CHECK_DRY": "1"}
    done = subprocess.run(
        ["bash", "scripts/gpu_check.sh", str(out)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    report = json.loads((out / "gpu_check.json").read_text())
    failed = {k: v for k, v in report["steps"].items() if v["status"] != "passed"}
    assert done.returncode == 0 and not failed, (failed, done.stdout[-2000:], done.stderr[-2000:])
    assert report["dry_run"] and report["passed"] and list(report["steps"]) == STEPS
    assert report["machine"]["torch"] and report["machine"]["cuda"] in (True, False)
    steps = report["steps"]
    assert steps["tests"]["tests"] > 0 and steps["tests"]["failures"] == steps["tests"]["errors"] == 0
    for name in ("bench-fmnist", "bench-resnet50"):
        bench = json.loads((out / steps[name]["report"]).read_text())
        assert bench["models"] and all(m["device"] == "cpu" for m in bench["models"])
        rows = next(iter(steps[name]["rows"].values()))
        assert rows["dense"]["latency_ratio"] == 1.0 and rows["high"]["flops_saving"] > 0
    service = steps["service"]
    assert all(service["checks"].values()) and service["device"] == "cpu"
    assert [service["classify"][level]["status"] for level in ("off", "low", "medium", "high")] == [200] * 4
    assert service["metrics"]["requests_200"] >= 4 and service["metrics"]["engine_info"]
    assert {(c["concurrency"], c["level"]) for c in service["load"]["cells"]} == {
        (1, "off"), (1, "high"), (32, "off"), (32, "high")
    }  # fmt: skip
    assert all(c["ok"] == c["requests"] for c in service["load"]["cells"])
    profile = steps["profile"]
    assert profile["top"] and profile["haste_layers_ms"] > 0 and profile["slowest_layers"]
    assert (out / profile["table"]).read_text().strip()
    for step in steps.values():
        assert (out / step["log"]).is_file()


def test_gpu_check_refuses_to_run_the_gpu_steps_without_cuda(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable, "CUDA_VISIBLE_DEVICES": ""}
    env.pop("GPU_CHECK_DRY", None)
    done = subprocess.run(
        ["bash", "scripts/gpu_check.sh", str(tmp_path)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 2 and "CUDA is not available" in done.stderr
    assert json.loads((tmp_path / "gpu_check.json").read_text())["steps"] == {}
