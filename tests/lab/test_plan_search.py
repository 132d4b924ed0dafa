"""haste calibrate-plans: the rule that takes a plan over its baseline (never a timing)."""

import pytest

from haste_lab.plan_search import confirm, confirmed, restricted


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
