"""haste bench: the report's structure and consistency (never its timings)."""

import json

import pytest

from haste import zoo
from haste.cli import main
from haste.convert import convert
from haste.module import HasteConv2d

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
        assert (
            table.split(f"| fmnist-resnet18 | 2 | {level} | {ms['region']:.2f}")[1]
            .split("\n")[0]
            .endswith(f"| {sum(ms.values()):.2f} |")
        )


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
