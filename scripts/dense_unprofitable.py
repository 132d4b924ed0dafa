"""Schedules that run dense the layers where merging does not pay, from a sweep's per-layer savings.

A layer whose buckets are nearly all singletons costs its hashing overhead and saves almost nothing;
running it dense removes that overhead (more saving, less latency) and its approximation error. For
every setting (hyperplanes, schedule) of a sweep on the calibration split, this prints the setting with
``<layer>=0`` added for each layer whose mean saving over the seeds (overhead included) is below
``--threshold``, as ``--schedule`` arguments for ``haste sweep`` (validated there with 3 seeds like
any other candidate, then chosen by ``haste calibrate``):

    python scripts/dense_unprofitable.py results/sweep-fmnist-resnet34-w32.json --hyperplanes 8 10 12
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from collections import defaultdict

from haste.functional import MERGES
from haste_lab.sweep import matching


def layer_savings(rows: list[dict]) -> dict[tuple[int, str], dict[str, float]]:
    """{(hyperplanes, schedule): {layer: mean saving over the rows' seeds}} for the HASTE layers."""
    sums: dict[tuple[int, str], dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for row in rows:
        for name, layer in row.get("layers", {}).items():
            if layer.get("kind", "haste") == "haste" and layer.get("hyperplanes", 0) > 0:
                sums[row["hyperplanes"], row["schedule"]][name].append(layer["saving"])
    return {key: {n: sum(v) / len(v) for n, v in layers.items()} for key, layers in sums.items()}


def pruned(schedule: str, savings: dict[str, float], threshold: float) -> str | None:
    """``schedule`` plus ``layer=0`` for the layers saving less than ``threshold`` (None if there are none)."""
    low = [name for name, saving in savings.items() if saving < threshold]
    return ",".join(filter(None, [schedule, *(f"{name}=0" for name in low)])) if low else None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("sweep", help="JSON of a haste sweep on the calibration split")
    p.add_argument("--threshold", type=float, default=0.03, help="run dense the layers saving less (fraction)")
    p.add_argument("--hyperplanes", type=int, nargs="*", help="only these rows' hyperplanes (default: all)")
    p.add_argument("--max-drop", type=float, help="only settings whose mean drop (points) is at most this")
    p.add_argument("--merge", choices=MERGES, default="mean", help="only the rows of this merge rule")
    args = p.parse_args(argv)
    data = json.loads(open(args.sweep).read())
    rows = matching(data["rows"], merge=args.merge)
    rows = [r for r in rows if "=0" not in r["schedule"]]  # derive from unpruned settings only
    if args.max_drop is not None:
        drops = defaultdict(list)
        for r in rows:
            drops[r["hyperplanes"], r["schedule"]].append(r["drop_points"])
        rows = [r for r in rows if sum(d := drops[r["hyperplanes"], r["schedule"]]) / len(d) <= args.max_drop]
    by_setting = layer_savings(rows)
    if not by_setting:
        raise SystemExit(f"{args.sweep}: no rows with per-layer results")
    out = []
    for (hyperplanes, schedule), savings in sorted(by_setting.items()):
        if args.hyperplanes and hyperplanes not in args.hyperplanes:
            continue
        new = pruned(schedule, savings, args.threshold)
        if new:
            dense = sum(1 for v in savings.values() if v < args.threshold)
            print(f"# L={hyperplanes} {schedule or 'uniform'}: {dense} of {len(savings)} layers dense", file=sys.stderr)
            out.append((hyperplanes, new))
    for hyperplanes, schedule in out:
        print(f"--hyperplanes {hyperplanes} --schedule {shlex.quote(schedule)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
