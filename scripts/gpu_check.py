"""The GPU checks, in one run that writes its results to OUTDIR (``scripts/gpu_check.sh`` calls this; docs/gpu.md).

    python scripts/gpu_check.py OUTDIR                # on a GPU host: CUDA tests, bench, service, profile
    python scripts/gpu_check.py OUTDIR --dry-run      # the same steps on the CPU at tiny sizes (GPU_CHECK_DRY=1)
    python scripts/gpu_check.py --build-wheels DIR    # here, with the package index: the folder to carry

Steps, each a subprocess with its own time limit and log (OUTDIR/<step>.log):

1. ``tests``: ``pytest -m cuda`` (tests/test_engine_cuda.py: the Triton engine against the reference per conv and on
   reference models at every level, float32, float16 and bfloat16); on a GPU a skipped test counts as a failure.
2. ``bench-fmnist``, ``bench-resnet50``: ``haste bench --device cuda``: the dense model (cuDNN) against every level,
   fmnist-resnet34 at batch 1, 32 and 256, torchvision resnet50 (random weights, 224x224) at batch 1 and 64.
3. ``service``: ``haste serve`` with ``HASTE_DEVICE=cuda`` and the default model: ready, a classify at every level,
   ``/v1/models`` and ``/metrics`` (parsed) name the device and the engine, then scripts/loadgen.py at concurrency 1
   and 32.
4. ``profile``: torch.profiler over forwards of fmnist-resnet34 at ``high``: the operators and kernels by device
   time, and the share of the HASTE layers' time spent in the fused Triton kernel.

OUTDIR/gpu_check.json holds every step's status, seconds and summary, the machine, and the mode. Exit status 0
when every step passed, 1 otherwise, 2 for bad arguments or no CUDA outside the dry run.

Missing pure-Python dependencies (the service's, numpy, Pillow, safetensors, torchvision) are installed from a
carried folder of wheels (``--wheels``, default ``gpu_wheels/``) into a ``--target`` directory (``--deps``) that the
steps get on PYTHONPATH: nothing is downloaded on the GPU host.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
#: Modules the steps import, and the distribution that provides each (the wheels folder must hold them).
NEEDED = {
    "numpy": "numpy",
    "PIL": "pillow",
    "safetensors": "safetensors",
    "torchvision": "torchvision",
    "fastapi": "fastapi",
    "uvicorn": "uvicorn",
    "pydantic_settings": "pydantic-settings",
    "prometheus_client": "prometheus-client",
    "multipart": "python-multipart",
    "fastapi_offline": "fastapi-offline",
    "httpx": "httpx",
}
#: torchvision release built for each torch minor version (the GPU host's torch decides which to carry).
TORCHVISION_FOR_TORCH = {"2.9": "0.24", "2.10": "0.25", "2.11": "0.26", "2.12": "0.27", "2.13": "0.28", "2.14": "0.29"}
FASHION_MNIST_TEST = ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")
IMAGE = ROOT / "tests" / "fixtures" / "fmnist-0000-ankle-boot.png"


def sizes(dry: bool) -> dict:
    """What every step runs: the GPU check, or its CPU rehearsal at tiny sizes (a few seconds a step)."""
    if dry:
        return {
            "device": "cpu",
            "limits_s": {"tests": 120, "bench-fmnist": 90, "bench-resnet50": 90, "service": 150, "profile": 60},
            "bench_fmnist": ["--models", "fmnist-resnet18", "--batch", "1", "2", "--levels", "off", "high",
                             "--rounds", "1", "--warmup", "0"],
            "bench_resnet50": ["--models", "resnet18", "--batch", "1", "--levels", "off", "high", "--rounds", "1",
                               "--warmup", "0"],  # the torchvision path, lighter
            "loadgen": ["--concurrency", "1,32", "--levels", "off,high", "--requests", "8", "--warmup", "1"],
            "profile": {"model": "fmnist-resnet18", "batch": 2, "forwards": 1},
            "service_env": {"HASTE_MODELS": "fmnist-resnet18", "HASTE_MAX_BATCH_SIZE": "4"},
        }  # fmt: skip
    return {
        "device": "cuda",
        "limits_s": {"tests": 120, "bench-fmnist": 90, "bench-resnet50": 90, "service": 100, "profile": 40},
        "bench_fmnist": ["--models", "fmnist-resnet34", "--batch", "1", "32", "256", "--rounds", "15", "--warmup", "3"],
        "bench_resnet50": ["--models", "resnet50", "--batch", "1", "64", "--rounds", "7", "--warmup", "2"],
        "loadgen": ["--concurrency", "1,32", "--requests", "150", "--warmup", "16"],
        "profile": {"model": "fmnist-resnet34", "batch": 32, "forwards": 5},
        "service_env": {},  # the embedded default model, default settings
    }


class Check:
    """One run of the checks: the environment the steps get, and the report being written."""

    def __init__(self, out: Path, dry: bool, wheels: Path, deps: Path, python: str):
        self.out, self.dry, self.wheels, self.deps, self.python = out, dry, wheels, deps, python
        self.size = sizes(dry)
        self.report: dict = {"mode": "dry-run (CPU)" if dry else "gpu", "dry_run": dry, "steps": {}}
        self.env = dict(os.environ)

    # the environment ------------------------------------------------------------------------------------
    def prepare(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        log = []
        missing = [m for m in NEEDED if importlib.util.find_spec(m) is None]
        installed = []
        if missing and self.wheels.is_dir():
            installed = install_wheels(self.wheels, self.deps, log)
        paths = [str(ROOT), *([str(self.deps)] if installed else []), self.env.get("PYTHONPATH", "")]
        self.env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
        data = self.wheels / "fashion-mnist"
        if (data / FASHION_MNIST_TEST[0]).is_file() and not Path("/usr/share/datasets/fashion-mnist").is_dir():
            self.env.setdefault("HASTE_FASHION_MNIST", str(data))
        self.env.setdefault("TRITON_CACHE_DIR", "/tmp/haste-gpu-check/triton")
        self.env["PYTHONUNBUFFERED"] = "1"
        probe = self.run_python(PROBE, timeout=120)
        try:
            machine = json.loads(probe.stdout.strip().splitlines()[-1])
        except (json.JSONDecodeError, IndexError):
            machine = {"probe_failed": (probe.stdout + probe.stderr)[-2000:]}
        machine.update(host_python=platform.python_version(), missing_before=missing, installed_wheels=installed)
        self.report["machine"] = machine
        (self.out / "prepare.log").write_text("\n".join(log) + "\n" + probe.stdout + probe.stderr)

    def run_python(self, code: str, timeout: float) -> subprocess.CompletedProcess:
        return subprocess.run(
            [self.python, "-c", code], cwd=ROOT, env=self.env, capture_output=True, text=True, timeout=timeout
        )

    # steps -------------------------------------------------------------------------------------------------
    def step(self, name: str, fn) -> None:
        start = time.monotonic()
        log_path = self.out / f"{name}.log"
        try:
            status, summary = fn(log_path, self.size["limits_s"][name])
        except subprocess.TimeoutExpired as exc:
            status, summary = "failed", {"error": f"over its time limit ({exc.timeout:.0f} s)"}
        except Exception as exc:  # a step's failure is a result: record it, go on with the next
            status, summary = "failed", {"error": f"{type(exc).__name__}: {exc}"}
        self.report["steps"][name] = {
            "status": status, "seconds": round(time.monotonic() - start, 1), "log": log_path.name, **summary
        }  # fmt: skip
        print(f"gpu_check: {name}: {status} ({self.report['steps'][name]['seconds']} s)", flush=True)
        self.write()

    def command(self, args: list[str], log_path: Path, limit: float) -> int:
        with log_path.open("a") as log:
            log.write("$ " + " ".join(args) + "\n")
            log.flush()
            try:
                done = subprocess.run(args, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT, timeout=limit)
            except subprocess.TimeoutExpired:
                log.write(f"\n(time limit of {limit:.0f} s reached)\n")
                raise
        return done.returncode

    def tests(self, log_path: Path, limit: float):
        xml = self.out / "tests.xml"
        rc = self.command(
            [self.python, "-m", "pytest", "-m", "cuda", "tests/test_engine_cuda.py", "-q", "-p", "no:cacheprovider",
             f"--junitxml={xml}"],
            log_path, limit,
        )  # fmt: skip
        suite = ET.parse(xml).getroot()
        suite = suite.find("testsuite") if suite.tag == "testsuites" else suite
        counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
        ok = rc == 0 and counts["tests"] > 0 and (self.dry or counts["skipped"] == 0)
        return ("passed" if ok else "failed"), {"pytest_rc": rc, **counts}

    def bench(self, which: str):
        def run(log_path: Path, limit: float):
            report = self.out / f"bench-{which}-{self.size['device']}.json"
            rc = self.command(
                [self.python, "-m", "haste.cli", "bench", "--device", self.size["device"], "--threads", "2",
                 *self.size[f"bench_{which}"], "--json", str(report)],
                log_path, limit,
            )  # fmt: skip
            if rc != 0:
                return "failed", {"rc": rc}
            data = json.loads(report.read_text())
            ratios = {
                f"{m['model']} b={b['batch']}": {
                    r["variant"]: {"median_ms": round(r["median_ms"], 3), "latency_ratio": round(r["latency_ratio"], 3),
                                   "flops_saving": round(r["flops_saving"], 4)}
                    for r in b["rows"]
                }
                for m in data["models"] for b in m["batches"]
            }  # fmt: skip
            engine = data["machine"]["engine"]
            ok = self.dry or engine == "triton"
            return ("passed" if ok else "failed"), {"report": report.name, "engine": engine, "rows": ratios}

        return run

    def service(self, log_path: Path, limit: float):
        deadline = time.monotonic() + limit
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        env = {**self.env, "HASTE_DEVICE": self.size["device"], "HASTE_LOG_LEVEL": "info", **self.size["service_env"]}
        with log_path.open("a") as log:
            server = subprocess.Popen(
                [self.python, "-m", "haste.cli", "serve", "--host", "127.0.0.1", "--port", str(port)],
                cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        try:
            summary = self.exercise(url, server, deadline, log_path)
        finally:
            stop_server(server)
        return summary

    def exercise(self, url: str, server: subprocess.Popen, deadline: float, log_path: Path):
        import httpx
        from prometheus_client.parser import text_string_to_metric_families

        started = time.monotonic()
        with httpx.Client(base_url=url, timeout=30) as client:
            while True:
                if server.poll() is not None:
                    return "failed", {"error": f"haste serve exited with status {server.returncode} before ready"}
                if time.monotonic() > deadline:
                    return "failed", {"error": "not ready before the time limit"}
                try:
                    if client.get("/readyz").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                time.sleep(0.5)
            summary: dict = {"ready_after_s": round(time.monotonic() - started, 1), "checks": {}}
            checks = summary["checks"]
            checks["livez"] = client.get("/livez").status_code == 200
            listing = client.get("/v1/models").json()
            model = listing.get("default_model") or listing["models"][0]["name"]
            card = client.get(f"/v1/models/{model}").json()
            summary.update(model=model, device=card.get("device"), engine=card.get("engine"))
            summary["engine_unavailable"] = card.get("engine_unavailable")
            classify = {}
            for level in ("off", "low", "medium", "high"):
                reply = client.post(
                    f"/v1/classify?level={level}&top_k=3", files={"file": (IMAGE.name, IMAGE.read_bytes(), "image/png")}
                )
                body = reply.json()
                classify[level] = {
                    "status": reply.status_code,
                    "level": body.get("level"),
                    "top": (body.get("predictions") or [{}])[0].get("label"),
                    "saved_ratio": body.get("compute", {}).get("saved_ratio"),
                    "inference_ms": body.get("timing_ms", {}).get("inference"),
                }
            summary["classify"] = classify
            checks["classify"] = all(c["status"] == 200 and c["level"] == lvl for lvl, c in classify.items())
            checks["off_saves_nothing"] = classify["off"]["saved_ratio"] == 0
            checks["levels_save"] = all((classify[lvl]["saved_ratio"] or 0) > 0 for lvl in ("low", "medium", "high"))
            metrics = {}
            for family in text_string_to_metric_families(client.get("/metrics").text):
                for sample in family.samples:
                    metrics.setdefault(sample.name, []).append((sample.labels, sample.value))
            ok_requests = sum(v for labels, v in metrics.get("haste_requests_total", []) if labels.get("code") == "200")
            summary["metrics"] = {
                "families": len(metrics),
                "requests_200": ok_requests,
                "model_info": [labels for labels, v in metrics.get("haste_model_info", []) if v == 1],
                "engine_info": [labels for labels, v in metrics.get("haste_engine_info", []) if v == 1],
                "ready": [v for _, v in metrics.get("haste_ready", [])],
            }
            checks["metrics_count_the_requests"] = ok_requests >= 4
            checks["metrics_ready"] = summary["metrics"]["ready"] == [1.0]
        want_device, want_engine = ("cpu", ("cpu", "reference")) if self.dry else ("cuda", ("triton",))
        checks["device"] = str(summary["device"]).startswith(want_device) and any(
            str(i.get("device", "")).startswith(want_device) for i in summary["metrics"]["model_info"]
        )
        checks["engine"] = summary["engine"] in want_engine and any(
            i.get("engine") in want_engine for i in summary["metrics"]["engine_info"]
        )
        load = self.out / f"loadgen-{summary['model']}-{self.size['device']}.json"
        rc = self.command(
            [self.python, "scripts/loadgen.py", "run", "--url", url, "--model", summary["model"],
             *self.size["loadgen"], "--out", str(load)],
            log_path, max(10.0, deadline - time.monotonic()),
        )  # fmt: skip
        checks["load"] = rc == 0
        if rc == 0:
            summary["load"] = {"report": load.name, "cells": load_cells(json.loads(load.read_text()))}
        return ("passed" if all(checks.values()) else "failed"), summary

    def profile(self, log_path: Path, limit: float):
        out = self.out / "profile-high.txt"
        code = PROFILE.format(device=self.size["device"], out=str(out), **self.size["profile"])
        done = self.run_python(code, timeout=limit)
        log_path.write_text(done.stdout + done.stderr)
        if done.returncode != 0:
            return "failed", {"rc": done.returncode, "error": done.stderr.strip().splitlines()[-1:]}
        summary = json.loads(done.stdout.strip().splitlines()[-1])
        ok = summary["top"] and (self.dry or summary["triton_kernel_share"] > 0)
        return ("passed" if ok else "failed"), {"table": out.name, **summary}

    def write(self) -> None:
        steps = self.report["steps"].values()
        self.report["passed"] = bool(steps) and all(s["status"] == "passed" for s in steps)
        (self.out / "gpu_check.json").write_text(json.dumps(self.report, indent=2) + "\n")


def load_cells(data: dict) -> list[dict]:
    """Per (concurrency, level): requests/s, answered, p50 / p99 client latency, mean batch, FLOPs saved."""
    return [
        {
            "concurrency": c["concurrency"], "level": c["level"], "requests": c["requests"], "ok": c["ok"],
            "rps": c["rps"], "p50_ms": c["latency_ms"].get("p50"), "p99_ms": c["latency_ms"].get("p99"),
            "mean_batch_size": c.get("mean_batch_size"), "flops_saved_ratio": c.get("flops_saved_ratio"),
        }
        for c in data.get("results", [])
    ]  # fmt: skip


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_server(server: subprocess.Popen) -> None:
    if server.poll() is None:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()


def install_wheels(wheels: Path, target: Path, log: list[str]) -> list[str]:
    """Every wheel of ``wheels`` into ``target`` (pip --no-index --no-deps --target; unzipped when pip is
    missing): the folder was resolved where it was built, so nothing is fetched here."""
    files = sorted(wheels.glob("*.whl"))
    target.mkdir(parents=True, exist_ok=True)
    if importlib.util.find_spec("pip") is not None:
        args = [sys.executable, "-m", "pip", "install", "--no-index", "--no-deps", "--no-compile", "--quiet",
                "--disable-pip-version-check", "--target", str(target), *map(str, files)]  # fmt: skip
        done = subprocess.run(args, capture_output=True, text=True)
        log.append("$ " + " ".join(args) + "\n" + done.stdout + done.stderr)
        if done.returncode == 0:
            return [f.name for f in files]
    for f in files:  # a wheel is a zip of the files site-packages gets
        with zipfile.ZipFile(f) as z:
            z.extractall(target)
        log.append(f"unzipped {f.name}")
    return [f.name for f in files]


def build_wheels(folder: Path, torch_version: str) -> int:
    """The folder to carry to a GPU host: wheels for CPython 3.12 on manylinux x86_64 of every module in NEEDED,
    pinned to the versions of this environment (torchvision: the release built for ``torch_version``, without
    its torch dependency), and the Fashion-MNIST test split."""
    from importlib.metadata import PackageNotFoundError, version

    folder.mkdir(parents=True, exist_ok=True)
    pins = []
    for dist in NEEDED.values():
        if dist == "torchvision":
            continue
        try:
            pins.append(f"{dist}=={version(dist)}")
        except PackageNotFoundError:
            pins.append(dist)
    platform_args = ["--only-binary=:all:", "--python-version", "3.12", "--implementation", "cp", "--abi", "cp312",
                     "--abi", "abi3", "--abi", "none"]  # fmt: skip
    for tag in ("manylinux2014_x86_64", "manylinux_2_17_x86_64", "manylinux_2_28_x86_64", "linux_x86_64"):
        platform_args += ["--platform", tag]
    pip = [sys.executable, "-m", "pip", "download", "--disable-pip-version-check", "-d", str(folder), *platform_args]
    minor = ".".join(torch_version.split(".")[:2])
    vision = TORCHVISION_FOR_TORCH.get(minor)
    if vision is None:
        print(f"no torchvision release known for torch {torch_version}", file=sys.stderr)
        return 2
    for args in ([*pip, *pins], [*pip, "--no-deps", f"torchvision=={vision}.*"]):
        print("$ " + " ".join(args), flush=True)
        if subprocess.run(args).returncode != 0:
            return 1
    data = Path(os.environ.get("HASTE_FASHION_MNIST", "/usr/share/datasets/fashion-mnist"))
    (folder / "fashion-mnist").mkdir(exist_ok=True)
    for name in FASHION_MNIST_TEST:
        if (data / name).is_file():
            shutil.copy(data / name, folder / "fashion-mnist" / name)
    total = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
    print(f"{folder}: {len(list(folder.glob('*.whl')))} wheels, {total / 2**20:.1f} MiB")
    return 0


PROBE = """
import json, platform, torch
info = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.cuda.is_available()}
if info["cuda"]:
    info.update(gpu=torch.cuda.get_device_name(), cuda_runtime=torch.version.cuda,
                capability=".".join(map(str, torch.cuda.get_device_capability())))
try:
    import triton
    info["triton"] = triton.__version__
except ImportError:
    info["triton"] = None
for name in ("torchvision", "fastapi", "numpy", "PIL"):
    try:
        info[name] = __import__(name).__version__
    except ImportError:
        info[name] = None
print(json.dumps(info))
"""

PROFILE = """
import json, torch, haste
from haste import engine
from torch.profiler import ProfilerActivity, profile, record_function
device = torch.device("{device}")
model = haste.zoo.load("{model}")
haste.convert(model)
model.to(device)
x = torch.randn({batch}, model.haste_card["input"]["channels"], 32, 32, device=device).relu()
ranges = {{}}
def enter(module, args, name=None):
    ranges[module] = record_function("haste:" + module.haste_name)
    ranges[module].__enter__()
def leave(module, args, out):
    ranges.pop(module).__exit__(None, None, None)
for name, module in model.named_modules():
    if isinstance(module, haste.HasteConv2d):
        module.haste_name = name
        module.register_forward_pre_hook(enter)
        module.register_forward_hook(leave)
sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
with torch.no_grad(), haste.compression("high"):
    for _ in range(3):
        model(x)
    sync()
    with profile(activities=activities) as prof:
        for _ in range({forwards}):
            with record_function("haste_forward_high"):
                model(x)
        sync()
sort = "cuda_time_total" if device.type == "cuda" else "cpu_time_total"
table = prof.key_averages().table(sort_by=sort, row_limit=40)
open("{out}", "w").write(table + "\\n")
def device_us(e):
    return getattr(e, "device_time_total", None) or getattr(e, "cuda_time_total", 0) or 0
events = [e for e in prof.key_averages() if e.key != "haste_forward_high"]
timed = (lambda e: device_us(e)) if device.type == "cuda" else (lambda e: e.self_cpu_time_total)
top = sorted(events, key=timed, reverse=True)[:15]
kernels = [e for e in prof.key_averages() if e.device_type.name == "CUDA"] if device.type == "cuda" else []
total_kernel = sum(e.self_device_time_total if hasattr(e, "self_device_time_total") else 0 for e in kernels) or 1
triton_us = sum(getattr(e, "self_device_time_total", 0) for e in kernels if "merged_conv" in e.key)
layers = [e for e in prof.key_averages() if e.key.startswith("haste:")]
forward = [e for e in prof.key_averages() if e.key == "haste_forward_high"]
with torch.no_grad():
    chosen = engine.choose(x, next(m for m in model.modules() if isinstance(m, haste.HasteConv2d)).conv.weight)
print(json.dumps({{
    "model": "{model}", "device": str(device), "batch": {batch}, "forwards": {forwards}, "engine": chosen,
    "forward_ms": round(forward[0].cpu_time_total / 1e3 / {forwards}, 3) if forward else None,
    "haste_layers_ms": round(sum(e.cpu_time_total for e in layers) / 1e3 / {forwards}, 3),
    "slowest_layers": [{{"layer": e.key[6:], "ms": round(e.cpu_time_total / 1e3 / {forwards}, 3)}}
                       for e in sorted(layers, key=lambda e: -e.cpu_time_total)[:5]],
    "top": [{{"op": e.key, "calls": e.count, "us": round(timed(e), 1)}} for e in top],
    "triton_kernel_share": round(triton_us / total_kernel, 4) if kernels else None,
    "triton_failed": engine.triton_failed,
}}))
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("outdir", nargs="?", type=Path, help="where the results go (JSON and logs)")
    parser.add_argument("--dry-run", action="store_true", help="the same steps on the CPU at tiny sizes")
    parser.add_argument("--wheels", type=Path, default=ROOT / "gpu_wheels", help="the carried folder of wheels")
    parser.add_argument("--deps", type=Path, default=Path("/tmp/haste-gpu-check/deps"), help="pip --target directory")
    parser.add_argument("--build-wheels", type=Path, metavar="DIR", help="download the folder to carry, and exit")
    parser.add_argument("--torch", default="2.11", help="with --build-wheels: the GPU host's torch (default 2.11)")
    args = parser.parse_args(argv)
    if args.build_wheels:
        return build_wheels(args.build_wheels, args.torch)
    if args.outdir is None:
        parser.error("OUTDIR is required (or --build-wheels DIR)")
    dry = args.dry_run or os.environ.get("GPU_CHECK_DRY", "") not in ("", "0")
    check = Check(args.outdir, dry, args.wheels, args.deps, sys.executable)
    check.prepare()
    if not dry and not check.report["machine"].get("cuda"):
        check.report["error"] = "CUDA is not available (run with --dry-run to rehearse on the CPU)"
        check.write()
        print(f"gpu_check: {check.report['error']}", file=sys.stderr)
        return 2
    check.step("tests", check.tests)
    check.step("bench-fmnist", check.bench("fmnist"))
    check.step("bench-resnet50", check.bench("resnet50"))
    check.step("service", check.service)
    check.step("profile", check.profile)
    check.write()
    print(f"gpu_check: {'passed' if check.report['passed'] else 'FAILED'}; results in {args.outdir}/gpu_check.json")
    return 0 if check.report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
