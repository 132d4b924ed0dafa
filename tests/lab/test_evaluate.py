"""haste evaluate / sweep / calibrate on small models and --limit-sized subsets (real data, real CLI)."""

import json
import os

import pytest
import torch
import torchvision.datasets.cifar
from safetensors.torch import save_file
from test_data import write_cifar10, write_image_folder
from test_zoo import seed_cache

import haste
from haste import zoo
from haste.cli import main
from haste.zoo.architectures import build
from haste.zoo.registry import FMNIST_SPEC
from haste_lab.sweep import parse_schedule, schedule_table

CIFAR_INPUT = {"mode": "RGB", "resize": 0, "crop": 0, "pad": 0, "mean": [0.49, 0.48, 0.45], "std": [0.25, 0.24, 0.26]}


def write_card(root, *, name="tiny", arch="resnet18", width=4, spec=None, labels=None, dataset="fashion-mnist"):
    """A small randomly initialised model saved like a reference model: ``root/name.{safetensors,json}``."""
    spec = spec or {**FMNIST_SPEC.as_dict(), "channels": 1, "size": [32, 32]}
    labels = labels or [str(i) for i in range(10)]
    torch.manual_seed(0)
    model = build(arch, width=width, in_channels=spec["channels"], num_classes=len(labels)).eval()
    root.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(root / f"{name}.safetensors"))
    card = {"name": name, "arch": arch, "width": width, "dataset": dataset, "input": spec, "labels": labels}
    (root / f"{name}.json").write_text(json.dumps(card))
    return str(root / f"{name}.json")


@pytest.fixture
def tiny(tmp_path):
    return write_card(tmp_path / "models")


def run(capsys, *argv):
    """Run the haste CLI; returns (exit code, stdout, stderr). An argument argparse refuses exits with 2."""
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def evaluate_json(capsys, *argv):
    code, out, err = run(capsys, "evaluate", *argv, "--json")
    assert code == 0, err
    return json.loads(out)


def test_evaluate_json(tiny, capsys):
    result = evaluate_json(capsys, "--model", tiny, "--level", "high", "--limit", 40, "--batch-size", 16)
    for key in ("dense_accuracy", "accuracy", "flops_dense", "flops_executed", "flops_overhead", "saving"):
        assert isinstance(result[key], float)
    assert result["images"] == 40 and result["dataset"] == "fashion-mnist" and result["split"] == "test"
    assert 0 <= result["accuracy"] <= 1 and 0 <= result["dense_accuracy"] <= 1
    # merging happened; whether it pays for its overhead depends on the model and level (it may not at L=12)
    assert result["flops_executed"] < result["flops_dense"] and -1 < result["saving"] < 1
    saved = result["flops_dense"] - result["flops_executed"] - result["flops_overhead"]
    assert saved / result["flops_dense"] == pytest.approx(result["saving"])
    # the dense FLOPs are the model's, the first conv stays dense, the converted ones report buckets
    assert result["flops_dense"] == haste.count_flops(zoo.load(tiny), (1, 32, 32))
    assert result["layers"]["conv1"]["kind"] == "dense" and "conv1" in result["skipped"]
    converted = [v for v in result["layers"].values() if v["kind"] == "haste"]
    assert converted and all(v["hyperplanes"] == haste.LEVELS["high"] for v in converted)
    assert all(0 < v["mean_buckets"] <= v["channels"] for v in converted)
    assert result["options"]["seed"] == 0 and result["options"]["patch_size"] == 4


def test_evaluate_is_deterministic_and_seeded(tiny, capsys):
    argv = ("--model", tiny, "--hyperplanes", 4, "--limit", 24, "--batch-size", 12)
    first, second = evaluate_json(capsys, *argv), evaluate_json(capsys, *argv)
    other = evaluate_json(capsys, *argv, "--seed", 1, "--batch-size", 24)
    for r in (first, second, other):
        r.pop("seconds")
    assert first == second
    assert other["options"]["seed"] == 1 and other["flops_executed"] != first["flops_executed"]


def test_evaluate_level_off_is_dense(tiny, capsys):
    result = evaluate_json(capsys, "--model", tiny, "--level", "off", "--limit", 20)
    assert result["accuracy"] == result["dense_accuracy"] and result["agreement"] == 1.0
    assert result["saving"] == 0.0 and result["flops_overhead"] == 0.0


def test_evaluate_text_output_and_options(tiny, capsys):
    code, out, _ = run(
        capsys, "evaluate", "--model", tiny, "--limit", 8, "--patch-size", 2, "--hash", "gaussian",
        "--include-pointwise", "--split", "calibration",
    )  # fmt: skip
    assert code == 0
    assert "calibration (8 images)" in out and "saving" in out and "HASTE accuracy" in out


@pytest.mark.parametrize(
    "argv, message",
    [
        (("--model", "no-such-model"), "unknown model 'no-such-model'"),
        (("--level", "extreme"), "level must be one of off, low, medium, high"),
        (("--hyperplanes", 99), "argument --hyperplanes: must be an integer from 1 to 24"),
        (("--hyperplanes", 0), "argument --hyperplanes: must be an integer from 1 to 24"),
        (("--dataset", "cifar10"), "--dataset cifar10 needs --data-dir"),
        (("--data-dir", "/nonexistent/fashion"), "dataset-fashion-mnist"),
        (("--split", "validation"), "split must be one of"),
        (("--limit", 0), "argument --limit: must be a positive integer, got 0"),
        (("--batch-size", 0), "argument --batch-size: must be a positive integer, got 0"),
        (("--threads", 0), "argument --threads: must be a positive integer, got 0"),
        (("--patch-size", 0), "argument --patch-size: must be a positive integer, got 0"),
        (("--start-layer", -1), "argument --start-layer: must be a non-negative integer, got -1"),
        (("--sparsity", 1), "argument --sparsity: must be a number in [0, 1), got 1"),
        (("--include-pointwise", "maybe"), "argument --include-pointwise: must be true or false"),
        (("--start-layer", 99), "start_layer=99 is past the model's last conv: it has 20 Conv2d, numbered 0 to 19"),
    ],
)
def test_evaluate_errors(tiny, capsys, argv, message):
    args = {"--model": tiny, "--limit": 2, **dict(zip(argv[::2], argv[1::2]))}
    code, _, err = run(capsys, "evaluate", *[x for kv in args.items() for x in kv])
    assert code == 2 and message in err


def test_evaluate_torchvision_offline_error(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setenv("HASTE_OFFLINE", "1")
    code, _, err = run(capsys, "evaluate", "--model", "resnet50:IMAGENET1K_V2", "--dataset", "imagefolder",
                       "--data-dir", tmp_path)  # fmt: skip
    assert code == 2 and str(tmp_path / "hub" / "checkpoints" / "resnet50-11ad3fa6.pth") in err


def test_evaluate_cifar10(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda path, md5=None: os.path.isfile(path))
    root = write_cifar10(tmp_path / "cifar")
    card = write_card(tmp_path / "models", spec={**CIFAR_INPUT, "channels": 3, "size": [32, 32]}, dataset="cifar10")
    result = evaluate_json(capsys, "--model", card, "--data-dir", root, "--hyperplanes", 3)
    assert result["dataset"] == "cifar10" and result["images"] == 4 and 0 < result["saving"] < 1
    train = evaluate_json(capsys, "--model", card, "--dataset", "cifar10", "--data-dir", root, "--split", "train",
                          "--limit", 6)  # fmt: skip
    assert train["images"] == 6
    code, _, err = run(capsys, "evaluate", "--model", card, "--data-dir", tmp_path / "empty")
    assert code == 2 and "cifar-10-batches-py" in err


def test_evaluate_image_folder_by_label_name(tmp_path, capsys):
    root = write_image_folder(tmp_path / "tree", classes=("dog", "cat"))
    spec = {"mode": "RGB", "resize": 36, "crop": 32, "pad": 0, "mean": [0.5] * 3, "std": [0.25] * 3}
    card = write_card(tmp_path / "models", spec={**spec, "channels": 3, "size": [32, 32]}, labels=["dog", "cat"])
    result = evaluate_json(capsys, "--model", card, "--dataset", "imagefolder", "--data-dir", root)
    assert result["dataset"] == "imagefolder" and result["images"] == 4
    code, _, err = run(capsys, "evaluate", "--model", card, "--dataset", "imagefolder", "--data-dir", tmp_path / "no")
    assert code == 2 and "does not exist" in err


def test_evaluate_torchvision_on_an_image_folder(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HASTE_OFFLINE", "1")
    seed_cache("resnet18:IMAGENET1K_V1")
    root = write_image_folder(tmp_path / "val", classes=("goldfish", "tench"), per_class=1, size=(80, 64))
    result = evaluate_json(capsys, "--model", "resnet18", "--dataset", "imagefolder", "--data-dir", root,
                           "--hyperplanes", 6, "--batch-size", 2)  # fmt: skip
    assert result["model"] == "resnet18:IMAGENET1K_V1" and result["images"] == 2
    assert result["flops_dense"] == pytest.approx(1.814e9, rel=1e-3)  # at the weights' 224 x 224 crop
    assert 0 < result["saving"] < 1


def test_schedule_table():
    names = ["conv1", "layer1.0.conv1", "layer1.0.conv2", "layer4.1.conv2", "layer4.0.downsample.0"]
    assert parse_schedule("layer1=+2, layer4=-1") == {"layer1": "+2", "layer4": "-1"}
    assert schedule_table(names, 8, "") == 8
    table = schedule_table(names, 8, "layer1=+2,layer4=-9,*.conv2=5")
    assert table == {"default": 8, "layer1.0.conv1": 10, "layer1.0.conv2": 5, "layer4.1.conv2": 5,
                     "layer4.0.downsample.0": 1}  # fmt: skip
    with pytest.raises(ValueError, match="pattern=\\+N"):
        parse_schedule("layer1:+2")


def test_sweep_and_calibrate(tmp_path, capsys):
    card = write_card(tmp_path / "models")
    out = tmp_path / "results" / "sweep"
    code, _, err = run(
        capsys, "sweep", "--model", card, "--hyperplanes", 3, 8, "--seeds", 0, 1, 2, "--limit", 30,
        "--schedule", "", "layer1=+2", "--merge", "mean", "scaled", "--out", out,
    )  # fmt: skip
    assert code == 0, err
    result = json.loads(out.with_suffix(".json").read_text())
    assert result["split"] == "calibration" and result["images"] == 30 and len(result["rows"]) == 24
    assert len(result["summary"]) == 8 and all(s["seeds"] == 3 for s in result["summary"])
    for merge in ("mean", "scaled"):
        uniform = {s["hyperplanes"]: s for s in result["summary"] if s["schedule"] == "" and s["merge"] == merge}
        assert uniform[3]["saving_mean"] > uniform[8]["saving_mean"] and uniform[3]["saving_std"] > 0
    assert out.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"
    assert out.with_suffix(".csv").read_text().startswith("patch_size,sparsity,hash")
    # rerunning resumes: nothing is recomputed
    code, out_text, _ = run(capsys, "sweep", "--model", card, "--hyperplanes", 3, 8, "--limit", 30,
                            "--schedule", "", "layer1=+2", "--merge", "mean", "scaled", "--out", out)  # fmt: skip
    assert code == 0 and "[1/24]" not in out_text

    code, text, err = run(
        capsys, "calibrate", "--model", card, "--sweep", out.with_suffix(".json"), "--test-limit", 30,
        "--merge", "scaled", "--out", tmp_path / "results" / "calibrate", "--write-card",
    )  # fmt: skip
    assert code == 0, err
    stored = zoo.card(card)
    assert set(stored["haste"]["levels"]) <= {"low", "medium", "high"} and stored["haste"]["table"]
    assert stored["haste"]["options"]["max_hyperplanes"] == haste.MAX_HYPERPLANES
    assert stored["haste"]["options"]["merge"] == "scaled"
    for row in stored["haste"]["table"]:
        assert row["calibration_drop"] <= row["budget_points"] and 0 <= row["test_accuracy"] <= 1
    model = haste.convert(zoo.load(card))
    wrapper = next(m for m in model.modules() if isinstance(m, haste.HasteConv2d))
    assert wrapper.merge == "scaled"  # the card's calibrated options, then its levels
    level, value = next(iter(stored["haste"]["levels"].items()))
    assert wrapper.levels[level] == (value if isinstance(value, int) else value.get(wrapper.name, value["default"]))
