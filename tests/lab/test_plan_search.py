"""haste calibrate-plans: the rule that takes a plan over its baseline (never a timing)."""

import argparse

import pytest

from haste_lab.plan_search import (
    confirm,
    confirmed,
    extra_table,
    prune_stages,
    restricted,
    table_argument,
    without_stage,
)


def test_confirm_runs_long_enough_when_rounds_are_short():
    asked = []

    def run_two(n):
        asked.append(n)
        return [0.9] * n, [1.0] * n

    paired = confirm(run_two, rounds=30, seconds_each=0.02, min_seconds=10.0)
    assert asked == [500] and paired["rounds"] == 500
    assert paired["median"] == pytest.approx(0.9) and paired["ci95"] == pytest.approx([0.9, 0.9])
    assert confirm(run_two, rounds=30, seconds_each=1.0, min_seconds=10.0)["rounds"] == 30  # the floor holds


@pytest.mark.parametrize(
    ("ratios", "taken"),
    [
        ([0.95 + 0.001 * (i % 5) for i in range(100)], True),  # every round faster
        ([0.97 + 0.06 * (i % 2) for i in range(100)], False),  # half the rounds slower: the interval holds 1
        ([0.998 - 0.001 * (i % 2) for i in range(100)], False),  # surely faster, by less than half of min_gain
    ],
)
def test_a_plan_is_taken_only_when_its_paired_interval_is_below_one(ratios, taken):
    paired = confirm(lambda n: (ratios[:n], [1.0] * n), rounds=len(ratios), seconds_each=1.0, min_seconds=0.0)
    assert confirmed(paired, min_gain=0.01) is taken


def test_restricted_keeps_the_chosen_stages_only():
    table = {"layer1.0.conv1": 12, "layer2.0.conv1": 10, "layer2.0.downsample.0": 0}
    assert restricted(table, frozenset({"layer2"})) == {"layer1.0.conv1": 0, "layer2.0.conv1": 10,
                                                        "layer2.0.downsample.0": 0}  # fmt: skip


def test_an_extra_table_resolves_its_schedule_over_the_haste_layers():
    names = ["layer1.0.conv1", "layer1.0.conv2", "layer4.0.conv1", "layer4.1.conv2"]
    assert extra_table(names, "14") == dict.fromkeys(names, 14)
    assert extra_table(names, "14:layer4=8,layer1.0.conv2=0") == {
        "layer1.0.conv1": 14, "layer1.0.conv2": 0, "layer4.0.conv1": 8, "layer4.1.conv2": 8,
    }  # fmt: skip
    assert extra_table(names, "12:layer4=-4")["layer4.0.conv1"] == 8


@pytest.mark.parametrize("text", ["", "layer4=8", "0:layer4=8", "14:layer4", "x:layer4=8"])
def test_a_malformed_extra_table_is_refused_saying_what_is_accepted(text):
    with pytest.raises(argparse.ArgumentTypeError, match="HYPERPLANES|pattern=N"):
        table_argument(text)


def test_an_extra_table_whose_pattern_matches_no_layer_is_refused():
    with pytest.raises(ValueError, match="matches no conv"):
        extra_table(["layer1.0.conv1"], "14:layer9=8")


PLAN = (("layer1.0.conv1", 16), ("layer3.0.conv2", 16), ("layer4.0.conv2", 8), ("layer4.1.conv1", 8))


def paired_run(ratio: float, spread: float = 0.002) -> dict:
    """A confirmation run (``confirm``) whose rounds read ``ratio`` give or take ``spread``."""
    rounds = [ratio + spread * (i % 3 - 1) for i in range(60)]
    return confirm(lambda n: (rounds[:n], [1.0] * n), rounds=60, seconds_each=1.0, min_seconds=0.0)


def test_without_stage_runs_every_conv_of_that_stage_dense():
    assert without_stage(PLAN, "layer4") == (("layer1.0.conv1", 16), ("layer3.0.conv2", 16))
    assert without_stage(PLAN, "layer2") == PLAN


def test_pruning_runs_dense_the_stages_that_buy_no_measurable_time():
    # layer4 buys 6% of the time; layer1 and layer3 nothing measurable (one reads 1% slower, one noise around 1)
    gain = {"layer1": 1.01, "layer3": 0.999, "layer4": 0.94}
    asked = []

    def compare(key, smaller):
        (stage,) = {n.split(".")[0] for n, _ in key} - {n.split(".")[0] for n, _ in smaller}
        asked.append(stage)
        return paired_run(gain[stage], spread=0.02 if stage == "layer3" else 0.002)

    kept, pruned = prune_stages(PLAN, compare, allowed=lambda k: True, min_gain=0.01, log=lambda *_: None)
    assert kept == (("layer4.0.conv2", 8), ("layer4.1.conv1", 8))
    assert [p["stage"] for p in pruned] == ["layer1", "layer3"] and asked == ["layer1", "layer3"]
    assert pruned[0]["median"] == pytest.approx(1.01)


def test_pruning_keeps_a_stage_that_pays_and_skips_a_smaller_plan_not_allowed():
    def compare(key, smaller):
        return paired_run(0.95)  # every stage pays

    full = PLAN[1:]  # layer3 and layer4
    assert prune_stages(full, compare, allowed=lambda k: True, min_gain=0.01, log=lambda *_: None) == (full, [])
    # over the budget (or a lower level's plan): never asked, never taken, however little the stage buys
    slow = lambda key, smaller: paired_run(1.0)  # noqa: E731
    only_layer4 = without_stage(full, "layer3")
    kept, pruned = prune_stages(full, slow, allowed=lambda k: k != only_layer4, min_gain=0.01, log=lambda *_: None)
    assert kept == (("layer3.0.conv2", 16),) and [p["stage"] for p in pruned] == ["layer4"]


def test_pruning_asks_first_about_the_stage_whose_removal_ranks_fastest():
    order = {
        without_stage(PLAN, "layer4"): 0.99,
        without_stage(PLAN, "layer1"): 0.93,
        without_stage(PLAN, "layer3"): 0.95,
    }
    asked = []

    def compare(key, smaller):
        asked.append(smaller)
        return paired_run(0.95)

    prune_stages(PLAN, compare, allowed=lambda k: True, min_gain=0.01, order=order.get, log=lambda *_: None)
    assert asked == [without_stage(PLAN, "layer1"), without_stage(PLAN, "layer3"), without_stage(PLAN, "layer4")]
