"""Load generator for the HASTE service: sweeps levels x concurrency against a server on this machine
(loopback only) and writes throughput and latency percentiles per level as JSON; renders the README table.

    # start a server with these settings, sweep, stop it, write loadgen-fmnist-resnet34.json (current dir)
    python scripts/loadgen.py run --spawn --model fmnist-resnet34 --concurrency 1,8 --requests 200
    # against a running server; --out names the JSON (the README's results: results/loadgen-<model>.json)
    python scripts/loadgen.py run --url http://127.0.0.1:8000 --model fmnist-resnet34 --out /tmp/run.json
    # markdown table for README
    python scripts/loadgen.py table results/loadgen-fmnist-resnet34.json

Each (concurrency, level) cell sends ``--requests`` requests through ``concurrency`` workers after
``--warmup`` unmeasured ones; with ``--rounds R`` the whole sweep repeats R times with levels interleaved
(so drift on a shared machine hits every level alike) and the cells are pooled. Latency is measured by
the client; queue/inference times and FLOPs come from the replies, mean batch size from /metrics.

Before sweeping, the server is asked (GET /v1/models) whether it serves the model and the levels. Bad
arguments, an unreachable server, an unknown model or level end with one line on stderr and exit status 2,
before anything is written. The JSON is strict: a statistic with no data (no request succeeded) is null.
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


class LoadgenError(Exception):
    """A problem found before or while sweeping: one line on stderr, exit status 2."""


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
        """The cell as JSON-ready data; statistics without data (no successful request) are None."""
        ok = self.codes.get("200", 0)
        lat = self.latencies
        mean = lambda v: statistics.fmean(v) if v else None  # noqa: E731
        stat = lambda f: round(f(lat), 3) if lat else None  # noqa: E731
        return {
            "level": self.level,
            "concurrency": self.concurrency,
            "requests": sum(self.codes.values()),
            "ok": ok,
            "codes": dict(self.codes),
            "seconds": round(self.seconds, 4),
            "rps": round(ok / self.seconds, 3) if self.seconds else None,
            "latency_ms": {
                "p50": stat(lambda v: percentile(v, 50)),
                "p90": stat(lambda v: percentile(v, 90)),
                "p95": stat(lambda v: percentile(v, 95)),
                "p99": stat(lambda v: percentile(v, 99)),
                "mean": stat(statistics.fmean),
                "max": stat(max),
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
    before = await scrape_batch_stats(client, model)
    start = time.perf_counter()
    await workers(n, record=True)
    cell.seconds += time.perf_counter() - start
    after = await scrape_batch_stats(client, model)
    if before is not None and after is not None:  # a failed scrape leaves this round out of the mean batch
        b0, b1 = before.get(cell.level, (0.0, 0.0)), after.get(cell.level, (0.0, 0.0))
        cell.batch_sum += b1[0] - b0[0]
        cell.batch_count += b1[1] - b0[1]


async def scrape_batch_stats(client: httpx.AsyncClient, model: str) -> dict[str, tuple[float, float]] | None:
    """batch_stats of the server's /metrics now, or None if the scrape fails (the sweep goes on)."""
    try:
        reply = await client.get("/metrics")
        reply.raise_for_status()
        return batch_stats(reply.text, model)
    except (httpx.HTTPError, ValueError) as exc:
        print(f"warning: /metrics scrape failed ({type(exc).__name__}: {exc}); mean batch size incomplete",
              file=sys.stderr, flush=True)  # fmt: skip
        return None


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
                        f"round {r + 1}/{rounds} concurrency {c:3d} {level:>6}: {_num(res['rps'])} req/s so far, "
                        f"p50 {_num(res['latency_ms']['p50'])} ms, p99 {_num(res['latency_ms']['p99'])} ms, "
                        f"{res['requests'] - res['ok']} errors",
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
            raise LoadgenError(f"the spawned `haste serve` exited with status {proc.returncode} (see its output above)")
        try:
            if httpx.get(url + "/readyz", timeout=5).status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    proc.terminate()
    raise LoadgenError("the spawned `haste serve` was not ready after 600 s")


def check_server(url: str, model: str, levels: list[str]) -> dict:
    """The served model's description (GET /v1/models/{model}) after checking that the server answers and
    serves ``model`` and ``levels``; LoadgenError otherwise."""
    try:
        served = httpx.get(f"{url}/v1/models", timeout=30)
        served.raise_for_status()
        listing = served.json()
        names = [m["name"] for m in listing["models"]]
        if model not in names:
            raise LoadgenError(f"--model {model!r} is not served by {url}; served: {', '.join(names)}")
        unknown = [level for level in levels if level not in listing["levels"]]
        if unknown:
            raise LoadgenError(
                f"--levels {','.join(unknown)} not offered by {url}; levels: {', '.join(listing['levels'])}"
            )
        detail = httpx.get(f"{url}/v1/models/{model}", timeout=30)
        detail.raise_for_status()
        return detail.json()
    except httpx.HTTPError as exc:
        raise LoadgenError(f"cannot query the server at {url}: {type(exc).__name__}: {exc}") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise LoadgenError(f"{url} does not answer like a HASTE service (GET /v1/models): {exc}") from None


def default_out(model: str) -> Path:
    """loadgen-<model>.json in the current directory: a run never overwrites the committed
    results/loadgen-*.json unless --out names it."""
    return Path(f"loadgen-{model.replace(':', '_').replace('/', '_')}.json")


def run(args: argparse.Namespace) -> int:
    env = dict(args.env)
    out = args.out or default_out(args.model)
    if out.is_dir() or not out.resolve().parent.is_dir():
        raise LoadgenError(f"--out {str(out)!r}: not a file in an existing directory")
    proc = None
    if args.spawn:
        proc, url = spawn(args.model, env)
    else:
        url = args.url
    try:
        info = check_server(url, args.model, args.levels)
        images = [Path(p).read_bytes() for p in args.images]
        start = time.time()
        cells = asyncio.run(
            sweep(url, args.model, args.levels, args.concurrency, args.requests, args.warmup, args.rounds, images)
        )
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(60)
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
    out.write_text(json.dumps(report, indent=2, allow_nan=False) + "\n")
    print(f"wrote {out}")
    print(table(report))
    return 0


def _num(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


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
            f"| {r['concurrency']} | {r['level']} | {_num(r['rps'])} | {ratio} | {_num(lat['p50'])} "
            f"| {_num(lat['p95'])} | {_num(lat['p99'])} | {batch} | {saved} | {r['requests'] - r['ok']} |"
        )
    meta = report["meta"]
    lines.append("")
    lines.append(
        f"{meta['model']} on {meta['device']}, {meta['requests_per_cell']} requests per cell "
        f"({meta['rounds']} interleaved rounds), {meta['host']['cpus']} CPUs; `{meta['command']}`"
    )
    return "\n".join(lines)


class _Parser(argparse.ArgumentParser):
    """argparse with its errors on one line (``loadgen.py run: error: ...``), exit status 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")


def _int_in(lo: int, hi: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if not lo <= value <= hi:
            raise argparse.ArgumentTypeError(f"must be from {lo} to {hi}; got {value}")
        return value

    parse.__name__ = "integer"
    return parse


def _concurrencies(text: str) -> list[int]:
    """``1,8`` -> [1, 8]: comma-separated integers from 1 to 512, no empty item, no repeat."""
    parts = text.split(",")
    if any(not p.strip() for p in parts):
        raise argparse.ArgumentTypeError(f"{text!r}: give comma-separated integers from 1 to 512, e.g. 1,8")
    values = [_int_in(1, 512)(p.strip()) for p in parts]
    if len(set(values)) != len(values):
        raise argparse.ArgumentTypeError(f"{text!r} repeats a value")
    return values


def _levels(text: str) -> list[str]:
    """``off,high`` -> ["off", "high"]: levels of haste.LEVELS, no repeat."""
    levels = [p.strip() for p in text.split(",")]
    unknown = [lv for lv in levels if lv not in LEVELS]
    if unknown:
        raise argparse.ArgumentTypeError(f"{', '.join(map(repr, unknown))}: levels are {', '.join(LEVELS)}")
    if len(set(levels)) != len(levels):
        raise argparse.ArgumentTypeError(f"{text!r} repeats a level")
    return levels


def _loopback_url(text: str) -> str:
    """An http(s) URL of a server on this machine (the sweep would load anything else)."""
    url = text.rstrip("/")
    parsed = urlparse(url)
    if parsed.scheme not in ("http", "https"):
        raise argparse.ArgumentTypeError(f"{text!r}: give an http:// or https:// URL")
    try:
        parsed.port  # noqa: B018 (urlparse checks the port only when asked)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: the port is not a number from 0 to 65535") from None
    if parsed.hostname not in LOOPBACK:
        raise argparse.ArgumentTypeError(f"loopback servers only (127.0.0.1, localhost, ::1); got {text!r}")
    return url


def _image_file(text: str) -> str:
    path = Path(text)
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"{text!r}: no such file")
    return text


def _setting(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key.startswith("HASTE_"):
        raise argparse.ArgumentTypeError(f"{text!r}: give HASTE_<SETTING>=<value>")
    return key, value


def main(argv: list[str] | None = None) -> int:
    parser = _Parser(prog="loadgen.py", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run", help="sweep levels x concurrency and write JSON")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--url", type=_loopback_url, default="http://127.0.0.1:8000",
                       help="a running server on this machine (http://127.0.0.1:8000)")  # fmt: skip
    where.add_argument("--spawn", action="store_true", help="start `haste serve` for the run (a free loopback port)")
    p.add_argument("--model", default="fmnist-resnet34", help="a model the server serves")
    p.add_argument("--levels", type=_levels, default=list(LEVELS), help="comma-separated levels (off,low,medium,high)")
    p.add_argument("--concurrency", type=_concurrencies, default=[1, 8],
                   help="comma-separated client concurrencies, 1 to 512 (1,8)")  # fmt: skip
    p.add_argument("--requests", type=_int_in(1, 100_000), default=200, help="measured requests per cell and round")
    p.add_argument("--warmup", type=_int_in(0, 100_000), default=16, help="unmeasured requests before each cell")
    p.add_argument("--rounds", type=_int_in(1, 1000), default=1, help="repeat the sweep, levels interleaved, pooled")
    p.add_argument("--images", type=_image_file, nargs="+", default=DEFAULT_IMAGES, help="PNG files sent round-robin")
    p.add_argument(
        "--env", type=_setting, nargs="*", default=[], metavar="HASTE_X=V", help="server settings with --spawn"
    )
    p.add_argument("--out", type=Path, help="output JSON (default: loadgen-<model>.json in the current directory; "
                   "the README's results are results/loadgen-<model>.json)")  # fmt: skip
    p.set_defaults(func=run)
    t = sub.add_parser("table", help="print the markdown table of a loadgen JSON")
    t.add_argument("json", type=Path)
    t.add_argument("--concurrency", type=int, help="only this concurrency")
    t.set_defaults(func=_print_table)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except LoadgenError as exc:
        print(f"{parser.prog} {args.command}: error: {exc}", file=sys.stderr)
        return 2


def _print_table(args: argparse.Namespace) -> int:
    try:
        report = json.loads(args.json.read_text())
    except (OSError, ValueError) as exc:
        raise LoadgenError(f"{args.json}: {exc}") from None
    print(table(report, args.concurrency))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
