"""Requests per second by level under a real load generator: Debian's ``hey`` against a live ``haste serve``.

    python scripts/loadtest.py --model fmnist-resnet34 --concurrency 1 4 8 --seconds 15 --rounds 2 \\
        --out results/loadtest-fmnist-resnet34.json --plot results/loadtest-fmnist-resnet34.png

The server is started on a free loopback port (its settings from the environment, HASTE_*), warmed, and every
(round, concurrency, level) cell runs ``hey -z SECONDS -c C`` posting one real Fashion-MNIST PNG; the levels
are interleaved within each round (their order rotated), so that drift on a shared machine hits every level
alike. hey measures requests/s and client latency; what a generic tool cannot see comes from the server's
/metrics, read before and after each cell: the mean batch size, the FLOPs saved and the plan entries that ran
(``haste_plan_batches_total``). The JSON has each cell and, per concurrency and level, the pooled figures and
the ratio of requests/s to level ``off``.

hey cannot alternate levels request by request, and at concurrency 1 the cells' ratios move with the machine by more
than the levels differ. ``--paired N`` adds, after the cells, N pairs of sequential requests per level: one at the level
and one at ``off`` back to back, in a random order within each pair (one keep-alive connection, httpx), and reports the
paired ratio to ``off`` (median over pairs, 95% interval) of the client's wall time per request and of the inference
and total times the server reports in each reply (``timing_ms``): what a client at concurrency 1 gains, with the drift
between two requests a few milliseconds apart cancelled.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx
from loadgen import spawn  # scripts/ is the script's own directory: on sys.path
from prometheus_client.parser import text_string_to_metric_families

from haste_lab.interleaved import paired_ratio, ratio_text

LEVELS = ("off", "low", "medium", "high")
IMAGE = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "fmnist-0000-ankle-boot.png"


def counters(url: str, model: str) -> dict:
    """Per level: (images, batches, batch-size sum, FLOPs dense, FLOPs saved), and per plan entry its batches."""
    text = httpx.get(url + "/metrics", timeout=30).text
    out: dict = {"levels": {}, "plans": {}}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.labels.get("model") != model:
                continue
            level = s.labels.get("level")
            row = out["levels"].setdefault(level, {"images": 0.0, "batches": 0.0, "batch_sum": 0.0,
                                                   "dense": 0.0, "saved": 0.0})  # fmt: skip
            if s.name == "haste_images_total":
                row["images"] = s.value
            elif s.name == "haste_batch_size_count":
                row["batches"] = s.value
            elif s.name == "haste_batch_size_sum":
                row["batch_sum"] = s.value
            elif s.name == "haste_flops_dense_total":
                row["dense"] = s.value
            elif s.name == "haste_flops_saved_total":
                row["saved"] = s.value
            elif s.name == "haste_plan_batches_total":
                out["plans"][s.labels["plan"]] = s.value
    return out


def hey(url: str, level: str, concurrency: int, seconds: float, model: str) -> dict:
    """One hey run: requests/s of 200 answers, latency percentiles (ms), status codes."""
    target = f"{url}/v1/classify?level={level}&model={model}"
    cmd = ["hey", "-z", f"{seconds}s", "-c", str(concurrency), "-m", "POST", "-T", "image/png", "-D", str(IMAGE),
           "-o", "csv", target]  # fmt: skip
    start = time.monotonic()
    done = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=seconds + 120)
    wall = time.monotonic() - start
    rows = list(csv.DictReader(io.StringIO(done.stdout)))
    codes: dict[str, int] = {}
    for r in rows:
        codes[r["status-code"]] = codes.get(r["status-code"], 0) + 1
    ok = sorted(float(r["response-time"]) * 1e3 for r in rows if r["status-code"] == "200")
    span = max((float(r["offset"]) + float(r["response-time"]) for r in rows), default=wall)

    def pct(q):
        return ok[min(int(q / 100 * len(ok)), len(ok) - 1)] if ok else None

    return {"ok": len(ok), "codes": codes, "seconds": span, "rps": len(ok) / span if span else 0.0,
            "latency_ms": {"p50": pct(50), "p95": pct(95), "p99": pct(99)}}  # fmt: skip


def paired(url: str, levels: list[str], pairs: int, model: str, seed: int = 0) -> list[dict]:
    """Per level other than off: ``pairs`` pairs of sequential requests (the level's and off's, back to back, the
    order drawn per pair), after 20 untimed pairs; the paired ratios to off of the client's wall ms and the
    server's inference and total ms (``timing_ms`` of the replies)."""
    rng = random.Random(seed)
    body = IMAGE.read_bytes()
    out = []
    with httpx.Client(timeout=60, headers={"Content-Type": "image/png"}) as client:

        def one(level: str) -> dict:
            start = time.perf_counter()
            reply = client.post(f"{url}/v1/classify", params={"level": level, "model": model}, content=body)
            wall = (time.perf_counter() - start) * 1e3
            reply.raise_for_status()
            timing = reply.json()["timing_ms"]
            return {"wall": wall, "inference": timing["inference"], "total": timing["total"]}

        for level in (lv for lv in levels if lv != "off"):
            times: dict[str, list[dict]] = {level: [], "off": []}
            for i in range(20 + pairs):
                for name in rng.sample([level, "off"], 2):
                    measured = one(name)
                    if i >= 20:
                        times[name].append(measured)
            row = {"level": level, "pairs": pairs}
            for key in ("wall", "inference", "total"):
                mine, off = [t[key] for t in times[level]], [t[key] for t in times["off"]]
                row[key] = {"level_ms": statistics.median(mine), "off_ms": statistics.median(off),
                            "vs_off": paired_ratio(mine, off)}  # fmt: skip
            out.append(row)
            wall = row["wall"]["vs_off"]
            print(f"paired c=1 {level:>6}: wall {ratio_text(wall)} "
                  f"of off, inference {row['inference']['vs_off']['median']:.3f}", flush=True)  # fmt: skip
    return out


def delta(after: dict, before: dict, level: str) -> dict:
    a, b = after["levels"].get(level, {}), before["levels"].get(level, {})
    d = {k: a.get(k, 0.0) - b.get(k, 0.0) for k in ("images", "batches", "batch_sum", "dense", "saved")}
    return {
        "mean_batch_size": d["batch_sum"] / d["batches"] if d["batches"] else None,
        "flops_saved_ratio": d["saved"] / d["dense"] if d["dense"] else None,
        "plans": {p: v - before["plans"].get(p, 0.0) for p, v in after["plans"].items()
                  if p.startswith(level + "@") and v - before["plans"].get(p, 0.0) > 0},
    }  # fmt: skip


def run(args) -> dict:
    if shutil.which("hey") is None:
        raise SystemExit("loadtest: hey is not installed (Debian package hey; scripts/setup.sh installs it)")
    proc, url = spawn(args.model, {})  # scripts/loadgen.py: haste serve on a free loopback port, ready
    try:
        for level in args.levels:  # warm the connection pools and each level's plans
            hey(url, level, max(args.concurrency), 2, args.model)
        cells = []
        for r in range(args.rounds):
            for concurrency in args.concurrency:
                order = list(args.levels)
                shift = (r + concurrency) % len(order)
                for level in order[shift:] + order[:shift]:
                    before = counters(url, args.model)
                    cell = {"round": r, "concurrency": concurrency, "level": level,
                            **hey(url, level, concurrency, args.seconds, args.model)}  # fmt: skip
                    cell.update(delta(counters(url, args.model), before, level))
                    cells.append(cell)
                    print(f"round {r} c={concurrency} {level:>6}: {cell['rps']:.1f} req/s, p50 "
                          f"{cell['latency_ms']['p50']:.1f} ms, batch {cell['mean_batch_size'] or 0:.2f}, "
                          f"plans {cell['plans']}", flush=True)  # fmt: skip
        pairs = paired(url, args.levels, args.paired, args.model) if args.paired else None
        model_info = httpx.get(f"{url}/v1/models/{args.model}", timeout=30).json()
    finally:
        proc.terminate()
        proc.wait(60)
    summary = summarize(cells, args.concurrency, args.levels)
    return {
        "model": args.model,
        "tool": "hey (Debian), -z per cell, POST image/png (one Fashion-MNIST test image)",
        "protocol": f"{args.rounds} rounds x concurrency {args.concurrency} x levels {list(args.levels)} interleaved "
        f"(rotated), {args.seconds} s per cell after a 2 s warm-up per level",
        "server": {
            "engine": model_info.get("engine"),
            "graph_mode": model_info.get("graph_mode"),
            "device": model_info.get("device"),
            "settings": {k: v for k, v in os.environ.items() if k.startswith("HASTE_")},
        },  # fmt: skip
        "cells": cells,
        "summary": summary,
        **(
            {
                "paired": {
                    "protocol": f"{args.paired} pairs of sequential requests per level (the level's and off's, back "
                    "to back, in a random order within each pair; one connection), after 20 untimed pairs; paired "
                    "ratios to off: median over pairs, 95% interval",
                    "levels": pairs,
                }
            }
            if pairs
            else {}
        ),  # fmt: skip
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
    }


def summarize(cells: list[dict], concurrencies: list[int], levels: list[str]) -> list[dict]:
    """Per concurrency and level: the requests/s pooled over the rounds and its ratio to level off's, and the paired
    ratio: the median over rounds of the level's requests/s over off's in the same round, and their range (the
    machine's drift between rounds cancels; it does not between the cells of one round)."""
    summary = []
    for concurrency in concurrencies:
        off = off_rounds = None
        for level in levels:
            mine = [c for c in cells if c["concurrency"] == concurrency and c["level"] == level]
            ok = sum(c["ok"] for c in mine)
            rps = ok / sum(c["seconds"] for c in mine)
            per_round = {c["round"]: c["rps"] for c in mine}
            row = {"concurrency": concurrency, "level": level, "rps": rps,
                   "rps_rounds": [c["rps"] for c in mine],
                   "p50_ms": statistics.median(c["latency_ms"]["p50"] for c in mine if c["latency_ms"]["p50"]),
                   "mean_batch_size": statistics.fmean(c["mean_batch_size"] for c in mine if c["mean_batch_size"]),
                   "flops_saved_ratio": statistics.fmean(c["flops_saved_ratio"] or 0.0 for c in mine),
                   "non_200": sum(n for c in mine for code, n in c["codes"].items() if code != "200")}  # fmt: skip
            if level == "off":
                off, off_rounds = rps, per_round
            row["rps_vs_off"] = rps / off if off else None
            rounds = sorted(set(per_round) & set(off_rounds or {}))
            ratios = [per_round[r] / off_rounds[r] for r in rounds]
            row["paired_vs_off"] = (
                {"median": statistics.median(ratios), "range": [min(ratios), max(ratios)], "rounds": len(ratios)}
                if ratios
                else None
            )
            summary.append(row)
    return summary


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    levels = list(dict.fromkeys(r["level"] for r in report["summary"]))
    concs = list(dict.fromkeys(r["concurrency"] for r in report["summary"]))
    width = 0.8 / len(levels)
    for i, level in enumerate(levels):
        values = [next(r["rps"] for r in report["summary"] if r["level"] == level and r["concurrency"] == c)
                  for c in concs]  # fmt: skip
        ax.bar([j + i * width for j in range(len(concs))], values, width, label=level)
    ax.set_xticks([j + width * (len(levels) - 1) / 2 for j in range(len(concs))], [f"c={c}" for c in concs])
    ax.set_ylabel("requests/s (hey)")
    ax.set_title(f"{report['model']}: requests/s by level and concurrency")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def markdown(report: dict) -> str:
    lines = [
        "| concurrency | level | req/s | vs off | vs off, per round: median [range] | p50 ms | mean batch | "
        "FLOPs saved |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in report["summary"]:
        paired = r.get("paired_vs_off")
        per_round = f"{paired['median']:.2f}x [{paired['range'][0]:.2f}, {paired['range'][1]:.2f}]" if paired else "-"
        lines.append(
            f"| {r['concurrency']} | {r['level']} | {r['rps']:.1f} | {r['rps_vs_off']:.2f}x | {per_round} | "
            f"{r['p50_ms']:.1f} | {r['mean_batch_size']:.2f} | {100 * r['flops_saved_ratio']:.1f}% |"
        )
    return "\n".join(lines)


def paired_markdown(report: dict) -> str:
    """One row per level: the paired ratios to off at concurrency 1, request by request (``--paired``)."""
    lines = [
        "| level | client wall ms (level / off) | wall vs off [95%] | inference vs off [95%] | server total vs off |",
        "|---|---|---|---|---|",
    ]

    for r in report["paired"]["levels"]:
        ratios = " | ".join(ratio_text(r[key]["vs_off"]) for key in ("wall", "inference", "total"))
        lines.append(f"| {r['level']} | {r['wall']['level_ms']:.2f} / {r['wall']['off_ms']:.2f} | {ratios} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="fmnist-resnet34")
    p.add_argument("--levels", nargs="+", choices=LEVELS, default=list(LEVELS))
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 8])
    p.add_argument("--seconds", type=float, default=15.0, help="hey -z per cell (default 15)")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument(
        "--paired",
        type=int,
        default=0,
        metavar="N",
        help="also N pairs of sequential requests per level, the level's and off's back to back: paired ratios at "
        "concurrency 1 (default 0: none)",
    )
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--plot", type=Path)
    p.add_argument("--markdown", action="store_true", help="print the table of --out and exit")
    args = p.parse_args(argv)
    if args.markdown:
        print(markdown(json.loads(args.out.read_text())))
        return 0
    if "off" not in args.levels:
        p.error("--levels must include off (the ratios are to off)")
    report = run(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    if args.plot:
        plot(report, args.plot)
    print(markdown(report))
    if "paired" in report:
        print(paired_markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
