"""convert / revert: what is converted and what is left dense (and why), options checked, converting twice,
shared convs."""

import warnings

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

import haste

X = torch.randn(2, 3, 12, 12)


def net() -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 16, 3, padding=1)).eval()


class SameConv(nn.Conv2d):
    """Like timm's Conv2dSame: its own forward (TF 'same' padding computed per input)."""

    def forward(self, x):
        return F.conv2d(F.pad(x, (0, 2, 0, 2)), self.weight, self.bias, self.stride)


class ScaledConv(nn.Conv2d):
    """A conv that changes the weight in _conv_forward (as weight-standardising convs do)."""

    def _conv_forward(self, x, weight, bias):
        return super()._conv_forward(x, 2 * weight, bias)


def _custom_convs():
    hooked = nn.Conv2d(8, 8, 3, padding=1)
    hooked.register_forward_hook(lambda m, args, out: out * 0)
    pre_hooked = nn.Conv2d(8, 8, 3, padding=1)
    pre_hooked.register_forward_pre_hook(lambda m, args: (args[0] * 0,))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # the old weight_norm: a forward pre-hook
        normed = nn.utils.weight_norm(nn.Conv2d(8, 8, 3, padding=1))
    return {
        "same": (SameConv(8, 8, 3), "custom forward (SameConv.forward)"),
        "scaled": (ScaledConv(8, 8, 3, padding=1), "custom forward (ScaledConv._conv_forward)"),
        "hooked": (hooked, "module hooks (forward hook)"),
        "pre_hooked": (pre_hooked, "module hooks (forward pre-hook)"),
        "normed": (normed, "module hooks (forward pre-hook)"),
    }


def test_convs_with_their_own_forward_or_hooks_stay_dense_and_keep_working():
    convs = _custom_convs()
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1))
    for name, (conv, _) in convs.items():
        model.add_module(name, conv)
    model.eval()
    with torch.no_grad():
        ref = model(X)
        haste.convert(model)
        record = haste.conversion(model)
        assert record.replaced == ["1"]
        for name, (conv, reason) in convs.items():
            assert record.skipped[name].startswith(reason), record.skipped[name]
            assert getattr(model, name) is conv
        with haste.compression("off"):
            assert torch.equal(model(X), ref)
        with haste.compression("high"):  # the custom convs still run their forward and hooks
            h = model[1](model[0](X))
            assert torch.equal(model.same(h), convs["same"][0](h))
            assert not model.hooked(h).any() and torch.equal(model.pre_hooked(h), convs["pre_hooked"][0](h))


def test_an_uninitialised_lazy_conv_stays_dense():
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.LazyConv2d(16, 3, padding=1), nn.Conv2d(16, 4, 3))
    haste.convert(model)
    assert "uninitialised lazy conv (LazyConv2d)" in haste.conversion(model).skipped["1"]
    assert haste.conversion(model).replaced == ["2"]
    with torch.no_grad(), haste.compression("high"):
        assert model(X).shape == (2, 4, 10, 10)


def test_the_skip_summary_lists_each_kind_with_its_details():
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3), nn.Conv2d(16, 16, 3, groups=16), nn.Conv2d(16, 32, 1), nn.Conv2d(32, 32, 3, groups=32),
        nn.Conv2d(32, 32, 3, dilation=2), nn.Conv2d(32, 32, 3, groups=4),
    )  # fmt: skip
    with pytest.raises(ValueError) as info:
        haste.convert(model)
    message = str(info.value)
    assert "2 x depthwise conv (groups=16, 32): merging channels across groups" in message
    assert "1 x grouped conv (groups=4): merging" in message
    assert "1 x dilated conv (dilation=(2, 2)): tile regions" in message
    assert "1 x 1x1 conv" in message and "1 x before start_layer=1" in message
    mobilenet = torchvision.models.mobilenet_v2(num_classes=10)
    with pytest.raises(ValueError, match=r"17 x depthwise conv \(groups=32, 96, 144, 192, \.\.\.\)"):
        haste.convert(mobilenet)


@pytest.mark.parametrize(
    ("conv", "reason"),
    [
        (nn.Conv2d(8, 8, 3, dilation=2), "dilated conv"),
        (nn.Conv2d(8, 8, 3, padding=1, padding_mode="reflect"), "padding_mode='reflect'"),
        (nn.Conv2d(8, 8, 3, groups=2), "grouped conv"),
        (nn.Conv2d(8, 8, 3, groups=8), "depthwise conv"),
        (nn.Conv1d(8, 8, 3), "not an nn.Conv2d"),
        (SameConv(8, 8, 3), "custom forward"),
        (nn.LazyConv2d(8, 3), "uninitialised lazy conv"),
    ],
)
def test_hasteconv2d_rejects_the_convs_it_cannot_run(conv, reason):
    with pytest.raises(ValueError, match=f"HasteConv2d cannot wrap this conv: {reason}.*It wraps an nn.Conv2d"):
        haste.HasteConv2d(conv)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (dict(sparsity="0.5"), r"sparsity must be a number in \[0, 1\).*got '0.5'"),
        (dict(sparsity=True), "sparsity must be a number"),
        (dict(seed="a"), "seed must be an integer 0 or more; got 'a'"),
        (dict(seed=1.5), "seed must be an integer 0 or more; got 1.5"),
        (dict(seed=-1), "seed must be an integer 0 or more"),
        (dict(max_hyperplanes=12.5), "max_hyperplanes must be an integer from 1 to 62; got 12.5"),
        (dict(max_hyperplanes=63), "max_hyperplanes must be an integer from 1 to 62"),
        (dict(include_pointwise="no"), "include_pointwise must be True or False; got 'no'"),
        (dict(start_layer=1.5), "start_layer must be an integer 0 or more; got 1.5"),
        (dict(patch_size=True), "patch_size must be an integer 1 or more"),
        (dict(hash=["ternary"]), "hash must be one of ternary, gaussian"),
        (dict(levels=[1, 2]), "levels must be a mapping of level names.*got list"),
    ],
)
def test_convert_options_are_checked(options, message):
    model = net()
    with pytest.raises(ValueError, match=message):
        haste.convert(model, **options)
    assert haste.conversion(model) is None and not any(isinstance(m, haste.HasteConv2d) for m in model.modules())


@pytest.mark.parametrize(
    ("levels", "message"),
    [
        ({"high": {"1": 5, "nonexistent": 3}}, r"levels name layers that are not convs of the model \(high: "
         r"'nonexistent'\); per-layer levels are keyed by conv names or 'default': layer groups 0, 1"),
        ({"high": 3.7}, r"levels\['high'\] must be an integer .*got 3.7"),
        ({"high": True}, r"levels\['high'\] must be an integer .*got True"),
        ({"high": "12"}, r"levels\['high'\] must be an integer .*got '12'"),
        ({"high": None}, r"levels\['high'\] must be an integer .*got None"),
        ({"high": {"1": 2.5}}, r"levels\['high'\]\['1'\] must be an integer"),
        ({"high": -1}, "level 'high' of layer '1' asks for -1 hyperplanes"),
        ({"high": 25}, r"asks for 25 hyperplanes \(levels\) but the layer samples max_hyperplanes=24: levels must "
         "be 0 \\(dense\\) or from 1 to 24"),
    ],
)  # fmt: skip
def test_levels_name_convs_and_are_integers_in_range(levels, message):
    model = net()
    with pytest.raises(ValueError, match=message):
        haste.convert(model, levels=levels)
    assert haste.conversion(model) is None


def test_levels_must_fit_max_hyperplanes_and_explicit_hyperplanes_each_layers_own():
    with pytest.raises(ValueError, match=r"level 'low' of layer '1' asks for 16 hyperplanes \(haste.LEVELS"):
        haste.convert(net(), max_hyperplanes=8)
    with pytest.raises(ValueError, match="from 1 to 24"), torch.no_grad(), haste.compression(hyperplanes=30):
        haste.convert(net())(X)
    small = haste.convert(net(), max_hyperplanes=8, levels={"low": 8, "medium": 6, "high": 4})
    large = haste.convert(net(), max_hyperplanes=40, levels={"low": 30, "medium": 28, "high": 26})
    assert (small[1].levels["high"], large[1].levels["low"]) == (4, 30)
    with torch.no_grad():
        with haste.profile(small) as report, haste.compression("high"):
            small(X)
        assert report.layers["1"].hyperplanes == 4 and report.saving != 0
        with haste.compression(hyperplanes=30):
            torch.testing.assert_close(large(X), large[1](large[0](X)))
        with haste.compression("low"):
            assert not torch.equal(large(X), small(X))


def test_converting_again_with_other_options_or_levels_raises():
    model = haste.convert(net(), patch_size=2, seed=5, levels={"high": {"1": 5}})
    assert haste.convert(model) is model and haste.convert(model, seed=5, levels={"high": {"1": 5}}) is model
    layer = model[1]
    with pytest.raises(ValueError, match=r"already converted \(patch_size=2, seed=5; .*patch_size=4, seed=0, "
                       r"haste.revert\(model\) first"):  # fmt: skip
        haste.convert(model, patch_size=4, seed=0)
    with pytest.raises(ValueError, match=r"already converted \(with other levels.*levels=\{'high': 6\}"):
        haste.convert(model, levels={"high": 6})
    assert model[1] is layer and layer.patch_size == 2
    haste.revert(model)
    assert haste.convert(model, patch_size=4)[1].patch_size == 4


def test_converting_the_parent_of_a_converted_part_raises():
    inner = net()
    outer = nn.Sequential(nn.Conv2d(3, 3, 3, padding=1), inner, nn.Conv2d(16, 4, 3, padding=1))
    haste.convert(inner)
    with pytest.raises(ValueError, match=r"part of this model was converted on its own \('1': .*"
                       r"haste.revert\(model.get_submodule\('1'\)\) first"):  # fmt: skip
        haste.convert(outer)
    assert haste.conversion(outer) is None and isinstance(outer[2], nn.Conv2d)
    haste.revert(inner)
    haste.convert(outer)
    assert haste.conversion(outer).replaced == ["1.0", "1.1", "2"]


def test_a_conv_registered_twice_is_replaced_under_both_names():
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Conv2d(3, 8, 3, padding=1)
            self.a = nn.Conv2d(8, 8, 3, padding=1)
            self.b = self.a

        def forward(self, x):
            return self.b(self.a(self.stem(x)))

    model = Twice().eval()
    with torch.no_grad():
        ref = model(X)
        haste.convert(model)
        assert isinstance(model.a, haste.HasteConv2d) and model.a is model.b
        assert haste.conversion(model).replaced == ["a"]
        with haste.compression("off"):
            assert torch.equal(model(X), ref)
        haste.revert(model)
    assert isinstance(model.b, nn.Conv2d) and model.a is model.b
    assert torch.equal(model(X), ref)


def test_revert_takes_the_model_not_a_wrapper():
    model = haste.convert(net())
    with pytest.raises(ValueError, match="revert\\(\\) takes the model containing the HASTE layers"):
        haste.revert(model[1])
    assert list(model.state_dict()) == ["0.weight", "0.bias", "1.weight", "1.bias"]
    with pytest.raises(ValueError, match="already a HasteConv2d"):
        haste.convert(model[1])
