"""HASTE is exact where it must be: level off, revert, singleton buckets, identical channels."""

import pytest
import torch
import torchvision
from torch import nn

import haste
from haste.functional import conv_padding, haste_conv2d
from haste.lsh import sample_hyperplanes

ARCHS = ["resnet18", "resnet50", "vgg11_bn", "wide_resnet50_2", "mobilenet_v2"]


def _randomised(model: nn.Module) -> nn.Module:
    """A torchvision model with non-trivial BatchNorm statistics, in eval mode."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    return model.eval()


@pytest.mark.parametrize("arch", ARCHS)
def test_off_and_revert_are_bit_exact(arch):
    model = _randomised(getattr(torchvision.models, arch)(num_classes=10))
    x = torch.randn(2, 3, 64, 48)
    with torch.no_grad():
        ref = model(x)
        state = {k: v.clone() for k, v in model.state_dict().items()}
        haste.convert(model, include_pointwise=True)
        assert haste.conversion(model).replaced
        with haste.compression("off"):
            assert torch.equal(model(x), ref)
        with haste.compression("high"):
            assert not torch.equal(model(x), ref)
        haste.revert(model)
        assert not any(isinstance(m, haste.HasteConv2d) for m in model.modules())
        assert torch.equal(model(x), ref)
        assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


def test_mobilenet_depthwise_convs_are_skipped_with_reason():
    model = torchvision.models.mobilenet_v2(num_classes=10).eval()
    with pytest.raises(ValueError, match="depthwise conv.*include_pointwise|1x1 conv.*depthwise"):
        haste.convert(model)  # without 1x1 convs nothing is left
    haste.convert(model, include_pointwise=True)
    record = haste.conversion(model)
    depthwise = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and m.groups > 1]
    assert depthwise, "mobilenet_v2 has depthwise convs"
    for name in depthwise:
        assert "depthwise" in record.skipped[name]
    assert record.replaced
    with torch.no_grad(), haste.compression("medium"):
        y = model(torch.randn(1, 3, 64, 64))
    assert y.shape == (1, 10) and torch.isfinite(y).all()


def test_convert_records_reasons_and_is_idempotent():
    model = torchvision.models.resnet18(num_classes=10)
    haste.convert(model)
    record = haste.conversion(model)
    assert "conv1" in record.skipped and "first conv" in record.skipped["conv1"]
    assert "1x1" in record.skipped["layer2.0.downsample.0"]
    assert "layer1.0.conv1" in record.replaced
    before = [id(m) for m in model.modules()]
    assert haste.convert(model) is model and haste.convert(model, patch_size=4) is model  # the same options
    assert [id(m) for m in model.modules()] == before
    with pytest.raises(ValueError, match=r"already converted \(patch_size=4.*patch_size=2, haste.revert"):
        haste.convert(model, patch_size=2)
    assert [id(m) for m in model.modules()] == before
    haste.revert(model)
    assert haste.conversion(model) is None
    haste.convert(model, include_pointwise=True)
    assert "layer2.0.downsample.0" in haste.conversion(model).replaced


def _singleton_check(k, stride, size, patch, c_in=12):
    conv = nn.Conv2d(c_in, 7, k, stride=stride, padding=k // 2)
    x = torch.randn(2, c_in, *size)
    region = ((patch - 1) * stride + k) ** 2
    planes = sample_hyperplanes(62, region, family="gaussian", seed=3)
    result = haste_conv2d(
        x, conv.weight, conv.bias, stride=conv.stride, padding=conv_padding(conv), patch=patch, planes=planes
    )
    assert int(result.groups.min()) == c_in, "every channel should be its own bucket"
    ref = conv(x)
    assert result.output.shape == ref.shape
    torch.testing.assert_close(result.output, ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("k", [1, 3, 5, 7])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("size", [(15, 15), (15, 22), (11, 31)])
def test_singleton_buckets_match_dense(k, stride, size):
    with torch.no_grad():
        _singleton_check(k, stride, size, patch=4)


@pytest.mark.parametrize("patch", [2, 3, 5, 8])
def test_patch_sizes_not_dividing_the_output(patch):
    with torch.no_grad():
        _singleton_check(3, 1, (13, 19), patch)
        _singleton_check(3, 2, (13, 19), patch)


def test_asymmetric_padding_and_rectangular_kernels():
    for conv in (
        nn.Conv2d(8, 5, (3, 5), stride=(1, 2), padding=(1, 2)),
        nn.Conv2d(8, 5, 4, padding="same"),
        nn.Conv2d(8, 5, 3, padding=0, bias=False),
    ):
        x = torch.randn(2, 8, 14, 11)
        region = (3 * conv.stride[0] + conv.kernel_size[0]) * (3 * conv.stride[1] + conv.kernel_size[1])
        planes = sample_hyperplanes(62, region, family="gaussian", seed=1)
        with torch.no_grad():
            r = haste_conv2d(
                x, conv.weight, conv.bias, stride=conv.stride, padding=conv_padding(conv), patch=4, planes=planes
            )
            assert int(r.groups.min()) == 8
            torch.testing.assert_close(r.output, conv(x), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("stride", [1, 2])
def test_identical_channels_make_one_bucket_and_stay_exact(stride):
    conv = nn.Conv2d(16, 6, 3, stride=stride, padding=1)
    x = torch.randn(3, 1, 19, 13).expand(3, 16, 19, 13).contiguous()
    wrapper = haste.HasteConv2d(conv, patch_size=4)
    with torch.no_grad(), haste.profile(wrapper) as report, haste.compression("high"):
        y = wrapper(x)
    torch.testing.assert_close(y, conv(x), rtol=1e-4, atol=1e-5)
    assert report.layers[""].mean_buckets == 1.0


def test_batch_independent():
    """An image's output does not depend on the other images of its batch."""
    model = _randomised(torchvision.models.resnet18(num_classes=10))
    haste.convert(model)
    x = torch.randn(4, 3, 40, 40)
    with torch.no_grad(), haste.compression("high"):
        together = model(x)
        alone = torch.cat([model(x[i : i + 1]) for i in range(4)])
    torch.testing.assert_close(together, alone, rtol=1e-4, atol=1e-4)
