"""Generate the README's levels table and the docs' generated pages from committed files.

    python scripts/readme_tables.py            # rewrite every generated section (between its markers)
    python scripts/readme_tables.py --check    # exit 1 if one of them is out of date

Targets (each a section between ``<!-- NAME:begin ... -->`` and ``<!-- NAME:end -->``):

- README.md, ``levels``: the levels of the reference model (``levels_section``), from
  results/calibrate-<REFERENCE>.json (accuracy and FLOPs on the test split) and results/bench-fmnist.json
  (latency against the dense model).
- docs/results.md, ``results``: the results tables (``section``), from results/calibrate-<model>.json
  (calibrated levels measured on the test split), results/sweep-<model>.json (uniform hyperplane sweeps on the
  calibration split, with their PNG), results/ablation-<model>.json (one-factor-at-a-time ablation),
  results/bar-*.json and results/redundancy-*.json.
- docs/settings.md, ``settings``: the service's settings (``settings_section``), from service/settings.py.
- docs/library.md, ``options``: the conversion options (``options_section``), from haste/options.py.
- docs/engines.md, ``graph-mode``: each level eager and traced (``graph_mode_section``), from
  results/graph-mode-<REFERENCE>.json; ``patch-size``: tables at patch size 4 and 8 (``patch_size_section``), from
  results/patch-size-<REFERENCE>.json; ``stages-b1``: the same for stages alone and together at batch 1, from
  results/stages-b1-<REFERENCE>.json.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import typing
from pathlib import Path

from haste.options import Options
from haste_lab.plan_search import plan_entry
from haste_lab.sweep import AXES, with_defaults

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "results"
DOCS = ROOT / "docs"
#: The model whose levels the README shows.
REFERENCE = "fmnist-resnet34"
DEFAULTS = {k: v for k, v in Options().as_dict().items() if k in AXES}
PAPER = [
    ("ResNet34, CIFAR-10 (paper)", "-", "1.25", "46.20"),
    ("VGG19-BN, CIFAR-10 (paper)", "93.95", "1.63", "38.83"),
]


def pct(x: float, digits: int = 2) -> str:
    return f"{100 * x:.{digits}f}"


def setting(value) -> str:
    """A level's hyperplanes as text: an int, or a per-layer schedule summarised as default + overrides."""
    if isinstance(value, int):
        return str(value)
    overrides = sorted({v for k, v in value.items() if k != "default" and v})
    dense = sum(1 for k, v in value.items() if k != "default" and v == 0)
    parts = [f"per-layer {min(overrides)}..{max(overrides)}"] if overrides else []
    parts += [f"{dense} layers dense"] if dense else []
    return f"{value['default']} ({', '.join(parts)})" if parts else str(value["default"])


def load(pattern: str) -> list[tuple[str, dict]]:
    out = []
    for path in sorted(RESULTS.glob(pattern)):
        data = json.loads(path.read_text())
        for entry in (*data.get("rows", ()), *data.get("summary", ())):
            with_defaults(entry)  # files written before the merge axis
        out.append((path.stem.split("-", 1)[1], data))
    return out


def cards() -> dict[str, dict]:
    """The reference models' cards (haste/zoo/weights/NAME.json) by name, in file-name order."""
    paths = sorted((ROOT / "haste" / "zoo" / "weights").glob("*.json"))
    return {path.stem: json.loads(path.read_text()) for path in paths}


def models_table() -> list[str]:
    """The reference models, from their cards."""
    lines = [
        "| model | architecture | base width | epochs | test acc. (%) | dense MFLOPs / image |",
        "|---|---|---|---|---|---|",
    ]
    for card in cards().values():
        lines.append(
            f"| {card['name']} | {card['arch']} | {card['width']} | {card['recipe']['epochs']} "
            f"| {pct(card['test_accuracy'])} | {card['flops_dense'] / 1e6:.1f} |"
        )
    return lines


def calibrated_table() -> list[str]:
    lines = [
        "| model | dense test acc. (%) | merge | level | hyperplanes L | calibration drop (pts) | test acc. (%) "
        "| test drop (pts) | FLOPs saving incl. overhead (%) | saving excl. overhead (%) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for model, data in load("calibrate-*.json"):
        levels = data["haste"]["levels"]
        merge = data["haste"].get("options", {}).get("merge", "mean")
        for row in data["haste"]["table"]:
            lines.append(
                f"| {model} | {pct(row['test_dense_accuracy'])} | {merge} | {row['level']} "
                f"| {setting(levels[row['level']])} "
                f"| {row['calibration_drop']:.2f} | {pct(row['test_accuracy'])} | {row['test_drop']:.2f} "
                f"| **{pct(row['saving'])}** | {pct(row['saving_without_overhead'])} |"
            )
    for name, dense, drop, saving in PAPER:
        lines.append(f"| {name} | {dense} | mean | - | - | - | - | {drop} | {saving} | - |")
    return lines


def sweep_tables() -> list[str]:
    lines = []
    for model, data in load("sweep-*.json"):
        lines += [
            f"**{model}**, uniform hyperplanes, {data['split']} split ({data['images']} images, dense "
            f"{pct(data['dense_accuracy'])}%), mean +/- std over {max(s['seeds'] for s in data['summary'])} "
            f"hyperplane seeds; commands:",
            "",
            *(f"    {c}" for c in data.get("commands", [data["command"]])),
            "",
            "| merge | L | accuracy (%) | drop (pts) | saving incl. overhead (%) | saving excl. overhead (%) |",
            "|---|---|---|---|---|---|",
        ]
        for s in sorted(data["summary"], key=lambda s: (s["merge"] != "mean", s["hyperplanes"])):
            if changed(s, [a for a in AXES if a != "merge"]):
                continue
            lines.append(
                f"| {s['merge']} | {s['hyperplanes']} | {pct(s['accuracy_mean'])} +/- {pct(s['accuracy_std'])} "
                f"| {s['drop_points_mean']:.2f} | {pct(s['saving_mean'])} +/- {pct(s['saving_std'])} "
                f"| {pct(s['saving_without_overhead_mean'])} |"
            )
        lines += ["", f"![{model} trade-off](../results/sweep-{model}.png)", ""]
    return lines


def changed(config: dict, axes=AXES) -> list[str]:
    """``axis=value`` for the axes where ``config`` differs from the defaults (schedule default: uniform)."""
    out = []
    for a in axes:
        value, default = config.get(a), DEFAULTS.get(a, "")
        if value != default and not (isinstance(value, float) and abs(value - default) < 1e-9):
            out.append(f"{a}={round(value, 3) if isinstance(value, float) else value}")
    return out


def describe(config: dict) -> str:
    return ", ".join(changed(config)) or "defaults (P=4, s=2/3, ternary, start 1, no 1x1, mean merge, uniform L)"


def best_within(rows: list[dict], budget: float) -> str:
    within = [r for r in rows if r["drop_points_mean"] <= budget]
    if not within:
        return "-"
    best = max(within, key=lambda r: r["saving_mean"])
    return f"{pct(best['saving_mean'], 1)} (L={best['hyperplanes']})"


def ablation_tables() -> list[str]:
    lines = []
    for model, data in load("ablation-*.json"):
        configs: dict[tuple, list[dict]] = {}
        for s in data["summary"]:
            configs.setdefault(tuple(s.get(a) for a in AXES), []).append(s)
        lines += [
            f"**{model}** ablation, {data['split']} split ({data['images']} images, dense "
            f"{pct(data['dense_accuracy'])}%), mean over {max(s['seeds'] for s in data['summary'])} seeds: the "
            "largest saving (incl. overhead) whose mean drop stays within the budget, and the L reaching it.",
            "",
            "| setting | <= 0.5 pts | <= 1.0 pts | <= 1.25 pts | <= 2.0 pts | L swept |",
            "|---|---|---|---|---|---|",
        ]
        named = [(describe(dict(zip(AXES, key))), rows) for key, rows in configs.items()]
        for variant_path in sorted(RESULTS.glob(f"variant-*-{model}.json")):
            variant = json.loads(variant_path.read_text())
            if (variant["split"], variant["images"]) == (data["split"], data["images"]):
                label = variant_path.stem.split("-")[1]
                named.append((f"{label} (scripts/ablate_variant.py, reference engine)", variant["summary"]))
        for label, rows in sorted(named):
            ls = ",".join(str(r["hyperplanes"]) for r in sorted(rows, key=lambda r: r["hyperplanes"]))
            cells = " | ".join(best_within(rows, b) for b in (0.5, 1.0, 1.25, 2.0))
            lines.append(f"| {label} | {cells} | {ls} |")
        lines += ["", f"![{model} ablation](../results/ablation-{model}.png)", ""]
    return lines


def options_text(options: dict) -> str:
    """'scaled merge' plus the conversion options that differ from the defaults, e.g. 'patch_size=2'."""
    options = with_defaults(dict(options))
    return ", ".join([f"{options['merge']} merge", *changed(options, [a for a in DEFAULTS if a != "merge"])])


def bar_lines() -> list[str]:
    """The issue's bar: >= 46.2% saving at <= 1.25 points test drop on the ResNet34 reference model."""
    lines = []
    for model, data in load("calibrate-*.json"):
        table = data["haste"]["table"]
        within = [r for r in table if r["test_drop"] <= 1.25]
        best = max(within, key=lambda r: r["saving"]) if within else None
        if best is None:
            lines.append(f"- {model}: no calibrated level within 1.25 points on the test split.")
            continue
        verdict = "meets" if best["saving"] >= 0.462 else "does not meet"
        lines.append(
            f"- {model}: best calibrated level within 1.25 points test drop: {best['level']}, "
            f"{pct(best['saving'])}% saving at {best['test_drop']:.2f} points; {verdict} the paper's 46.2%."
        )
    for model, data in load("bar-*.json"):  # haste calibrate with a 1.25-point budget (results/COMMANDS.md)
        for row in data["haste"]["table"]:
            verdict = "meets" if row["saving"] >= 0.462 and row["test_drop"] <= 1.25 else "does not meet"
            lines.append(
                f"- {model}, the setting of the sweep with the largest saving within 1.25 points on the calibration "
                f"split ({options_text(data['haste'].get('options', {}))}, L={row['hyperplanes']} "
                f"{row['schedule'] or 'uniform'}): test drop {row['test_drop']:.2f} "
                f"points, **{pct(row['saving'])}% saving**; {verdict} the paper's 46.2%."
            )
    return lines


def why_lines() -> list[str]:
    """One data-driven sentence per model on why merging costs accuracy here."""
    lines = []
    for model, data in load("redundancy-*.json"):
        layers = list(data["layers"].values())
        near = sum(v["cos>0.9"] for v in layers) / len(layers)
        zero = sum(v["zero"] for v in layers) / len(layers)
        dist = sorted(v["rel_dist"] for v in layers)[len(layers) // 2]
        lines.append(
            f"- {model}: within a tile region, on average {100 * near:.1f}% of channel pairs are near-duplicates "
            f"(centred cosine > 0.9) and {100 * zero:.1f}% of channels are all zero; the median distance between "
            f"two channels is {dist:.2f} x their norm (1.41 = orthogonal). Merging by averaging is only cheap for "
            "near-duplicates, so large savings need merges of unrelated channels, whatever the hash settings."
        )
    return lines


# ResNet34 at base width 16 (8 and 40 epochs), 32 and 64: what width and training length leave HASTE to merge
RESNET34S = ("fmnist-resnet34-w16", "fmnist-resnet34-w16-e40", "fmnist-resnet34", "fmnist-resnet34-w64")


def width_table() -> list[str]:
    """The ResNet34 at each base width and training length under the same settings (uniform L, both merge
    rules, calibration split): how the saving and the accuracy cost of one setting change with the number of
    channels and with how long the model was trained."""
    red = dict(load("redundancy-*.json"))
    swept = dict(load("sweep-*.json"))
    card = cards()
    models = [m for m in RESNET34S if m in swept and m in card]
    if len(models) < 2:
        return []

    def mean_of(m, key):
        layers = list(red[m]["layers"].values()) if m in red else []
        return f"{100 * sum(v[key] for v in layers) / len(layers):.1f}" if layers else "-"

    # per (model, merge rule): the sweep's summary rows with uniform L and the other options at their defaults
    others = [a for a in AXES if a != "merge"]
    uniform = {
        (m, merge): [s for s in swept[m]["summary"] if s["merge"] == merge and not changed(s, others)]
        for m in models
        for merge in ("mean", "scaled")
    }

    lines = [
        "ResNet34 by base width and training length, the same settings on each (uniform L, calibration split, "
        "mean over 3 hyperplane seeds; rows from results/sweep-MODEL.json; near-duplicates: channel pairs per tile "
        "region with centred cosine > 0.9, all-zero: channels all zero in a tile region; "
        "results/redundancy-MODEL.json):",
        "",
        "| model | width | epochs | test acc. (%) | near-duplicates (%) | all-zero (%) | merge | L "
        "| saving excl. overhead (%) | saving incl. overhead (%) | drop (pts) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for merge in ("mean", "scaled"):
        for hyperplanes in (10, 12, 14):
            for m in models:
                for r in [s for s in uniform[m, merge] if s["hyperplanes"] == hyperplanes][:1]:
                    c = card[m]
                    lines.append(
                        f"| {m} | {c['width']} | {c['recipe']['epochs']} | {pct(c['test_accuracy'])} "
                        f"| {mean_of(m, 'cos>0.9')} | {mean_of(m, 'zero')} | {merge} | {hyperplanes} "
                        f"| {pct(r['saving_without_overhead_mean'])} | **{pct(r['saving_mean'])}** "
                        f"| {r['drop_points_mean']:.2f} |"
                    )
    for merge in ("mean", "scaled"):
        best = [
            f"{m} ({card[m]['width']} wide, {card[m]['recipe']['epochs']} epochs): "
            f"{best_within(uniform[m, merge], 1.25)}"
            for m in models
            if uniform[m, merge]
        ]
        lines += [
            "",
            f"Largest uniform-L saving (%) within 1.25 points (calibration), {merge} merge: {'; '.join(best)}.",
        ]
    return [*lines, ""]


def redundancy_tables() -> list[str]:
    lines = []
    for model, data in load("redundancy-*.json"):
        lines += [
            f"**{model}** (`{data['command']}`), per converted conv: input channels C, fraction of (region, channel)"
            " all zero, fraction of channel pairs whose centred region vectors have cosine > 0.9 / 0.99, and the"
            " median relative distance between two channels (sqrt 2 = orthogonal).",
            "",
            "| layer | C | all-zero | cos > 0.9 | cos > 0.99 | median rel. distance |",
            "|---|---|---|---|---|---|",
        ]
        for name, v in data["layers"].items():
            lines.append(
                f"| {name} | {v['channels']} | {v['zero']:.3f} | {v['cos>0.9']:.3f} | {v['cos>0.99']:.3f} "
                f"| {v['rel_dist']:.2f} |"
            )
        lines.append("")
    return lines


def layout_table(path: Path = RESULTS / "bench-fmnist-resnet34-layout.json") -> list[str]:
    """The dense model and a level in NCHW and channels-last, per batch size (scripts/layout_bench.py)."""
    report = json.loads(path.read_text())
    level = report["level"]
    variants = [f"dense {layout}" for layout in ("nchw", "channels_last")]
    variants += [f"{level} {layout}" for layout in ("nchw", "channels_last")]
    lines = [
        f"`{report['model']}` on {report['batches'][0]['images']}, the dense model and the level `{level}` (its "
        "table at every batch size) in each layout, all four interleaved in one run (medians; "
        f"{report['protocol'].split('; ')[0]}); ratios to the NCHW dense model. `{report['command']}`:",
        "",
        "| batch | " + " | ".join(variants) + " |",
        "|---|" + "---|" * len(variants),
    ]
    for entry in report["batches"]:
        cells = [f"{entry['variants'][v]['median_ms']:.2f} ms ({entry['variants'][v]['ratio']:.3f})" for v in variants]
        lines.append(f"| {entry['batch']} | " + " | ".join(cells) + " |")
    return [*lines, ""]


def kernel_profile_table(prefix: str = "kernel-profile-fmnist-resnet34") -> list[str]:
    """Every HASTE layer alone on its own input, summed over layers, per batch size: the kernel before and after
    the tile buffer (scripts/kernel_profile.py, one report each: ``-before`` and ``-after``), and with the layers'
    kept call (``-kept``, batch 1)."""
    tags = {"before": "before", "after": "after", "kept": "kept call"}
    reports = {tags[tag]: json.loads((RESULTS / f"{prefix}-{tag}.json").read_text()) for tag in tags}
    first = reports["after"]
    lines = [
        f"`{first['model']}` at `{first['level']}` (its table), every HASTE layer timed alone on the input it sees in",
        "the model, interleaved with its dense conv (the medians summed over layers: hot in cache, so a whole forward",
        "costs more) and, in the profiling build, the kernel's stages (thread us per forward, summed over layers;",
        "`prepare`: the calling thread's wall time before the tile loop). `python_us`: the HASTE layer's call minus",
        "the kernel's. Before and after are two runs of `python scripts/kernel_profile.py --batch 1 8 --rounds 61",
        f'--out results/{prefix}-TAG.json`, "kept call" one with `--batch 1` (the layer\'s call through the',
        "kernel's kept `Call`; `kernel us` there is the kernel called from Python with the planes derived per call);",
        "compare ratios, not milliseconds, across them.",
        "",
        "| kernel | batch | dense us | HASTE layer us | ratio | kernel us | python us | hash | bucket | merge "
        "| filters | gemm | prepare |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for tag, report in reports.items():
        for entry in report["batches"]:
            rows = entry["layers"]
            tot = {k: sum(r[k] for r in rows) for k in ("dense_us", "layer_us", "kernel_us", "python_us")}
            st = {k: sum(r["stages_us"].get(k, 0.0) for r in rows) for k in rows[0]["stages_us"]}
            stages = " | ".join(
                f"{st.get(k, 0.0):.0f}" for k in ("hash", "bucket", "merge", "filters", "gemm", "prepare")
            )
            lines.append(
                f"| {tag} | {entry['batch']} | {tot['dense_us']:.0f} | {tot['layer_us']:.0f} | "
                f"{tot['layer_us'] / tot['dense_us']:.3f} | {tot['kernel_us']:.0f} | "
                f"{tot['python_us']:.0f} | {stages} |"
            )
    return [*lines, ""]


def hyperplanes_profile_table(name: str = "kernel-profile-fmnist-resnet34-hyperplanes") -> list[str]:
    """Per stage (layer1..4) and uniform hyperplanes: the layers' mean buckets, their kernel time against their
    dense convs, and the stages that follow the bucket count (GEMM) or grow against it (merge, filters), summed
    over the stage's layers (scripts/kernel_profile.py --hyperplanes)."""
    path = RESULTS / f"{name}.json"
    if not path.exists():
        return []
    report = json.loads(path.read_text())
    batch = report["batches"][0]["batch"]
    hyperplanes = " ".join(map(str, report["hyperplanes"]))
    rounds = re.search(r"then (\d+) rounds", report["protocol"]).group(1)  # the protocol names what ran
    lines = [
        f"Which stages gain time from fewer hyperplanes: `{report['model']}`, batch {batch}, every layer of level "
        f"`{report['level']}`'s table at each uniform setting, alone on its input (`python scripts/kernel_profile.py "
        f"--model {report['model']} --level {report['level']} --batch {batch} --hyperplanes {hyperplanes} "
        f"--rounds {rounds} --out results/{name}.json`; {report['protocol']}). Per stage, summed over its layers: "
        "the mean buckets per tile over the channels, the kernel's wall time over the dense convs' (`kernel/dense`), "
        "and the kernel's thread us in the GEMM and in merging (merge + filters).",
        "",
        "| stage | L | buckets / channels | kernel / dense | GEMM us | merge + filters us |",
        "|---|---|---|---|---|---|",
    ]
    stages = sorted({r["layer"].split(".")[0] for e in report["batches"] for r in e["layers"]})
    for stage in stages:
        for entry in report["batches"]:
            rows = [r for r in entry["layers"] if r["layer"].split(".")[0] == stage]
            buckets = sum(r["mean_buckets"] for r in rows) / sum(r["channels"] for r in rows)
            kernel = sum(r["kernel_us"] for r in rows) / sum(r["dense_us"] for r in rows)
            gemm = sum(r["stages_us"]["gemm"] for r in rows)
            merging = sum(r["stages_us"]["merge"] + r["stages_us"]["filters"] for r in rows)
            lines.append(
                f"| {stage} | {entry['hyperplanes']} | {buckets:.2f} | {kernel:.3f} | {gemm:.0f} | {merging:.0f} |"
            )
    return [*lines, ""]


def section() -> str:
    lines = [
        "## Reference models",
        "",
        "Trained here by `haste train --model NAME` (seed 0; results/train-NAME.log) on the first 55k",
        "Fashion-MNIST training images, padded to 32x32. The ResNet34 reference, `fmnist-resnet34`, has half",
        "the paper's width (32); `fmnist-resnet34-w16` is the narrower one measured first and `fmnist-resnet34-w64`",
        "has the paper's width (4x the multiply-adds, so 4 epochs instead of 8: 91 min here), trained to ask whether",
        "a wider model leaves HASTE more to merge; `fmnist-resnet34-w16-e40` is the width-16 one trained 5x longer",
        "(40 epochs), to ask the same of a longer-trained model (the paper's models were trained to convergence):",
        "the width and training-length table below.",
        "",
        *models_table(),
        "",
        "## Calibrated levels (Fashion-MNIST test split, 10k images)",
        "",
        "Levels are chosen on the calibration split (the last 5k training images, never trained on): the",
        "largest saving whose mean accuracy drop over 3 hyperplane seeds stays within 0.5 / 1.0 / 2.0 points.",
        "They are then measured once on the test split with the shipped seed 0. FLOPs are multiply-adds; the",
        "saving counts hashing, sorting and merging as overhead. The paper's rows are CIFAR-10 (another",
        "dataset, full-width models), for reference.",
        "",
        *calibrated_table(),
        "",
        *bar_lines(),
        *why_lines(),
        "",
        *width_table(),
        "## Memory layout",
        "",
        "The fused CPU kernel writes channels-last outputs. The service holds its models channels-last",
        "(`HASTE_CHANNELS_LAST`, default on), so that every conv, BatchNorm and addition runs in one layout:",
        "",
        *layout_table(),
        "## Where the CPU kernel's time goes",
        "",
        *kernel_profile_table(),
        *hyperplanes_profile_table(),
        "## Sweeps",
        "",
        *sweep_tables(),
        "## Ablation",
        "",
        *ablation_tables(),
        "## Channel redundancy per tile region",
        "",
        *redundancy_tables(),
    ]
    return "\n".join(lines).rstrip("\n")


def describe_plan(table: dict[str, int]) -> str:
    """A plan entry's table in a few characters: the stages running HASTE (``layer`` dropped), with their
    hyperplanes where the whole stage has one value ("1+2+3 at L16, 4 at L8"); "dense" for none. A stage whose
    convs differ (the level's calibrated per-layer table) is named without a value."""
    values: dict[str, int | None] = {}
    for name, value in table.items():
        stage = name.split(".")[0].removeprefix("layer")
        values[stage] = value if "." not in name else None
    groups: dict[int | None, list[str]] = {}
    for stage, value in values.items():
        groups.setdefault(value, []).append(stage)
    return (
        ", ".join("+".join(stages) + (f" at L{value}" if value is not None else "") for value, stages in groups.items())
        or "dense"
    )


def levels_section(
    model: str = REFERENCE, bench_file: str = "bench-fmnist-resnet34-graph.json", loadtest_file: str | None = None
) -> str:
    """The README's table: each level of ``model`` with its table's test accuracy drop and FLOPs saving
    (results/calibrate-MODEL.json), and per batch size the plan it runs (results/plans-MODEL.json: the stages
    running HASTE), that plan's FLOPs saving and its latency against level off (``bench_file``: haste bench on
    the card's plans)."""
    calibrated = json.loads((RESULTS / f"calibrate-{model}.json").read_text())["haste"]
    plans = json.loads((RESULTS / f"plans-{model}.json").read_text())
    bench = json.loads((RESULTS / bench_file).read_text())
    rows = {
        (b["batch"], r["variant"]): r
        for m in bench["models"]
        if m["model"] == model
        for b in m["batches"]
        for r in b["rows"]
    }
    batches = sorted({batch for batch, _ in rows})
    plan_batches = sorted({r["batch"] for r in plans["rows"]})
    fused = any(m["model"] == model and m.get("fuse_batchnorm") for m in bench["models"])

    def plan_at(batch: int, level: str) -> str:
        """The plan a batch of ``batch`` images runs at ``level`` and its drop on the test images of the search."""
        at = max((b for b in plan_batches if b <= batch), default=None)
        entry = plan_entry(plans, level, at)
        if entry is None:
            return "dense, 0.00"
        return f"{describe_plan(entry['levels'])}, {entry['measured'][f'batch {at}']['test_drop']:.2f}"

    merge = calibrated.get("options", {}).get("merge", "mean")
    head = " | ".join(f"batch {b}: plan, test drop, FLOPs saving, latency vs off" for b in batches)
    lines = [
        f"`{model}` (the ResNet34 reference, {merge} merge). Table: the level's calibrated per-layer table on the "
        f"Fashion-MNIST test split (10k images), FLOPs saving with hashing and merging counted as overhead. Per batch "
        f"size: the plan the level runs there (the stages of layer1..4 that run HASTE, with their hyperplanes where a "
        f"stage has one value, chosen by measured latency on the CPU engine, {plans['machine']['vector_isa']}, "
        f"{plans['machine']['threads']} threads), its accuracy drop on the first {plans['test_images']} test images "
        "(points; a plan's table may differ from the level's: see `haste calibrate-plans --table`), its FLOPs "
        f"saving and its latency as a ratio to level off (haste bench, {bench['machine']['threads']} threads: the "
        "median over rounds of its time over off's in the same round" + repeats_note(bench) + "). From "
        f"`results/calibrate-{model}.json`, `results/plans-{model}.json` and `results/{bench_file}`."
        + (baseline_note(rows, batches) if fused else "")
        + graph_note(model, traced=any(m["model"] == model and m.get("graph_mode") for m in bench["models"])),
        "",
        f"| level | table: test drop (pts) | table: FLOPs saving (%) | {head} |",
        "|---|---|---|" + "---|" * len(batches),
    ]
    for row in calibrated["table"]:
        level = row["level"]
        cells = []
        for b in batches:
            r, off = rows.get((b, level)), rows.get((b, "off"))
            if r is None or off is None:
                cells.append("-")
                continue
            paired = r.get("paired_vs_off")  # the median of per-round ratios (older reports: the medians' ratio)
            ratio = paired["median"] if paired else r["median_ms"] / off["median_ms"]
            per_repeat = [x["paired_vs_off"] for x in r.get("repeats", [])]
            spread = f" [{min(per_repeat):.2f}, {max(per_repeat):.2f}]" if len(per_repeat) > 1 else ""
            cells.append(f"{plan_at(b, level)}, {pct(r['flops_saving'], 1)}, {ratio:.2f}{spread}")
        lines.append(f"| {level} | {row['test_drop']:.2f} | {pct(row['saving'])} | {' | '.join(cells)} |")
    return "\n".join(lines)


def repeats_note(bench: dict) -> str:
    """How a bench report with ``--repeats`` reads: the pooled median, then the range of the repeats' medians."""
    counts = {len(r.get("repeats", [])) for m in bench["models"] for b in m["batches"] for r in b["rows"]}
    if max(counts, default=0) < 2:
        return ""
    return (
        f", pooled over {max(counts)} runs one after the other, the batch sizes in turn; in brackets the lowest and "
        "highest of the runs' own medians: how far the ratio moves from one run to the next on this shared machine, "
        "beyond its interval within one run"
    )


def graph_note(model: str, traced: bool) -> str:
    """Eager against graph mode (results/graph-mode-MODEL.json, if measured): how much a trace takes off level off,
    and (``traced`` False: the table's latencies are eager) how ``high`` compares with off where both are traced."""
    path = RESULTS / f"graph-mode-{model}.json"
    if not path.exists():
        return ""
    report = json.loads(path.read_text())
    ratios = {}
    for entry in report["batches"]:
        rows = {r["variant"]: r for r in entry["rows"]}
        off, high = rows["off traced"]["vs_off_eager"], rows["high traced"]["vs_off_traced"]
        ratios[entry["batch"]] = (off["median"], high["median"])
    batches = " / ".join(str(b) for b in ratios)
    off = " / ".join(f"{off:.2f}" for off, _ in ratios.values())
    if traced:
        return (
            " The latencies are those of torch.jit traces (`haste bench --graph-mode`), as the service runs every "
            "level (`HASTE_GRAPH_MODE`, on by default on CPU) and as the plans were searched; a traced off takes "
            f"{off} of the eager off's time at batch {batches} (`results/{path.name}`, with the plans of the time; "
            "docs/engines.md, graph mode)."
        )
    return (
        " These latencies are the eager model's (through its Python, as `haste.compression` runs it); the service runs "
        f"each level as a torch.jit trace (`HASTE_GRAPH_MODE`, on by default on CPU), where level off takes {off} of "
        "the eager off's time and high "
        + " / ".join(f"{high:.2f}" for _, high in ratios.values())
        + f" of the traced off's at batch {batches} (`results/{path.name}`; docs/engines.md, graph mode)."
    )


def baseline_note(rows: dict, batches: list[int]) -> str:
    """What level off is when the bench fused the BatchNorms, and how the model as trained (``dense``) compares."""
    ratios = []
    for b in batches:
        dense = rows.get((b, "dense"))
        if dense is not None and dense.get("paired_vs_off"):
            ratios.append((b, dense["paired_vs_off"]["median"]))
    measured = (
        " The model as trained, BatchNorms kept, runs at "
        + " / ".join(f"{r:.2f}" for _, r in ratios)
        + " of off at batch "
        + " / ".join(str(b) for b, _ in ratios)
        + ": that much of a level's gain over the unfused model would be the fusion, not HASTE."
    ) if ratios else ""  # fmt: skip
    return (
        " Level off is the dense model with its BatchNorms fused into the convs, as the service holds it "
        "(`HASTE_FUSE_BATCHNORM`, on by default; the plans were searched against it)." + measured
    )


def loadtest_section(model: str = REFERENCE) -> str:
    """The service under a real load generator: requests/s per level and concurrency, as ratios to level off
    (results/loadtest-MODEL.json, written by scripts/loadtest.py), and its plot."""
    from loadtest import markdown, paired_markdown  # scripts/loadtest.py, beside this script

    report = json.loads((RESULTS / f"loadtest-{model}.json").read_text())
    settings = ", ".join(f"{k}={v}" for k, v in report["server"]["settings"].items()) or "default settings"
    graph = {True: ", graph mode", False: ", eager"}.get(report["server"].get("graph_mode"), "")
    lines = [
        f"`haste serve` on `{model}` ({report['server']['engine']} engine{graph}, {settings}) under {report['tool']}: "
        f"{report['protocol']}; client and server on the 2-core machine. `python scripts/{report['command']}`:",
        "",
        markdown(report),
        "",
        f"![requests/s by level and concurrency](results/loadtest-{model}.png)",
    ]  # fmt: skip
    if "paired" in report:
        lines += [
            "",
            "At concurrency 1, request by request, in the same run (`--paired`: "
            f"{report['paired']['protocol']}): the client's wall time and the server's inference and total time "
            "(`timing_ms` of the replies) of each level against `off`; a ratio below 1 is time a client saves:",
            "",
            paired_markdown(report),
        ]
    finer = RESULTS / f"loadtest-{model}-rounds6.json"
    if finer.exists():
        again = json.loads(finer.read_text())
        # a level that saved nothing at concurrency 1 ran level off (its plan at batch 1 is dense): its ratio is noise
        saved = {(c["level"], bool(c["flops_saved_ratio"])) for c in report["cells"] if c["concurrency"] == 1}
        dense = [r for r in report["summary"] if r["concurrency"] == 1 and r["level"] != "off"
                 and (r["level"], True) not in saved]  # fmt: skip
        example = (
            f" (level {dense[0]['level']}, which runs level off itself at batch 1, read {dense[0]['rps_vs_off']:.2f}x "
            "of it)"
            if dense
            else ""
        )
        lines += [
            "",
            "The machine's speed drifts by up to 30% over minutes, more than the levels differ, and a 15 s cell of one "
            "level meets another speed than the next cell of another: two rounds leave the ratios to that drift"
            f"{example}. The same load test in shorter cells and more rounds ({again['protocol']}; "
            f"`python scripts/{again['command']}`; {again.get('note', 'the plans of the same card')}):",
            "",
            markdown(again),
        ]
    return "\n".join(lines)


def graph_mode_section(model: str = REFERENCE) -> str:
    """Each level eager and as a frozen torch.jit trace, and the dense model under torch.compile
    (results/graph-mode-MODEL.json, written by scripts/graph_mode.py)."""
    from graph_mode import markdown  # scripts/graph_mode.py, beside this script

    report = json.loads((RESULTS / f"graph-mode-{model}.json").read_text())
    return "\n".join([
        f"`{model}` ({report['weights']}, BatchNorms {'fused' if report['fuse_batchnorm'] else 'kept'}, "
        f"{report['layout']}, each level at the plan the service runs for the batch size; torch {report['torch']}, "
        f"{report['threads']} threads): {report['protocol']}. `{report['command']}`:",
        "",
        markdown(report),
    ])  # fmt: skip


def patch_size_section(model: str = REFERENCE, name: str = "patch-size") -> str:
    """Candidate tables at a patch size each: calibration drop, saving, traced latency against off
    (results/NAME-MODEL.json, written by scripts/patch_size.py: ``patch-size``, the same tables at patch size 4 and
    8; ``stages-b1``, stages alone and together at batch 1)."""
    from patch_size import markdown  # scripts/patch_size.py, beside this script

    report = json.loads((RESULTS / f"{name}-{model}.json").read_text())
    calibration = report["calibration"]
    return "\n".join([
        f"`{model}` ({report['weights']}, BatchNorms {'fused' if report['fuse_batchnorm'] else 'kept'}, "
        f"{report['layout']}; torch {report['torch']}, {report['threads']} threads). Drop: points of accuracy on the "
        f"first {calibration['images']} images of the calibration split; saving: multiply-adds, overhead included; "
        f"latency: {report['protocol']}. `{report['command']}`:",
        "",
        markdown(report),
    ])  # fmt: skip


def settings_section() -> str:
    """The service's settings as a table: variable, default, accepted values, meaning (service/settings.py)."""
    from service.settings import Settings

    lines = ["| variable | default | accepted | meaning |", "| --- | --- | --- | --- |"]
    for name, field in Settings.model_fields.items():
        lines.append(
            f"| `HASTE_{name.upper()}` | {default_text(field)} | {accepted_text(field, name)} "
            f"| {' '.join((field.description or '').split())} |"
        )
    return "\n".join(lines)


def options_section() -> str:
    """The conversion options as a table: option, default, accepted values, meaning (haste.Options)."""
    from haste.options import OPTIONS, shown

    lines = ["| option | default | accepted | meaning |", "| --- | --- | --- | --- |"]
    for option in OPTIONS:
        where = "" if option.layer else " (`convert` only)"
        lines.append(
            f"| `{option.name}` | `{shown(option.default)}` | {option.accepts.accepted()} | {option.help}{where} |"
        )
    return "\n".join(lines)


def default_text(field) -> str:
    if field.default_factory is not None:
        doc = (field.default_factory.__doc__ or "").strip().rstrip(".")
        return doc.split(": ", 1)[-1] if doc else "computed"
    value = field.default
    if value is None:
        return "unset"
    if isinstance(value, list):
        return "`" + ",".join(map(str, value)) + "`"
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return f"`{value}`"


def accepted_text(field, name: str = "") -> str:
    from pydantic import SecretStr

    annotation = field.annotation
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) is typing.Literal:
        return ", ".join(f"`{a}`" for a in typing.get_args(annotation))
    base = args[0] if args and typing.get_origin(annotation) is not list else annotation
    kind = {int: "integer", float: "number", str: "text", bool: "true or false", SecretStr: "text (secret)"}.get(base)
    if base is Path:
        kind = "file" if name.endswith("_file") else "directory"
    if typing.get_origin(annotation) is list:
        kind = "comma-separated list"
    bounds = []
    for meta in field.metadata:
        for attr, sign in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")):
            if getattr(meta, attr, None) is not None:
                bounds.append(f"{sign} {getattr(meta, attr)}")
    text = " ".join([kind or "", ", ".join(bounds)]).strip()
    return text + (" (empty: unset)" if type(None) in typing.get_args(annotation) else "")


def targets() -> list[tuple[Path, str, typing.Callable[[], str]]]:
    """(file, section name, generator) of every generated section."""
    return [
        (ROOT / "README.md", "levels", levels_section),
        (ROOT / "README.md", "loadtest", loadtest_section),
        (DOCS / "service.md", "loadtest", lambda: loadtest_section().replace("](results/", "](../results/")),
        (DOCS / "results.md", "results", section),
        (DOCS / "engines.md", "graph-mode", graph_mode_section),
        (DOCS / "engines.md", "patch-size", patch_size_section),
        (DOCS / "engines.md", "stages-b1", lambda: patch_size_section(name="stages-b1")),
        (DOCS / "settings.md", "settings", settings_section),
        (DOCS / "library.md", "options", options_section),
    ]


def markers(name: str) -> tuple[str, str]:
    return f"<!-- {name}:begin (generated by scripts/readme_tables.py) -->", f"<!-- {name}:end -->"


def regenerate(text: str, name: str, body: str) -> str:
    """``text`` with the section ``name`` replaced by ``body``; ValueError if its markers are missing."""
    begin, end = markers(name)
    if text.count(begin) != 1 or text.count(end) != 1:
        raise ValueError(f"expected one {begin} and one {end}")
    head, rest = text.split(begin, 1)
    return head + begin + "\n\n" + body.strip("\n") + "\n\n" + end + rest.split(end, 1)[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="exit 1 if a generated section is out of date")
    args = parser.parse_args(argv)
    stale = []
    for path, name, generate in targets():
        text = path.read_text()
        updated = regenerate(text, name, generate())
        if updated == text:
            continue
        stale.append(path)
        if not args.check:
            path.write_text(updated)
            print(f"updated {path.relative_to(ROOT)} ({name})")
    if args.check and stale:
        names = ", ".join(str(p.relative_to(ROOT)) for p in stale)
        print(f"out of date: {names}: run python scripts/readme_tables.py", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
