"""Load generator for the HASTE service: sweeps levels x concurrency against a server on this machine
(loopback only) and writes throughput and latency percentiles per level as JSON; renders the README table.

    # start a server with these settings, sweep, stop it, write results/loadgen-fmnist-resnet34.json
    python scripts/loadgen.py run --spawn --model fmnist-resnet34 --concurrency 1,8 --requests 200
    # against a running server
    python scripts/loadgen.py run --url http://127.0.0.1:8000 --model fmnist-resnet34
    # markdown table for README
    python scripts/loadgen.py table results/loadgen-fmnist-resnet34.json

Each (concurrency, level) cell sends ``--requests`` requests through ``concurrency`` workers after
``--warmup`` unmeasured ones; with ``--rounds R`` the whole sweep repeats R times with levels interleaved
(so drift on a shared machine hits every level alike) and the cells are pooled. Latency is measured by
the client; queue/inference times and FLOPs come from the replies, mean batch size from /metrics.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from urllib.parse import urlparse

import httpx
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parents[1]
LEVELS = ("off", "low", "medium", "high")
LOOPBACK = {"127.0.0.1", "localhost", "::1"}
DEFAULT_IMAGES = sorted(str(p) for p in (ROOT / "tests" / "fixtures").glob("fmnist-*[a-z].png"))


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile (q in 0..100) of a non-empty list."""
    ordered = sorted(values)
    k = (len(ordered) - 1) * q / 100
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def batch_stats(text: str, model: str) -> dict[str, tuple[float, float]]:
    """level -> (sum, count) of haste_batch_size for ``model`` from a /metrics text."""
    stats: dict[str, list[float]] = {}
    for family in text_string_to_metric_families(text):
        if family.name != "haste_batch_size":
            continue
        for s in family.samples:
            if s.labels.get("model") == model and s.name.endswith(("_sum", "_count")):
                stats.setdefault(s.labels["level"], [0.0, 0.0])[s.name.endswith("_count")] = s.value
    return {level: (v[0], v[1]) for level, v in stats.items()}


class Cell:
    """Pooled measurements of one (concurrency, level)."""

    def __init__(self, concurrency: int, level: str) -> None:
        self.concurrency, self.level = concurrency, level
        self.latencies: list[float] = []
        self.codes: Counter[str] = Counter()
        self.seconds = 0.0
        self.queue: list[float] = []
        self.inference: list[float] = []
        self.decode: list[float] = []
        self.saved: list[float] = []
        self.batch_sum = self.batch_count = 0.0

    def result(self) -> dict:
        ok = self.codes.get("200", 0)
        lat = self.latencies or [float("nan")]
        mean = lambda v: statistics.fmean(v) if v else None  # noqa: E731
        return {
            "level": self.level,
            "concurrency": self.concurrency,
            "requests": sum(self.codes.values()),
            "ok": ok,
            "codes": dict(self.codes),
            "seconds": round(self.seconds, 4),
            "rps": round(ok / self.seconds, 3) if self.seconds else None,
            "latency_ms": {
                "p50": round(percentile(lat, 50), 3),
                "p90": round(percentile(lat, 90), 3),
                "p95": round(percentile(lat, 95), 3),
                "p99": round(percentile(lat, 99), 3),
                "mean": round(statistics.fmean(lat), 3),
                "max": round(max(lat), 3),
            },
            "server_ms": {"queue": mean(self.queue), "decode": mean(self.decode), "inference": mean(self.inference)},
            "mean_batch_size": round(self.batch_sum / self.batch_count, 3) if self.batch_count else None,
            "flops_saved_ratio": mean(self.saved),
        }


async def run_cell(client: httpx.AsyncClient, cell: Cell, model: str, images: list[bytes], n: int, warmup: int) -> None:
    """``warmup`` unmeasured requests, then ``n`` measured ones through ``cell.concurrency`` workers."""
    params = {"level": cell.level, "model": model, "top_k": 1}
    headers = {"Content-Type": "image/png"}

    async def send(i: int, record: bool) -> None:
        start = time.perf_counter()
        try:
            r = await client.post("/v1/classify", params=params, content=images[i % len(images)], headers=headers)
            code = str(r.status_code)
        except httpx.HTTPError as exc:
            code, r = type(exc).__name__, None
        if not record:
            return
        cell.codes[code] += 1
        if r is not None and r.status_code == 200:
            cell.latencies.append((time.perf_counter() - start) * 1000)
            body = r.json()
            cell.queue.append(body["timing_ms"]["queue"])
            cell.decode.append(body["timing_ms"]["decode"])
            cell.inference.append(body["timing_ms"]["inference"])
            cell.saved.append(body["compute"]["saved_ratio"])

    async def workers(count: int, record: bool) -> None:
        counter = iter(range(count))

        async def worker() -> None:
            for i in counter:
                await send(i, record)

        await asyncio.gather(*(worker() for _ in range(cell.concurrency)))

    await workers(warmup, record=False)
    before = batch_stats((await client.get("/metrics")).text, model)
    start = time.perf_counter()
    await workers(n, record=True)
    cell.seconds += time.perf_counter() - start
    after = batch_stats((await client.get("/metrics")).text, model)
    b0, b1 = before.get(cell.level, (0.0, 0.0)), after.get(cell.level, (0.0, 0.0))
    cell.batch_sum += b1[0] - b0[0]
    cell.batch_count += b1[1] - b0[1]


async def sweep(
    url: str,
    model: str,
    levels: list[str],
    concurrency: list[int],
    requests: int,
    warmup: int,
    rounds: int,
    images: list[bytes],
) -> list[Cell]:
    cells = {(c, lv): Cell(c, lv) for c in concurrency for lv in levels}
    limits = httpx.Limits(max_connections=max(concurrency), max_keepalive_connections=max(concurrency))
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:
        for r in range(rounds):
            for c in concurrency:
                order = levels if r % 2 == 0 else levels[::-1]
                for level in order:
                    await run_cell(client, cells[(c, level)], model, images, requests, warmup)
                    res = cells[(c, level)].result()
                    print(
                        f"round {r + 1}/{rounds} concurrency {c:3d} {level:>6}: {res['rps']:.1f} req/s so far, "
                        f"p50 {res['latency_ms']['p50']:.1f} ms, p99 {res['latency_ms']['p99']:.1f} ms",
                        flush=True,
                    )
    return list(cells.values())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn(model: str, env: dict[str, str]) -> tuple[subprocess.Popen, str]:
    """Start ``haste serve`` for ``model`` on a free loopback port and wait until /readyz is 200."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    full_env = {**os.environ, "HASTE_MODELS": model, "HASTE_LOG_LEVEL": "warning", **env}
    proc = subprocess.Popen(
        [sys.executable, "-m", "haste.cli", "serve", "--host", "127.0.0.1", "--port", str(port)], env=full_env
    )
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited with {proc.returncode}")
        try:
            if httpx.get(url + "/readyz", timeout=5).status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    proc.terminate()
    raise SystemExit("server not ready after 600 s")


def run(args: argparse.Namespace) -> int:
    env = dict(kv.split("=", 1) for kv in args.env)
    proc = None
    if args.spawn:
        proc, url = spawn(args.model, env)
    else:
        url = args.url.rstrip("/")
        if urlparse(url).hostname not in LOOPBACK:
            raise SystemExit(f"loopback servers only (127.0.0.1, localhost, ::1); got {url}")
    try:
        info = httpx.get(f"{url}/v1/models/{args.model}", timeout=30).json()
        images = [Path(p).read_bytes() for p in args.images]
        levels = args.levels.split(",")
        concurrency = [int(c) for c in args.concurrency.split(",")]
        start = time.time()
        cells = asyncio.run(
            sweep(url, args.model, levels, concurrency, args.requests, args.warmup, args.rounds, images)
        )
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(60)
    out = Path(args.out or ROOT / "results" / f"loadgen-{args.model.replace(':', '_').replace('/', '_')}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "meta": {
            "command": "python scripts/loadgen.py " + " ".join(sys.argv[1:]),
            "model": args.model,
            "model_version": info.get("version"),
            "device": info.get("device"),
            "server_env": env if args.spawn else None,
            "requests_per_cell": args.requests * args.rounds,
            "warmup_per_cell": args.warmup,
            "rounds": args.rounds,
            "images": [Path(p).name for p in args.images],
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(start)),
            "seconds": round(time.time() - start, 1),
            "host": {"cpus": os.cpu_count(), "machine": platform.machine(), "python": platform.python_version()},
            "warmup_latency_ms": {row["level"]: row["latency_ms"] for row in info.get("levels", [])},
        },
        "results": [cell.result() for cell in cells],
    }
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")
    print(table(report))
    return 0


def table(report: dict, concurrency: int | None = None) -> str:
    """Markdown table of a loadgen JSON: one row per (concurrency, level), req/s relative to `off`."""
    rows = [r for r in report["results"] if concurrency is None or r["concurrency"] == concurrency]
    off = {r["concurrency"]: r["rps"] for r in rows if r["level"] == "off"}
    lines = [
        "| concurrency | level | req/s | vs off | p50 ms | p95 ms | p99 ms | mean batch | FLOPs saved | errors |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        ratio = f"{r['rps'] / off[r['concurrency']]:.2f}x" if off.get(r["concurrency"]) and r["rps"] else "-"
        saved = f"{100 * r['flops_saved_ratio']:.1f}%" if r["flops_saved_ratio"] is not None else "-"
        batch = f"{r['mean_batch_size']:.2f}" if r["mean_batch_size"] else "-"
        lat = r["latency_ms"]
        lines.append(
            f"| {r['concurrency']} | {r['level']} | {r['rps']:.1f} | {ratio} | {lat['p50']:.1f} | {lat['p95']:.1f} "
            f"| {lat['p99']:.1f} | {batch} | {saved} | {r['requests'] - r['ok']} |"
        )
    meta = report["meta"]
    lines.append("")
    lines.append(
        f"{meta['model']} on {meta['device']}, {meta['requests_per_cell']} requests per cell "
        f"({meta['rounds']} interleaved rounds), {meta['host']['cpus']} CPUs; `{meta['command']}`"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run", help="sweep levels x concurrency and write JSON")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--url", default="http://127.0.0.1:8000", help="a running server on this machine")
    where.add_argument("--spawn", action="store_true", help="start `haste serve` for the run (a free loopback port)")
    p.add_argument("--model", default="fmnist-resnet34")
    p.add_argument("--levels", default=",".join(LEVELS))
    p.add_argument("--concurrency", default="1,8", help="comma-separated client concurrencies")
    p.add_argument("--requests", type=int, default=200, help="measured requests per cell and round")
    p.add_argument("--warmup", type=int, default=16, help="unmeasured requests before each cell")
    p.add_argument("--rounds", type=int, default=1, help="repeat the sweep, levels interleaved, pooled")
    p.add_argument("--images", nargs="+", default=DEFAULT_IMAGES, help="PNG files sent round-robin")
    p.add_argument("--env", nargs="*", default=[], metavar="HASTE_X=V", help="server settings with --spawn")
    p.add_argument("--out", help="output JSON (default results/loadgen-<model>.json)")
    p.set_defaults(func=run)
    t = sub.add_parser("table", help="print the markdown table of a loadgen JSON")
    t.add_argument("json", type=Path)
    t.add_argument("--concurrency", type=int, help="only this concurrency")
    t.set_defaults(func=lambda a: print(table(json.loads(a.json.read_text()), a.concurrency)) or 0)
    args = parser.parse_args(argv)
    if args.command == "run" and (args.requests < 1 or args.requests > 100_000):
        parser.error("--requests must be from 1 to 100000")
    if args.command == "run" and not all(0 < int(c) <= 512 for c in args.concurrency.split(",")):
        parser.error("--concurrency values must be from 1 to 512")
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
