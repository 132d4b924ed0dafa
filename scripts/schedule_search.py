"""Per-stage hyperplane schedules from a sensitivity sweep: predict, rank, print the candidates.

A sensitivity sweep compresses one group of layers at a time (the others at 24 hyperplanes, i.e. nearly
exact) on the calibration split:

    haste sweep --model fmnist-resnet34 --seeds 0 --hyperplanes 4 6 8 12 \
        --schedule "*=24" "*=24,layer1=+0" "*=24,layer2=+0" "*=24,layer3=+0" "*=24,layer4=+0" \
        --out results/sensitivity-fmnist-resnet34

This script assumes drops and savings add up over groups (drop = sum of the groups' drops over the
all-24 baseline, a negative drop (noise) counting as 0; saving = sum of the per-layer savings measured
with each group at its L), enumerates every combination of one L per group, and prints for each budget
the schedules with the largest predicted saving whose predicted drop stays within ``margin`` x budget,
as ``--schedule`` arguments to validate with ``haste sweep`` (3 seeds) and choose with ``haste calibrate``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import re
import shlex
import sys

from haste.functional import MERGES
from haste_lab.sweep import matching


def groups_of(rows: list[dict]) -> dict[str, dict[int, dict]]:
    """{group: {L: row}} for rows with schedule ``*=24,<group>=+0``."""
    out: dict[str, dict[int, dict]] = {}
    for row in rows:
        m = re.fullmatch(r"\*=24,([^=,]+)=\+0", row["schedule"])
        if m:
            out.setdefault(m.group(1), {})[row["hyperplanes"]] = row
    return out


def layer_saved(row: dict, group: str) -> float:
    """Multiply-adds saved per image by the layers of ``group`` in a row (overhead included)."""
    return sum(
        v["flops_dense"] - v["flops_executed"] - v["flops_overhead"]
        for name, v in row["layers"].items()
        if name == group or name.startswith(group + ".")
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("sensitivity", help="JSON of the sensitivity sweep")
    p.add_argument("--budgets", type=float, nargs="+", default=[0.5, 1.0, 2.0], help="drop budgets (points)")
    p.add_argument("--margin", type=float, default=0.8, help="predicted drop must be <= margin x budget")
    p.add_argument("--top", type=int, default=3, help="schedules printed per budget")
    p.add_argument("--merge", choices=MERGES, default="mean", help="only the rows of this merge rule")
    args = p.parse_args(argv)
    data = json.loads(open(args.sensitivity).read())
    rows = matching(data["rows"], merge=args.merge)
    base = [r for r in rows if r["schedule"] == "*=24"]
    base_drop = sum(r["drop_points"] for r in base) / len(base) if base else 0.0
    groups = groups_of(rows)
    names = sorted(groups)
    options = {g: sorted(groups[g]) for g in names}
    dense = data["flops_dense"]
    print(f"baseline (all layers at 24): drop {base_drop:.2f}; groups {', '.join(names)}")
    for g in names:
        cells = ", ".join(
            f"L={L}: drop {groups[g][L]['drop_points'] - base_drop:+.2f} saving "
            f"{100 * layer_saved(groups[g][L], g) / dense:.1f}%"
            for L in options[g]
        )
        print(f"  {g}: {cells}")
    combos = []
    for choice in itertools.product(*(options[g] for g in names)):
        drop = sum(max(groups[g][L]["drop_points"] - base_drop, 0.0) for g, L in zip(names, choice))
        saving = sum(layer_saved(groups[g][L], g) for g, L in zip(names, choice)) / dense
        combos.append((saving, drop, choice))
    picked = []
    for budget in args.budgets:
        within = sorted((c for c in combos if c[1] <= args.margin * budget), reverse=True)[: args.top]
        print(f"budget {budget}: ")
        for saving, drop, choice in within:
            schedule = ",".join(f"{g}={L}" for g, L in zip(names, choice))
            print(f"  predicted saving {100 * saving:.1f}% drop {drop:.2f}: {schedule}")
            if schedule not in picked:
                picked.append(schedule)
    print("--schedule " + " ".join(shlex.quote(s) for s in picked))
    return 0


if __name__ == "__main__":
    sys.exit(main())
