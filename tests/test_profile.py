"""haste.profile: nesting, other models in the block, several forwards, batch-size changes."""

import pytest
import torch
from torch import nn

import haste

X = torch.randn(2, 3, 12, 12)


def net() -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 16, 3, padding=1)).eval()


def _one_forward(model: nn.Module, x: torch.Tensor = X, **kwargs) -> haste.Report:
    with torch.no_grad(), haste.compression("high"), haste.profile(model, **kwargs) as report:
        model(x)
    return report


@pytest.mark.parametrize("dense_layers", [True, False])
def test_nested_profiles_both_count_the_inner_forwards(dense_layers):
    model = haste.convert(net())
    alone = _one_forward(model, dense_layers=dense_layers)
    with torch.no_grad(), haste.compression("high"):
        with haste.profile(model, dense_layers=dense_layers) as outer:
            model(X)
            with haste.profile(model, dense_layers=dense_layers) as inner:
                model(X)
    assert inner.forwards == 1 and outer.forwards == 2 and outer.images == 4
    assert inner.per_image == alone.per_image and outer.per_image == alone.per_image * 2
    assert outer.layers["1"].images == 4 and inner.layers["1"].images == 2


@pytest.mark.parametrize("dense_layers", [True, False])
def test_a_profile_counts_only_its_own_models_layers(dense_layers):
    model, other = haste.convert(net()), haste.convert(net())
    alone = _one_forward(model, dense_layers=dense_layers)
    with torch.no_grad(), haste.compression("high"), haste.profile(model, dense_layers=dense_layers) as report:
        other(X)
        model(X)
        other(X)
    assert report.forwards == 1 and report.per_image == alone.per_image
    assert report.layers["1"].images == 2


def test_several_forwards_without_dense_layers_are_separate_rows():
    model = haste.convert(net())
    one = _one_forward(model, dense_layers=False)
    with torch.no_grad(), haste.compression("high"), haste.profile(model, dense_layers=False) as two:
        model(X)
        model(X)
    assert two.forwards == 2 and two.images == 4 and two.per_image == one.per_image * 2
    assert two.saved_flops == pytest.approx(one.saved_flops) and two.saving == pytest.approx(one.saving)


def test_a_batch_size_change_inside_one_forward_keeps_every_layers_flops():
    class Halves(nn.Module):
        """Runs its second conv on each half of the batch."""

        def __init__(self):
            super().__init__()
            self.net = net()

        def forward(self, x):
            h = self.net[0](x)
            return torch.cat([self.net[1](h[:1]), self.net[1](h[1:])])

    model = haste.convert(Halves().eval())
    whole = _one_forward(model.net)
    split = _one_forward(model)
    assert split.forwards == 1 and split.images == 2
    assert split.dense_flops == pytest.approx(whole.dense_flops)
    assert split.executed_flops + split.overhead_flops == pytest.approx(whole.executed_flops + whole.overhead_flops)


def test_a_profile_of_kept_cpu_calls_records_them_without_a_python_count(monkeypatch):
    """The serving case (one profile of the model, no dense layer hook): the kept CPU call appends its sums to the
    profile itself, and the report is the one the Python count makes, layers in call order."""
    from haste import engine
    from haste.profile import _Collector

    if not engine.cpu_kernel_available():
        pytest.skip(f"the CPU kernel is unavailable: {engine.unavailable}")
    model = haste.convert(nn.Sequential(*net(), nn.Conv2d(16, 16, 3, padding=1)).eval())
    with torch.inference_mode():
        counted = _one_forward(model, dense_layers=False)  # the layers' first calls: counted in Python, kept
        kept = _one_forward(model, dense_layers=False)
        monkeypatch.setattr(_Collector, "count", lambda *args: pytest.fail("a kept call was counted in Python"))
        direct = _one_forward(model, dense_layers=False)
    assert direct.per_image == counted.per_image == kept.per_image and direct.forwards == 1
    assert list(direct.layers) == list(counted.layers) == ["1", "2"]  # "0", the first conv, stays an nn.Conv2d
    assert {k: v.as_dict() for k, v in direct.layers.items()} == {k: v.as_dict() for k, v in counted.layers.items()}
