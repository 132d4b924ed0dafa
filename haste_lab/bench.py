"""``haste bench``: latency of HASTE levels against the dense model, measured as ratios in one run.

Protocol: torch threads fixed; the unconverted model and the converted one at every level run on the
same batch of real images, interleaved (one forward of each per round, the order rotated every round)
after warm-up; medians, min and max over rounds. Reports latency, images/s, FLOPs saving (overhead
included, from ``haste.profile``) and the latency ratio level / dense beside the FLOPs ratio, and the
issue's bar ``ratio <= 1 - 0.5 * saving``, and the paired ratios: the median over rounds of a variant's time
over dense's (and over off's) in the same round, with a 95% interval (``paired_ratio``). Each level runs as
the service runs it: a batch whose plan for the engine runs every layer dense runs at level off
(``served_level``). ``--stages`` adds where the CPU kernel's time goes.
On CUDA (``--device cuda``) every timed forward is bracketed by ``torch.cuda.synchronize()``, so it counts
the kernels' time, not only their launch.
"""

from __future__ import annotations

import copy
import json
import platform
import random
import statistics
import time
from pathlib import Path

import torch

from haste import engine
from haste.cli import non_negative_int, positive_int
from haste.convert import conversion, convert
from haste.levels import LEVELS, compression
from haste.module import HasteConv2d
from haste.plans import runs_dense
from haste.profile import profile

from . import baseline, layout
from .interleaved import interleaved_times, paired_ratio, ratio_text, seconds
from .layer_times import forward_at, layer_inputs, layer_times
from .layout import in_layout

DEFAULT_MODELS = ("fmnist-resnet18", "fmnist-resnet34", "fmnist-vgg16_bn", "resnet50")


def _real_images(card: dict, batch: int) -> tuple[torch.Tensor, str]:
    """A batch of real images preprocessed for the model: Fashion-MNIST test images for Fashion-MNIST
    models, scikit-image's sample photos otherwise (random pixels when scikit-image is not installed: the
    source says which)."""
    from haste.preprocess import InputSpec, preprocess

    spec = InputSpec.from_dict({k: card["input"][k] for k in ("mode", "resize", "crop", "pad", "mean", "std")})
    if card.get("dataset") == "fashion-mnist":
        from .data import fashion_mnist
        from .train import inputs

        images, _ = fashion_mnist("test")
        return inputs(images[:batch], spec), "Fashion-MNIST test images"
    from PIL import Image

    try:
        from skimage import data as samples
    except ImportError:  # e.g. a GPU host with only the serving dependencies
        size = card["input"]["crop"] or card["input"]["resize"]
        return torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(0)), "random pixels"

    photos = [samples.astronaut(), samples.coffee(), samples.chelsea(), samples.rocket(), samples.hubble_deep_field()]
    tensors = [preprocess(Image.fromarray(photos[i % len(photos)]), spec) for i in range(batch)]
    return torch.stack(tensors), "scikit-image sample photos"


def load_model(name: str) -> tuple[torch.nn.Module, dict, str]:
    """(model, card, weights note). Reference models from haste.zoo; torchvision names with their
    ImageNet weights when cached, else randomly initialised (timing does not depend on the weights,
    bucket counts do: the note says which)."""
    from haste import zoo

    if name in zoo.names():
        model = zoo.load(name)
        return model, model.haste_card, "trained (haste.zoo)"
    import torchvision

    try:
        model = zoo.load(name if ":" in name else f"{name}:IMAGENET1K_V2")
        return model, model.haste_card, "ImageNet (torchvision cache)"
    except Exception as exc:  # offline without a cached file
        model = torchvision.models.get_model(name.split(":")[0]).eval()
        card = {
            "name": name,
            "dataset": "imagenet",
            "input": {"mode": "RGB", "resize": 232, "crop": 224, "pad": 0,
                      "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]},
        }  # fmt: skip
        return model, card, f"random init (no cached ImageNet weights: {type(exc).__name__})"


def served_level(model: torch.nn.Module, x: torch.Tensor, level: str) -> str:
    """The level the service runs the batch ``x`` at (``service.served.ServedModel.run``): off where ``level``'s plan
    for this batch size on the engine that runs ``x`` has every layer dense, else ``level``."""
    record = conversion(model)
    layer = next((m for m in model.modules() if isinstance(m, HasteConv2d)), None)
    if record is None or layer is None:
        return level
    with torch.inference_mode():  # the engine that runs a served batch (outside it, gradients would pick reference)
        name = engine.choose(x, layer.conv.weight)
    return "off" if runs_dense(record.plans, name, level, len(x)) else level


def bench_model(
    name: str,
    *,
    batches=(1, 32),
    levels=("off", "low", "medium", "high"),
    rounds: int = 15,
    warmup: int = 3,
    stages: bool = False,
    layers: bool = False,
    device: str = "cpu",
    layout: str = "channels_last",
    fuse_batchnorm: bool = True,
    graph_mode: bool = False,
    repeats: int = 1,
    log=print,
) -> dict:
    """Benchmark one model; see the module docstring. ``layers``: also time every HASTE layer alone, dense and at
    each level (``haste_lab.layer_times``; CPU only, as ``stages``). ``device``: cpu or cuda. ``layout``: the memory
    layout of both models (``haste_lab.layout``). ``fuse_batchnorm``: convert the model with its BatchNorms fused
    (``haste_lab.baseline``), so that level off is the fused dense model; ``dense`` is the model as trained either
    way. ``graph_mode``: time the dense model and every level as torch.jit traces (``haste.trace``, CPU), as the
    service runs them (``HASTE_GRAPH_MODE``). ``repeats``: time every batch size that many times, one after the other
    (batch sizes in turn, each repeat a new interleaved run of ``rounds`` rounds after ``warmup``): the rows pool
    the rounds of all repeats, and each paired ratio also has its median per repeat (``repeats``), which shows
    how much the ratio itself moves between runs on a shared machine, beyond its interval within one run."""
    model, card, weights = load_model(name)
    dense = in_layout(copy.deepcopy(model).eval().to(device), layout)
    convert(baseline.prepared(model, fuse_batchnorm))
    in_layout(model.to(device), layout)
    timed = seconds if torch.device(device).type != "cuda" else _cuda_seconds
    result = {"model": name, "weights": weights, "device": device, "layout": layout,
              "fuse_batchnorm": fuse_batchnorm, "graph_mode": graph_mode, "batches": []}  # fmt: skip
    inputs, timed_variants, runs = {}, {}, {}  # batch -> (images, source), variants; (repeat, batch) -> times
    for batch in batches:
        x, source = _real_images(card, batch)
        x = x.to(device)
        inputs[batch] = (x, source)
        if graph_mode:
            timed_variants[batch] = _traced_variants(dense, model, x, levels)
            continue
        variants = {"dense": lambda x=x: dense(x)}
        for level in levels:
            variants[level] = lambda run=served_level(model, x, level), x=x: forward_at(model, x, run)
        timed_variants[batch] = variants
    for repeat in range(repeats):
        for batch in batches:
            with torch.inference_mode():
                # a new order every round: a rotation would keep each variant's predecessor
                runs[repeat, batch] = interleaved_times(
                    timed_variants[batch], rounds=rounds, warmup=warmup, rng=random.Random(repeat), timed=timed
                )
    for batch in batches:
        x, source = inputs[batch]
        per_repeat = [runs[repeat, batch] for repeat in range(repeats)]
        times = {key: [t for run in per_repeat for t in run[key]] for key in per_repeat[0]}
        with torch.inference_mode():
            savings = {}
            for level in levels:
                with profile(model) as report, compression(served_level(model, x, level)):
                    model(x)
                savings[level] = report.saving
            stage_split = _stages(model, x, levels) if stages else None
        per_layer = {
            level: layer_times(model, x, level, rounds=rounds, warmup=warmup) for level in levels if level != "off"
        } if layers else None  # fmt: skip
        base = statistics.median(times["dense"])
        rows = []
        for key, ts in times.items():
            med = statistics.median(ts)
            saving = 0.0 if key == "dense" else savings[key]
            rows.append({
                "variant": key,
                "hyperplanes": None if key == "dense" else _level_hyperplanes(model, key),
                "median_ms": med * 1e3, "min_ms": min(ts) * 1e3, "max_ms": max(ts) * 1e3,
                "images_per_s": batch / med, "flops_saving": saving, "latency_ratio": med / base,
                "flops_ratio": 1.0 - saving, "bar": 1.0 - 0.5 * saving,
                "meets_bar": key in ("dense", "off") or med / base <= 1.0 - 0.5 * saving,
                "paired_ratio": paired_ratio(ts, times["dense"]),
                "paired_vs_off": paired_ratio(ts, times["off"]) if "off" in times else None,
                "repeats": [{
                    "paired_ratio": paired_ratio(run[key], run["dense"])["median"],
                    "paired_vs_off": paired_ratio(run[key], run["off"])["median"] if "off" in run else None,
                } for run in per_repeat],
            })  # fmt: skip
        entry = {"batch": batch, "input": list(x.shape[1:]), "images": source, "rows": rows}
        if stage_split:
            entry["stages"] = stage_split
        if per_layer:
            entry["layers"] = per_layer
        result["batches"].append(entry)
        for row in rows:
            log(f"{name} b={batch} {row['variant']:>6}: {row['median_ms']:8.2f} ms (min {row['min_ms']:.2f}, max "
                f"{row['max_ms']:.2f})  {row['images_per_s']:8.1f} img/s  saving {row['flops_saving']:.3f}  "
                f"ratio {row['latency_ratio']:.3f} (bar {row['bar']:.3f})  paired {ratio_text(row['paired_ratio'])}"
                + (f", vs off {ratio_text(row['paired_vs_off'])}" if row["paired_vs_off"] else "")
                + (f"; per repeat {', '.join(_repeat(r) for r in row['repeats'])}" if repeats > 1 else ""))  # fmt: skip
    return result


def _traced_variants(dense: torch.nn.Module, model: torch.nn.Module, x: torch.Tensor, levels) -> dict:
    """The dense model and ``model`` at every level, each as a torch.jit trace on ``x`` (a level at the plan the
    service runs for this batch size), as the service runs them in graph mode."""
    from haste.trace import trace

    traced_dense = trace(dense, x)  # a model without HASTE layers traces as it is
    variants = {"dense": lambda: traced_dense(x)}
    for level in levels:
        variants[level] = lambda traced=trace(model, x, served_level(model, x, level)): traced(x)
    return variants


def _repeat(medians: dict) -> str:
    off = medians["paired_vs_off"]
    return f"{medians['paired_ratio']:.3f}" + (f" / {off:.3f}" if off is not None else "")


def _cuda_seconds(fn) -> float:
    """Wall-clock seconds of one call of ``fn`` with the CUDA queue drained before and after."""
    torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    return time.perf_counter() - start


def _level_hyperplanes(model, level: str):
    from haste.module import HasteConv2d

    values = {m.levels[level] for m in model.modules() if isinstance(m, HasteConv2d)}
    return values.pop() if len(values) == 1 else "per-layer"


def reference_stages(model, x, level: str) -> dict:
    """Milliseconds per forward in each stage of the reference implementation (haste/functional.py),
    summed over the HASTE layers: the "before" of the fused kernel. Runs the same functions in order
    with a timer around each, on every layer's real input."""
    import torch.nn.functional as F

    from haste.buckets import bucketize
    from haste.lsh import hash_codes
    from haste.merge import merge_filters, merge_inputs
    from haste.tiles import assemble, geometry, regions

    inputs = layer_inputs(model, x, level)
    totals = dict.fromkeys(("region", "hash", "bucket", "merge_inputs", "merge_filters", "conv", "assemble"), 0.0)
    for layer, inp in inputs.items():
        conv, hyperplanes = layer.conv, layer.levels[level]
        mark = time.perf_counter()

        def lap(key, mark_ref=[mark]):  # noqa: B006 - a running timer
            now = time.perf_counter()
            totals[key] += (now - mark_ref[0]) * 1e3
            mark_ref[0] = now

        geo = geometry(tuple(inp.shape[2:]), conv.kernel_size, conv.stride, layer.padding, layer.patch_size)
        reg = regions(inp, geo, layer.padding)
        lap("region")
        codes = hash_codes(reg, layer.planes[:hyperplanes])
        lap("hash")
        buckets = bucketize(codes)
        width = int(buckets.groups.max())
        lap("bucket")
        merged_x = merge_inputs(reg, buckets.index, width)
        lap("merge_inputs")
        merged_w = merge_filters(conv.weight, buckets.index, width)
        lap("merge_filters")
        b = reg.shape[0]
        out = F.conv2d(
            merged_x.reshape(1, b * width, *geo.region),
            merged_w.reshape(b * conv.out_channels, width, *conv.kernel_size),
            stride=conv.stride,
            groups=b,
        )
        lap("conv")
        assemble(out.reshape(b, conv.out_channels, geo.patch, geo.patch), geo, inp.shape[0])
        lap("assemble")
    return totals


def _stages(model, x, levels) -> dict:
    """Milliseconds per forward spent in each stage of the CPU kernel, per level (profiling build), and
    of the reference implementation at the same level."""
    kernel = engine.profiling_kernel()
    out = {}
    with engine.using_kernel(kernel):
        for level in levels:
            if level == "off":
                continue
            forward_at(model, x, level)
            kernel.stage_seconds(True)
            n = 5
            for _ in range(n):
                forward_at(model, x, level)
            out[level] = {
                "fused_cpu_kernel_ms": {k: v / n * 1e3 for k, v in zip(engine.STAGES, kernel.stage_seconds(True))},
                "reference_ms": reference_stages(model, x, level),
            }
    return out


def run(
    models,
    *,
    batches,
    levels,
    rounds,
    warmup,
    threads,
    stages,
    out: Path | None,
    layers=False,
    device="cpu",
    layout="channels_last",
    fuse_batchnorm=True,
    graph_mode=False,
    repeats=1,
    log=print,
) -> dict:
    torch.set_num_threads(threads)
    cuda = torch.device(device).type == "cuda"
    if cuda and (stages or layers or graph_mode):
        raise ValueError("--stages, --layers and --graph-mode run the CPU kernel: use them with --device cpu")
    if not cuda:
        engine.cpu_kernel_available()
    norms = "BatchNorms kept"
    if fuse_batchnorm:
        norms = "BatchNorms fused before conversion (off: the fused dense model; dense: as trained)"
    report = {
        "protocol": f"torch threads {threads}; models in the {layout} layout; {norms}; {warmup} warm-up rounds, "
        f"then {rounds} rounds of one forward per variant{' (each a torch.jit trace)' if graph_mode else ''}, "
        "interleaved in a new random order each round (seed: the repeat's number); medians, min, max"
        + (f"; {repeats} repeats, the batch sizes in turn: rounds pooled, paired ratios also per repeat"
           if repeats > 1 else ""),
        "machine": {"cpu": platform.processor() or platform.machine(), "threads": threads, "torch": torch.__version__,
                    "engine": "cpu" if engine.cpu_kernel_state() == "built" else f"reference ({engine.unavailable})"},
        "levels": dict(LEVELS),
        "models": [bench_model(m, batches=batches, levels=levels, rounds=rounds, warmup=warmup, stages=stages,
                               layers=layers, device=device, layout=layout,
                               fuse_batchnorm=fuse_batchnorm, graph_mode=graph_mode, repeats=repeats, log=log)
                   for m in models],
    }  # fmt: skip
    if cuda:
        report["machine"].update(device=device, gpu=torch.cuda.get_device_name(),
                                 engine="triton" if engine.triton_failed is None and engine.triton_available()
                                 else f"reference ({engine.triton_failed or 'Triton is not installed'})")  # fmt: skip
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2) + "\n")
        log(f"wrote {out}")
    return report


def markdown(report: dict) -> str:
    """The README table of a bench report."""
    lines = [
        "| model | batch | variant | median ms | img/s | FLOPs saving | latency ratio | bar (1 - saving/2) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for m in report["models"]:
        for b in m["batches"]:
            for r in b["rows"]:
                ok = "" if r["variant"] in ("dense", "off") else (" ✓" if r["meets_bar"] else " ✗")
                lines.append(
                    f"| {m['model']} | {b['batch']} | {r['variant']} | {r['median_ms']:.2f} | {r['images_per_s']:.1f} "
                    f"| {100 * r['flops_saving']:.1f}% | {r['latency_ratio']:.3f}{ok} | {r['bar']:.3f} |"
                )
    tables = [t for t in (stage_table(report), layer_group_table(report)) if t]
    return "\n".join([*lines, *(line for t in tables for line in ["", *t])])


def stage_table(report: dict) -> list[str]:
    """Where the CPU kernel's time goes (a report made with ``--stages``): thread milliseconds per forward in
    each per-tile stage and their total, per model, batch and level (timers of the profiling build), then the
    calling thread's wall milliseconds before and after the tile loop where the report has them."""
    rows = [(m, b, level, t["fused_cpu_kernel_ms"]) for m in report["models"] for b in m["batches"]
            for level, t in (b.get("stages") or {}).items()]  # fmt: skip
    if not rows:
        return []
    wall = [s for s in ("prepare", "finish") if any(s in ms for *_, ms in rows)]
    lines = [
        "| model | batch | level | "
        + " | ".join(engine.TILE_STAGES)
        + " | total (thread ms per forward) |"
        + "".join(f" {s} (wall ms) |" for s in wall),
        "|---|---|---|" + "---|" * (len(engine.TILE_STAGES) + 1 + len(wall)),
    ]
    for m, b, level, ms in rows:
        cells = " | ".join(f"{ms.get(stage, 0.0):.2f}" for stage in engine.TILE_STAGES)
        total = sum(ms.get(stage, 0.0) for stage in engine.TILE_STAGES)
        extra = "".join(f" {ms.get(s, 0.0):.2f} |" for s in wall)
        lines.append(f"| {m['model']} | {b['batch']} | {level} | {cells} | {total:.2f} |{extra}")
    return lines


def layer_group_table(report: dict) -> list[str]:
    """The per-layer times of a report (``--layers``) summed by stage of the network (the layer name's first
    part: layer1, layer2, ... or features): dense and HASTE ms, their ratio, the share of the model's FLOPs
    the stage saves and its share of the dense model's time it saves."""
    lines = []
    for m in report["models"]:
        for b in m["batches"]:
            for level, t in b.get("layers", {}).items():
                if not lines:
                    lines = [
                        "| model | batch | level | stage | convs | dense ms | HASTE ms | ratio "
                        "| FLOPs saved (% of model) | time saved (% of model) |",
                        "|---|---|---|---|---|---|---|---|---|---|",
                    ]
                groups: dict[str, list[dict]] = {}
                for row in t["layers"]:
                    groups.setdefault(row["layer"].split(".")[0], []).append(row)
                for name, rows in groups.items():
                    d, h = sum(r["dense_ms"] for r in rows), sum(r["haste_ms"] for r in rows)
                    flops, time_saved = sum(r["model_flops_saved"] for r in rows), (d - h) / t["model_dense_ms"]
                    lines.append(
                        f"| {m['model']} | {b['batch']} | {level} | {name} | {len(rows)} | {d:.2f} | {h:.2f} "
                        f"| {h / d:.2f} | {100 * flops:.1f} | {100 * time_saved:+.1f} |"
                    )
    return lines


def add_command(sub) -> None:
    """Register ``haste bench``."""
    p = sub.add_parser(
        "bench",
        help="latency of every level against the dense model (ratios in one run)",
        description="Time the unconverted model and the converted one at each level on the same batch of real "
        "images, interleaved (order rotated every round) after warm-up; report median / min / max ms, images/s, "
        "the FLOPs saving (overhead included) and the latency ratio to dense beside the bar 1 - saving/2.",
    )
    p.add_argument(
        "--models",
        nargs="+",
        default=list(DEFAULT_MODELS),
        help="reference models (haste.zoo.names()) or torchvision classifiers as arch or arch:WEIGHTS "
        f"(default {' '.join(DEFAULT_MODELS)})",
    )
    p.add_argument(
        "--batch", nargs="+", type=positive_int, default=[1, 32], help="batch sizes, one table each (default 1 32)"
    )
    p.add_argument(
        "--levels",
        nargs="+",
        default=["off", "low", "medium", "high"],
        choices=list(LEVELS),
        help="levels timed beside the unconverted model (default: all)",
    )
    p.add_argument(
        "--rounds", type=positive_int, default=15, help="timed rounds, one forward per variant each (default 15)"
    )
    p.add_argument("--warmup", type=non_negative_int, default=3, help="untimed rounds first (default 3)")
    p.add_argument(
        "--repeats",
        type=positive_int,
        default=1,
        help="time every batch size this many times, the batch sizes in turn (default 1): rounds pooled, and the "
        "paired ratios also per repeat, to show how much they move between runs",
    )
    p.add_argument("--threads", type=positive_int, default=2, help="torch threads (default 2)")
    p.add_argument("--stages", action="store_true", help="also profile the CPU kernel's stages")
    p.add_argument("--layers", action="store_true", help="also time every HASTE layer alone, dense and per level")
    p.add_argument(
        "--device",
        default="cpu",
        choices=["cpu", "cuda"],
        help="where the models run (default cpu; cuda: the Triton engine)",
    )
    p.add_argument(
        "--graph-mode",
        action="store_true",
        help="time the dense model and every level as torch.jit traces (haste.trace), as the service runs them "
        "(HASTE_GRAPH_MODE); CPU only",
    )
    layout.add_argument(p)
    baseline.add_argument(p)
    p.add_argument("--json", dest="out", type=Path, help="write the report to this JSON file")
    p.add_argument("--markdown", type=Path, help="print the README table of a report written with --json, and exit")
    p.set_defaults(func=_cli)


def check_model_name(name: str) -> None:
    """Raise ValueError, saying what is accepted, unless ``name`` is a model ``load_model`` can load."""
    from haste import zoo
    from haste.zoo import torchvision as tv

    if name in zoo.names():
        return
    if tv.is_torchvision_name(name):
        if ":" in name:
            tv.weights(name)  # raises ValueError naming the accepted weights
        return
    raise ValueError(
        f"unknown model {name!r}; accepted: a reference model ({', '.join(zoo.names())}) or a torchvision "
        "classifier as arch or arch:WEIGHTS (e.g. resnet50 or resnet50:IMAGENET1K_V2)"
    )


def read_report(path: Path) -> dict:
    """A report written by ``haste bench --json``; ValueError if ``path`` holds something else."""
    try:
        report = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path} is not a haste bench report (JSON written by --json): {exc}") from None
    if not isinstance(report, dict) or not isinstance(report.get("models"), list):
        raise ValueError(f"{path} is not a haste bench report (JSON written by --json): it has no list 'models'")
    return report


def _cli(args) -> int:
    if args.markdown:
        print(markdown(read_report(args.markdown)))
        return 0
    for name in args.models:
        check_model_name(name)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("haste bench: error: --device cuda but CUDA is not available")
    run(args.models, batches=args.batch, levels=args.levels, rounds=args.rounds, warmup=args.warmup,
        threads=args.threads, stages=args.stages, layers=args.layers, device=args.device, layout=args.layout,
        fuse_batchnorm=args.fuse_batchnorm, graph_mode=args.graph_mode, repeats=args.repeats,
        out=args.out)  # fmt: skip
    return 0
