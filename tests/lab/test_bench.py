"""haste bench: the report's structure and consistency (never its timings)."""

import copy
import json

import pytest
import torch

from haste import engine, zoo
from haste.cli import main
from haste.convert import conversion, convert
from haste.module import HasteConv2d
from haste_lab.bench import served_level
from haste_lab.interleaved import paired_ratio

pytestmark = pytest.mark.skipif(
    not zoo.paths("fmnist-resnet18")[0].is_file(), reason="fmnist-resnet18 weights not trained yet"
)


def test_bench_report(tmp_path, capsys):
    out = tmp_path / "bench.json"
    argv = ["bench", "--models", "fmnist-resnet18", "--batch", "2", "--rounds", "2", "--warmup", "1",
            "--threads", "1", "--stages", "--json", str(out)]  # fmt: skip
    assert main(argv) == 0
    report = json.loads(out.read_text())
    (model,) = report["models"]
    (batch,) = model["batches"]
    rows = {r["variant"]: r for r in batch["rows"]}
    assert set(rows) == {"dense", "off", "low", "medium", "high"}
    assert rows["dense"]["latency_ratio"] == 1.0 and rows["off"]["flops_saving"] == 0.0
    assert 0 < rows["low"]["flops_saving"] < rows["medium"]["flops_saving"] < rows["high"]["flops_saving"] < 1
    for r in rows.values():
        assert r["min_ms"] <= r["median_ms"] <= r["max_ms"]
        assert r["images_per_s"] == pytest.approx(2 / (r["median_ms"] / 1e3))
        assert r["bar"] == pytest.approx(1 - 0.5 * r["flops_saving"])
    stages = batch["stages"]["high"]
    assert set(stages["fused_cpu_kernel_ms"]) >= {"hash", "bucket", "merge", "gemm"}
    assert set(stages["reference_ms"]) >= {"hash", "bucket", "merge_filters", "conv"}
    capsys.readouterr()
    assert main(["bench", "--markdown", str(out)]) == 0
    table = capsys.readouterr().out
    assert table.count("| fmnist-resnet18 | 2 | ") == 5 + 3  # a row per variant, a stage row per level
    for level in ("low", "medium", "high"):
        ms = batch["stages"][level]["fused_cpu_kernel_ms"]
        assert f"| fmnist-resnet18 | 2 | {level} | {ms['region']:.2f} | {ms['hash']:.2f} |" in table
        row = table.split(f"| fmnist-resnet18 | 2 | {level} | {ms['region']:.2f}")[1].split("\n")[0]
        tile_total = sum(ms.get(stage, 0.0) for stage in engine.TILE_STAGES)
        wall = "".join(f" {ms[s]:.2f} |" for s in ("prepare", "finish") if s in ms)
        assert row.endswith(f"| {tile_total:.2f} |{wall}")


def test_bench_layers(tmp_path, capsys):
    """--layers: every HASTE layer timed dense and at the level, its saved FLOPs adding up to the model's."""
    out = tmp_path / "bench.json"
    argv = ["bench", "--models", "fmnist-resnet18", "--batch", "2", "--levels", "high", "--rounds", "2",
            "--warmup", "1", "--threads", "1", "--layers", "--json", str(out)]  # fmt: skip
    assert main(argv) == 0
    (model,) = json.loads(out.read_text())["models"]
    (batch,) = model["batches"]
    per_layer = batch["layers"]["high"]
    converted = convert(zoo.load("fmnist-resnet18"))
    haste_layers = [m.name for m in converted.modules() if isinstance(m, HasteConv2d) and m.levels["high"] > 0]
    assert [r["layer"] for r in per_layer["layers"]] == haste_layers
    for r in per_layer["layers"]:
        assert r["dense_ms"] > 0 and r["haste_ms"] > 0 and r["ratio"] == pytest.approx(r["haste_ms"] / r["dense_ms"])
        assert r["margin"] == pytest.approx(r["model_time_saved"] - r["model_flops_saved"] / 2)
    saved = sum(r["model_flops_saved"] for r in per_layer["layers"])
    assert saved == pytest.approx(per_layer["model_saving"], rel=1e-6)
    rows = {r["variant"]: r for r in batch["rows"]}
    assert per_layer["model_saving"] == pytest.approx(rows["high"]["flops_saving"])
    capsys.readouterr()
    assert main(["bench", "--markdown", str(out)]) == 0
    table = capsys.readouterr().out
    assert "| fmnist-resnet18 | 2 | high | layer1 |" in table and "| fmnist-resnet18 | 2 | high | layer4 |" in table


@pytest.mark.parametrize("layout", ["channels_last", "nchw"])
def test_bench_times_the_models_in_the_layout_asked_for(tmp_path, monkeypatch, layout):
    """--layout: both the dense and the converted model hold their 3x3 conv weights in that layout while timed
    (seen by a forward pre-hook on every conv), and the report says so."""
    import torch

    seen: list[bool] = []
    original = torch.nn.Conv2d._conv_forward

    def spy(self, x, weight, bias):
        if weight.shape[1] > 1 and weight.shape[2] == 3:
            seen.append(weight.is_contiguous(memory_format=torch.channels_last) and not weight.is_contiguous())
        return original(self, x, weight, bias)

    monkeypatch.setattr(torch.nn.Conv2d, "_conv_forward", spy)
    out = tmp_path / "bench.json"
    argv = ["bench", "--models", "fmnist-resnet18", "--batch", "1", "--levels", "off", "--rounds", "1",
            "--warmup", "0", "--threads", "1", "--layout", layout, "--json", str(out)]  # fmt: skip
    assert main(argv) == 0
    report = json.loads(out.read_text())
    assert report["models"][0]["layout"] == layout and f"the {layout} layout" in report["protocol"]
    assert seen and set(seen) == {layout == "channels_last"}


def test_layout_bench_report(tmp_path):
    """scripts/layout_bench.py: four variants per batch, ratios to the NCHW dense model."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "scripts" / "layout_bench.py"
    spec = importlib.util.spec_from_file_location("layout_bench", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "layout.json"
    assert module.main(["--model", "fmnist-resnet18", "--batch", "1", "2", "--rounds", "2", "--warmup", "0",
                        "--threads", "1", "--out", str(out)]) == 0  # fmt: skip
    report = json.loads(out.read_text())
    assert [b["batch"] for b in report["batches"]] == [1, 2]
    for entry in report["batches"]:
        variants = entry["variants"]
        assert set(variants) == {"dense nchw", "dense channels_last", "high nchw", "high channels_last"}
        assert variants["dense nchw"]["ratio"] == 1.0
        for row in variants.values():
            assert row["median_ms"] > 0
            assert row["ratio"] == pytest.approx(row["median_ms"] / variants["dense nchw"]["median_ms"])


def test_kernel_profile_report(tmp_path):
    """scripts/kernel_profile.py: per HASTE layer the dense conv, the layer and the kernel timed, and the
    kernel's stages from the profiling build (the tile loop's stages nonzero, python_us = layer - kernel)."""
    module = _script("kernel_profile")
    out = tmp_path / "profile.json"
    layers = ["layer1.0.conv1", "layer4.1.conv2"]
    assert module.main(["--model", "fmnist-resnet18", "--batch", "2", "--layers", *layers, "--rounds", "3",
                        "--warmup", "1", "--threads", "1", "--out", str(out)]) == 0  # fmt: skip
    report = json.loads(out.read_text())
    (entry,) = report["batches"]
    assert entry["batch"] == 2 and [r["layer"] for r in entry["layers"]] == layers
    for row in entry["layers"]:
        assert row["dense_us"] > 0 and row["kernel_us"] > 0 and row["hyperplanes"] > 0
        assert row["python_us"] == pytest.approx(row["layer_us"] - row["kernel_us"])
        assert set(row["stages_us"]) == set(engine.STAGES)
        assert all(row["stages_us"][s] > 0 for s in ("hash", "gemm", "prepare", "loop"))


def test_kernel_profile_at_uniform_hyperplanes_counts_fewer_buckets_with_fewer_planes(tmp_path):
    """scripts/kernel_profile.py --hyperplanes: one entry per setting, every layer at it, with its mean buckets
    per tile (fewer hyperplanes, fewer buckets: more channels share a code)."""
    module = _script("kernel_profile")
    out = tmp_path / "profile.json"
    argv = ["--model", "fmnist-resnet18", "--batch", "1", "--layers", "layer4.1.conv2", "--hyperplanes", "16", "4",
            "--rounds", "2", "--warmup", "1", "--threads", "1", "--out", str(out)]  # fmt: skip
    assert module.main(argv) == 0
    report = json.loads(out.read_text())
    many, few = report["batches"]
    assert (many["hyperplanes"], few["hyperplanes"]) == (16, 4) and report["hyperplanes"] == [16, 4]
    (row16,), (row4,) = many["layers"], few["layers"]
    assert (row16["hyperplanes"], row4["hyperplanes"]) == (16, 4)
    assert 1 <= row4["mean_buckets"] < row16["mean_buckets"] <= 512


def _script(name: str):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "scripts" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_kernel_ab_timing(tmp_path):
    """scripts/kernel_ab.py: dense and each kernel build timed on the whole model at the level, medians; the same
    source as the baseline is refused before anything is built."""
    import random

    from haste_lab.bench import _real_images, load_model

    module = _script("kernel_ab")
    assert engine.cpu_kernel_available()
    model, card, _ = load_model("fmnist-resnet18")
    convert(model, plans={})
    dense = load_model("fmnist-resnet18")[0].eval()
    x, _ = _real_images(card, 1)
    kernels = {"baseline": engine._module, "candidate": engine.profiling_kernel()}
    with torch.inference_mode():
        ms = module._time(model.eval(), dense, x, "high", kernels, rounds=3, warmup=1, rng=random.Random(0))
    assert set(ms) == {"dense", "baseline", "candidate"} and all(v > 0 for v in ms.values())
    if module.SOURCE.read_text() == _git_show_head(module.SOURCE):
        assert module.main(["--baseline", "HEAD", "--out", str(tmp_path / "ab.json")]) == 1
        assert not (tmp_path / "ab.json").exists()


def _git_show_head(source) -> str | None:
    import subprocess

    rel = source.relative_to(source.parents[2]).as_posix()
    done = subprocess.run(["git", "show", f"HEAD:{rel}"], cwd=source.parents[2], capture_output=True, text=True)
    return done.stdout if done.returncode == 0 else None


def test_paired_ratio_is_the_median_of_per_round_ratios_with_an_order_statistic_interval():
    base = [1.0 + 0.5 * (r % 3) for r in range(101)]  # drift that a ratio of medians would not cancel
    times = [b * (0.8 + 0.001 * r) for r, b in enumerate(base)]  # per-round ratios 0.800 .. 0.900
    paired = paired_ratio(times, base)
    assert paired["median"] == pytest.approx(0.85)
    assert paired["ci95"] == pytest.approx([0.8 + 0.001 * 40, 0.8 + 0.001 * 61])
    with pytest.raises(ValueError):
        paired_ratio(times, base[:-1])


def test_a_level_runs_as_the_service_runs_it():
    model = zoo.load("fmnist-resnet34") if zoo.paths("fmnist-resnet34")[0].is_file() else None
    if model is None:
        pytest.skip("fmnist-resnet34 weights not trained yet")
    convert(model)
    x = torch.zeros(1, 1, 32, 32)
    plans = conversion(model).plans["cpu"]
    dense_at_1 = {level for level, entries in plans.items() if not any(entries[0]["levels"].values())}
    for level in ("off", "low", "medium", "high"):
        expected = "off" if level == "off" or (engine.cpu_kernel_available() and level in dense_at_1) else level
        assert served_level(model, x, level) == expected


@pytest.mark.parametrize("fuse", [True, False])
def test_bench_converts_the_model_with_its_batchnorms_fused_unless_told_not(tmp_path, monkeypatch, fuse):
    """--fuse-batchnorm (the default, as the service): level off is the dense model with its BatchNorms fused into
    the convs (none left in the converted model); --no-fuse-batchnorm keeps them. The report says which."""
    import haste_lab.bench as bench

    converted = []
    original = bench.convert
    monkeypatch.setattr(bench, "convert", lambda model, **kw: converted.append(model) or original(model, **kw))
    out = tmp_path / "bench.json"
    flag = "--fuse-batchnorm" if fuse else "--no-fuse-batchnorm"
    argv = ["bench", "--models", "fmnist-resnet18", "--batch", "1", "--levels", "off", "--rounds", "1",
            "--warmup", "0", "--threads", "1", flag, "--json", str(out)]  # fmt: skip
    assert main(argv) == 0
    (model,) = converted
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert (not norms) is fuse and conversion(model) is not None
    report = json.loads(out.read_text())
    assert report["models"][0]["fuse_batchnorm"] is fuse
    assert ("BatchNorms fused before conversion" in report["protocol"]) is fuse


def test_bench_in_graph_mode_times_traces_with_the_eager_savings(tmp_path):
    """--graph-mode: every variant a torch.jit trace (haste.trace for the levels), the FLOPs savings those of the
    eager levels; the report says so."""
    if not engine.cpu_kernel_available():
        pytest.skip(f"CPU kernel: {engine.unavailable}")
    reports = {}
    for graph in (True, False):
        out = tmp_path / f"bench-{graph}.json"
        argv = ["bench", "--models", "fmnist-resnet18", "--batch", "2", "--rounds", "2", "--warmup", "1",
                "--threads", "1", "--json", str(out)] + (["--graph-mode"] if graph else [])  # fmt: skip
        assert main(argv) == 0
        reports[graph] = json.loads(out.read_text())
    for graph, report in reports.items():
        assert report["models"][0]["graph_mode"] is graph
        assert ("each a torch.jit trace" in report["protocol"]) is graph
    savings = [
        {r["variant"]: r["flops_saving"] for r in report["models"][0]["batches"][0]["rows"]}
        for report in reports.values()
    ]
    assert savings[0] == savings[1] and savings[0]["high"] > 0
    with pytest.raises(ValueError, match="--graph-mode run the CPU kernel: use them with --device cpu"):
        from haste_lab.bench import run

        run(["fmnist-resnet18"], batches=[1], levels=["off"], rounds=1, warmup=0, threads=1, stages=False,
            out=None, device="cuda", graph_mode=True)  # fmt: skip


def test_bench_repeats_pool_the_rounds_and_keep_each_repeats_paired_ratios(tmp_path, monkeypatch):
    """--repeats N: every batch size timed N times, the batch sizes in turn; the rows pool the rounds, and every
    paired ratio also has its median per repeat (the pooled median lies within the repeats' range)."""
    import haste_lab.bench as bench

    calls = []
    original = bench.interleaved_times
    monkeypatch.setattr(
        bench, "interleaved_times", lambda variants, **kw: calls.append(kw["rounds"]) or original(variants, **kw)
    )
    out = tmp_path / "bench.json"
    argv = ["bench", "--models", "fmnist-resnet18", "--batch", "1", "2", "--levels", "off", "high", "--rounds", "3",
            "--warmup", "0", "--threads", "1", "--repeats", "3", "--json", str(out)]  # fmt: skip
    assert main(argv) == 0
    assert calls == [3] * 6  # 3 repeats x 2 batch sizes
    report = json.loads(out.read_text())
    assert "3 repeats" in report["protocol"]
    for entry in report["models"][0]["batches"]:
        for row in entry["rows"]:
            assert len(row["repeats"]) == 3
            medians = [r["paired_vs_off"] for r in row["repeats"]]
            assert min(medians) <= row["paired_vs_off"]["median"] <= max(medians)
            if row["variant"] == "off":
                assert medians == [1.0, 1.0, 1.0]
    with pytest.raises(SystemExit):
        main(["bench", "--models", "fmnist-resnet18", "--repeats", "0"])


def test_patch_size_report(tmp_path):
    """scripts/patch_size.py: each candidate converted at its patch size with its table (unnamed stages dense), its
    calibration drop and saving, and its traced latency against off per batch size; malformed candidates refused."""
    if not engine.cpu_kernel_available():
        pytest.skip(f"CPU kernel: {engine.unavailable}")
    module = _script("patch_size")
    prepared = zoo.load("fmnist-resnet18").eval()
    names = [m.name for m in convert(copy.deepcopy(prepared)).modules() if isinstance(m, HasteConv2d)]
    model = module.converted(prepared, "8@16:*=0,layer4=9", names)
    layers = {m.name: m for m in model.modules() if isinstance(m, HasteConv2d)}
    assert layers and all(m.patch_size == 8 for m in layers.values())
    assert {n: m.levels["high"] for n, m in layers.items()} == {n: 9 if n.startswith("layer4.") else 0 for n in layers}
    assert not any(isinstance(m, HasteConv2d) for m in prepared.modules())  # the model given is left as it was
    out = tmp_path / "patch.json"
    candidates = ["4@16:*=0,layer4=9", "8@16:*=0,layer4=9"]
    argv = ["--model", "fmnist-resnet18", "--batch", "1", "2", "--rounds", "2", "--warmup", "0", "--limit", "40",
            "--threads", "1", "--candidate", *candidates, "--out", str(out)]  # fmt: skip
    assert module.main(argv) == 0
    report = json.loads(out.read_text())
    assert [r["candidate"] for r in report["candidates"]] == candidates
    assert report["calibration"]["images"] == 40
    for row in report["candidates"]:
        assert 0 < row["saving"] < 1 and set(row["batches"]) == {"1", "2"}
        for b in row["batches"].values():
            low, high = b["vs_off"]["ci95"]
            assert low <= b["vs_off"]["median"] <= high and b["off_ms"] > 0
    assert "'4@16:*=0,layer4=9'" in report["command"]  # quoted: the shell would expand the *
    table = module.markdown(report)
    assert table.count("\n| 4 | `16:*=0,layer4=9` |") == 1 and table.count("\n| 8 | `16:*=0,layer4=9` |") == 1
    for bad in ("16:layer4=9", "x@16", "8@", "8@16:layer4"):
        with pytest.raises(SystemExit):
            module.main(["--candidate", bad, "--out", str(out)])
