"""haste calibrate-plans: the rule that takes a plan over its baseline (never a timing)."""

import argparse

import pytest

from haste_lab.plan_search import confirm, confirmed, extra_table, restricted, table_argument


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
