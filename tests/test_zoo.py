"""haste.zoo: the trained reference models (committed weights and cards) and torchvision models
through a pre-seeded offline cache."""

import json
import subprocess
import sys

import pytest
import torch
import torchvision

import haste
import haste_lab.data
from haste import zoo
from haste.zoo import torchvision as tv
from haste.zoo.registry import entry
from haste_lab.train import accuracy, inputs


@pytest.fixture
def torch_home(tmp_path, monkeypatch):
    """An empty torchvision cache; downloads disabled."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setenv("HASTE_OFFLINE", "1")
    return tmp_path


def seed_cache(name: str) -> dict:
    """Save a randomly initialised model's state_dict where torchvision expects the weights of ``name``."""
    arch = name.split(":")[0]
    state = torchvision.models.get_model(arch, weights=None, num_classes=1000).state_dict()
    path = tv.cache_path(name)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return state


def test_import_haste_exposes_the_zoo_on_first_use():
    """README: ``import haste`` then ``haste.zoo.load(...)``; the zoo (and torchvision) loads only when used."""
    code = (
        "import sys, haste\n"
        "assert 'haste.zoo' not in sys.modules and 'torchvision' not in sys.modules, 'imported eagerly'\n"
        "print(haste.zoo.names()[0], haste.zoo.load is sys.modules['haste.zoo'].load, 'zoo' in dir(haste))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [zoo.names()[0], "True", "True"]


def test_registry_names():
    assert {"fmnist-resnet18", "fmnist-resnet34", "fmnist-vgg16_bn"} <= set(zoo.names())


def test_unknown_model_says_what_is_accepted():
    with pytest.raises(ValueError, match="fmnist-resnet34.*torchvision.*IMAGENET1K_V2"):
        zoo.card("no-such-model")
    with pytest.raises(ValueError, match="accepted: DEFAULT, IMAGENET1K_V1, IMAGENET1K_V2"):
        zoo.card("resnet50:IMAGENET9")


def test_torchvision_card_from_weights_meta():
    card = zoo.card("resnet50:IMAGENET1K_V2")
    assert card["name"] == "resnet50:IMAGENET1K_V2" and card["source"] == "torchvision"
    assert len(card["labels"]) == 1000 and card["labels"][1] == "goldfish"
    assert card["input"]["resize"] == 232 and card["input"]["crop"] == 224 and card["input"]["size"] == [224, 224]
    assert card["input"]["mean"] == pytest.approx([0.485, 0.456, 0.406])
    assert card["flops_dense"] == 4_089_000_000
    assert card["test_accuracy"] == pytest.approx(0.80858)
    assert zoo.card("resnet50")["name"] == "resnet50:IMAGENET1K_V2"  # DEFAULT weights
    assert zoo.card("resnet18:ResNet18_Weights.IMAGENET1K_V1")["name"] == "resnet18:IMAGENET1K_V1"


def test_torchvision_offline_without_cache_names_the_path(torch_home):
    expected = torch_home / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    with pytest.raises(FileNotFoundError) as info:
        zoo.load("resnet18:IMAGENET1K_V1")
    assert str(expected) in str(info.value) and "offline" in str(info.value)


def test_torchvision_from_a_preseeded_cache(torch_home):
    state = seed_cache("resnet18:IMAGENET1K_V1")
    assert tv.cache_path("resnet18").is_relative_to(torch_home)
    model = zoo.load("resnet18")
    assert not model.training and model.haste_card["name"] == "resnet18:IMAGENET1K_V1"
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert haste.count_flops(model, (3, 224, 224)) == pytest.approx(1.814e9, rel=1e-3)
    haste.convert(model)
    x = torch.randn(1, 3, 48, 48)
    with torch.no_grad(), haste.compression("off"):
        dense = model(x)
    with torch.no_grad(), haste.compression(hyperplanes=6):
        merged = model(x)
    assert dense.shape == merged.shape == (1, 1000) and torch.isfinite(merged).all()


REFERENCE = ["fmnist-resnet18", "fmnist-resnet34", "fmnist-vgg16_bn"]


def trained(name: str) -> str:
    """``name``, skipping the test while its weights are still being trained (not yet committed)."""
    if not zoo.paths(name)[0].is_file():
        pytest.skip(f"{name} is not trained yet: haste train --model {name}")
    return name


@pytest.mark.parametrize("name", REFERENCE)
def test_reference_model_card_and_weights(name):
    trained(name)
    card = zoo.card(name)
    spec = entry(name).spec
    assert card["name"] == name and card["arch"] == entry(name).arch
    assert card["labels"][0] == "T-shirt/top" and len(card["labels"]) == 10
    assert card["input"]["size"] == [32, 32] and card["input"]["mean"] == list(spec.mean)
    assert card["test_accuracy"] >= 0.92
    assert card["seed"] == entry(name).recipe.seed and "command" in card["recipe"]
    weights, _ = zoo.paths(name)
    import hashlib

    assert hashlib.sha256(weights.read_bytes()).hexdigest() == card["sha256"]
    model = zoo.load(name)
    assert not model.training and model.haste_card == card
    assert haste.count_flops(model, (1, 32, 32)) == card["flops_dense"]
    x, y = haste_lab.data.fashion_mnist("test")
    assert accuracy(model, inputs(x[:300], spec), y[:300]) >= 0.9


@pytest.mark.parametrize("name", REFERENCE)
def test_reference_model_uses_its_calibrated_levels(name):
    trained(name)
    card = zoo.card(name)
    assert set(card["haste"]["levels"]) == {"low", "medium", "high"}
    model = haste.convert(zoo.load(name))
    # the card's options; those its levels do not depend on (fold_batchnorm) at their defaults
    assert haste.conversion(model).options == haste.Options.from_mapping(card["haste"]["options"]).as_dict()
    assert haste.Options.from_mapping(card["haste"]["options"]).calibrated() == card["haste"]["options"]
    wrapper = next(m for m in model.modules() if isinstance(m, haste.HasteConv2d))
    for level, value in card["haste"]["levels"].items():
        expected = value if isinstance(value, int) else value.get(wrapper.name, value["default"])
        assert wrapper.levels[level] == expected
    savings = [
        row["saving"]
        for row in sorted(card["haste"]["table"], key=lambda r: ["low", "medium", "high"].index(r["level"]))
    ]
    assert savings == sorted(savings)
    json.dumps(card)
