"""Level plans: per engine, level and batch size, which layers run HASTE (haste.plans, convert(plans=...))."""

import copy

import pytest
import torch

import haste
from haste import engine
from haste.plans import check_plans, describe, plan_name

pytestmark = pytest.mark.skipif(not engine.cpu_kernel_available(), reason=f"CPU kernel: {engine.unavailable}")

PLANS = {
    "cpu": {
        "high": [
            {"batch": 1, "levels": {"layer1": 10, "layer2.0.conv2": 12}},
            {"batch": 4, "levels": {"layer2": 12}},
            {"batch": 8, "levels": {"default": 0}},
        ]
    }
}


def hyperplanes_used(model, x, level="high"):
    with torch.inference_mode(), haste.profile(model) as report, haste.compression(level):
        y = model(x)
    return {name: s.hyperplanes for name, s in report.layers.items() if s.kind == "haste"}, y


def test_each_batch_size_runs_its_entry(resnet18, resnet18_images):
    model = haste.convert(copy.deepcopy(resnet18), plans=PLANS)
    used, _ = hyperplanes_used(model, resnet18_images[:1])
    assert {n for n, h in used.items() if h} == {n for n in used if n.startswith("layer1.")} | {"layer2.0.conv2"}
    assert all(used[n] == 10 for n in used if n.startswith("layer1.")) and used["layer2.0.conv2"] == 12
    for batch in (4, 5, 7):  # the entry for batches from 4
        used, _ = hyperplanes_used(model, resnet18_images[:batch])
        assert {n for n, h in used.items() if h} == {n for n in used if n.startswith("layer2.")}
    used, y = hyperplanes_used(model, resnet18_images[:9])  # from 8: resnet18, bit-exact
    assert not any(used.values())
    with torch.inference_mode():
        assert torch.equal(y, resnet18(resnet18_images[:9]))
    assert describe(haste.conversion(model).plans, "cpu", "high", 6) == plan_name("high", 4) == "high@4"
    assert describe(haste.conversion(model).plans, "cpu", "low", 6) is None  # no plan: the level table runs


def test_an_entry_computes_what_its_table_computes(resnet18, resnet18_images):
    """Batch 2 of a plan gives the outputs of a model converted with the entry's table as its level."""
    planned = haste.convert(copy.deepcopy(resnet18), plans=PLANS)
    table = {"layer1": 10, "layer2.0.conv2": 12}
    names = [m.name for m in planned.modules() if isinstance(m, haste.HasteConv2d)]
    levels = {"high": {n: table.get(n, table.get(".".join(n.split(".")[:1]), 0)) for n in names}}
    fixed = haste.convert(copy.deepcopy(resnet18), levels=levels, plans={})
    with torch.inference_mode(), haste.compression("high"):
        assert torch.allclose(planned(resnet18_images[:2]), fixed(resnet18_images[:2]), atol=1e-5)


def test_explicit_hyperplanes_and_other_engines_ignore_plans(resnet18, resnet18_images):
    model = haste.convert(copy.deepcopy(resnet18), plans=PLANS)
    with torch.inference_mode(), haste.profile(model) as report, haste.compression(hyperplanes=12):
        model(resnet18_images[:9])
    assert all(s.hyperplanes == 12 for s in report.layers.values() if s.kind == "haste")
    with torch.inference_mode(), haste.profile(model) as report, engine.forced("reference"), haste.compression("high"):
        model(resnet18_images[:9])  # no plan for the reference engine: the level table at every batch size
    table = {m.name: m.levels["high"] for m in model.modules() if isinstance(m, haste.HasteConv2d)}
    assert {n: s.hyperplanes for n, s in report.layers.items() if s.kind == "haste"} == table


def test_convert_takes_the_cards_plans_with_its_levels(resnet18):
    planned = copy.deepcopy(resnet18)
    planned.haste_card = {**resnet18.haste_card, "haste": {**resnet18.haste_card["haste"], "plans": PLANS}}
    assert haste.conversion(haste.convert(copy.deepcopy(planned))).plans == PLANS
    assert haste.conversion(haste.convert(copy.deepcopy(planned), plans={})).plans == {}
    assert haste.conversion(haste.convert(copy.deepcopy(planned), levels={"high": 12})).plans == {}  # other levels


@pytest.mark.parametrize(
    ("plans", "message"),
    [
        ({"gpu": {}}, "engine must be one of cpu, triton, reference"),
        ({"cpu": {"hihg": [{"batch": 1, "levels": {}}]}}, "level must be one of off, low, medium, high"),
        ({"cpu": {"off": [{"batch": 1, "levels": {}}]}}, "level 'off' is always the dense model"),
        ({"cpu": {"high": []}}, "non-empty list"),
        ({"cpu": {"high": [{"batch": 2, "levels": {}}]}}, "must be 1"),
        ({"cpu": {"high": [{"batch": 1, "levels": {}}, {"batch": 1, "levels": {}}]}}, "above the previous entry's"),
        ({"cpu": {"high": [{"batch": 1, "levels": {}, "extra": 1}]}}, "must be {'batch': n, 'levels': table}"),
        ({"cpu": {"high": [{"batch": 1, "levels": {"layer9": 4}}]}}, "not convs (or prefixes of conv names)"),
        ({"cpu": {"high": [{"batch": 1, "levels": {"layer1": 99}}]}}, "max_hyperplanes=24"),
        ({"cpu": {"high": [{"batch": 1, "levels": {"layer1": 2.5}}]}}, "must be an integer"),
    ],
)
def test_bad_plans_are_refused_saying_what_is_accepted(resnet18, plans, message):
    model = copy.deepcopy(resnet18)
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)").replace("{", r"\{")):
        haste.convert(model, plans=plans)
    assert haste.conversion(model) is None  # unchanged


def test_check_plans_returns_the_entries():
    assert check_plans(PLANS) == PLANS


def test_runs_dense_says_when_a_batch_needs_no_haste_layer():
    from haste.plans import runs_dense

    assert [runs_dense(PLANS, "cpu", "high", b) for b in (1, 3, 4, 8, 100)] == [False, False, False, True, True]
    assert runs_dense(PLANS, "cpu", "off", 1) and runs_dense({}, "cpu", "off", 1)
    assert not runs_dense(PLANS, "cpu", "low", 8) and not runs_dense(PLANS, "reference", "high", 8)  # no plan there
