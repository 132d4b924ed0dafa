"""haste.fuse_batchnorm: BatchNorms folded into the convs before them, in place, for inference."""

from __future__ import annotations

import copy

import pytest
import torch
from test_fold import scrambled
from torch import nn

import haste


def _net() -> nn.Sequential:
    """conv -> BatchNorm -> ReLU -> conv (with bias) -> BatchNorm, in eval mode, the BatchNorms away from identity."""
    torch.manual_seed(0)
    return scrambled(
        nn.Sequential(
            nn.Conv2d(16, 32, 3, padding=1, bias=False),
            nn.BatchNorm2d(32),
            nn.ReLU(),
            nn.Conv2d(32, 32, 3, padding=1),
            nn.BatchNorm2d(32),
        )
    )


def test_fused_model_computes_the_same_up_to_rounding_with_one_op_per_conv():
    net, x = _net(), torch.randn(2, 16, 12, 12)
    with torch.no_grad():
        expected = net(x)
    assert haste.fuse_batchnorm(net) == {"0": "1", "3": "4"}
    assert isinstance(net[1], nn.Identity) and isinstance(net[4], nn.Identity)
    assert net[0].bias is not None  # the first BatchNorm's shift lives in the conv's new bias
    with torch.no_grad():
        torch.testing.assert_close(net(x), expected, rtol=1e-5, atol=1e-5)


def test_haste_on_a_fused_conv_is_haste_then_the_batchnorm():
    """The merge sums input-channel slices of the filter, the BatchNorm scales output channels: they commute. One
    conv, so both layers hash the same input (no rounding upstream can flip a hash)."""
    net = _net()[:2].eval()  # a slice is a new Sequential, in training mode
    kept, fused = copy.deepcopy(net), copy.deepcopy(net)
    haste.fuse_batchnorm(fused)
    options = {"start_layer": 0, "fold_batchnorm": False}
    haste.convert(kept, **options)
    haste.convert(fused, **options)
    x = torch.relu(torch.randn(2, 16, 12, 12))
    with torch.inference_mode():
        for setting in ({"level": "off"}, {"level": "high"}, {"hyperplanes": 4}):
            with haste.compression(**setting):
                torch.testing.assert_close(fused(x), kept(x), rtol=1e-4, atol=1e-4, msg=str(setting))
        with haste.compression(hyperplanes=4), haste.profile(fused) as after:
            fused(x)
        with haste.compression(hyperplanes=4), haste.profile(kept) as before:
            kept(x)
    assert after.per_image == before.per_image  # the same buckets, image by image
    assert all(executed < dense for dense, executed, _ in after.per_image)  # and channels were merged


def test_refuses_a_training_model_and_a_converted_one_and_leaves_them_unchanged():
    net = _net().train()
    with pytest.raises(ValueError, match=r"model\.eval\(\)"):
        haste.fuse_batchnorm(net)
    assert isinstance(net[1], nn.BatchNorm2d)
    net.eval()
    haste.convert(net)
    with pytest.raises(ValueError, match="before haste.convert"):
        haste.fuse_batchnorm(net)


class _Branchy(nn.Module):
    """Data-dependent control flow: torch.fx cannot trace it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return self.bn(y) if y.sum() > 0 else y


def test_leaves_what_it_cannot_fuse():
    """An untraceable model, a BatchNorm that reads another op's output, and one without running statistics
    keep their BatchNorms."""
    branchy = _Branchy().eval()
    assert haste.fuse_batchnorm(branchy) == {} and isinstance(branchy.bn, nn.BatchNorm2d)
    shared = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.BatchNorm2d(4)).eval()
    assert haste.fuse_batchnorm(shared) == {} and isinstance(shared[2], nn.BatchNorm2d)
    batch_stats = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4, track_running_stats=False)).eval()
    assert haste.fuse_batchnorm(batch_stats) == {} and isinstance(batch_stats[1], nn.BatchNorm2d)
