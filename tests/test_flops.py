"""FLOPs accounting: torchvision's published counts and the profile identity."""

import pytest
import torch
import torchvision

import haste


@pytest.mark.parametrize(("arch", "gflops"), [("resnet18", 1.814), ("resnet34", 3.664), ("resnet50", 4.089)])
def test_dense_counts_match_torchvision(arch, gflops):
    model = getattr(torchvision.models, arch)()
    counted = haste.count_flops(model, (3, 224, 224)) / 1e9
    assert counted == pytest.approx(gflops, rel=0.005)
    # the number torchvision publishes with its weights
    published = torchvision.models.get_model_weights(arch).IMAGENET1K_V1.meta["_ops"]
    assert counted == pytest.approx(published, rel=0.005)
    haste.convert(model)
    assert haste.count_flops(model, (1, 3, 224, 224)) / 1e9 == pytest.approx(counted)


def test_count_flops_leaves_batchnorm_statistics_alone():
    model = torchvision.models.resnet18().train()
    before = model.bn1.running_mean.clone()
    haste.count_flops(model, (3, 64, 64))
    assert torch.equal(model.bn1.running_mean, before) and model.training
    with pytest.raises(ValueError, match="input_shape"):
        haste.count_flops(model, (64, 64))


def test_profile_off_saves_nothing_and_levels_add_up():
    model = haste.convert(torchvision.models.resnet18(num_classes=10).eval())
    x = torch.randn(3, 3, 56, 40)
    dense = haste.count_flops(model, (3, 56, 40))
    with torch.no_grad():
        with haste.profile(model) as off, haste.compression("off"):
            model(x)
        assert off.images == 3 and off.forwards == 1
        assert off.dense_flops == pytest.approx(dense)
        assert off.executed_flops == pytest.approx(dense)
        assert off.overhead_flops == 0 and off.saving == 0
        savings = []
        for level in ("low", "medium", "high"):
            with haste.profile(model) as r, haste.compression(level):
                model(x)
            assert r.dense_flops == pytest.approx(dense)
            assert r.executed_flops + r.overhead_flops + r.saved_flops == pytest.approx(r.dense_flops)
            assert 0 < r.executed_flops < dense and r.overhead_flops > 0
            assert len(r.per_image) == 3
            layer = r.layers["layer1.0.conv1"]
            assert layer.kind == "haste" and 1 <= layer.mean_buckets <= 64
            assert r.layers["conv1"].kind == "dense" and r.layers["fc"].kind == "dense"
            assert sum(s.dense_flops for s in r.layers.values()) == pytest.approx(dense)
            savings.append(r.saving)
        assert savings[0] < savings[1] < savings[2]


def test_profile_counts_per_image():
    """Different images get different executed counts; per-image rows sum to the totals."""
    model = haste.convert(torchvision.models.resnet18(num_classes=10).eval())
    x = torch.cat([torch.zeros(1, 3, 32, 32), torch.randn(1, 3, 32, 32)])
    with torch.no_grad(), haste.profile(model) as r, haste.compression("medium"):
        model(x)
        model(x[:1])
    assert r.forwards == 2 and r.images == 3
    constant, noisy, again = r.per_image
    assert constant[1] < noisy[1]  # a constant image merges far more
    assert constant == again


def test_profile_of_haste_layers_only_saves_the_same_flops():
    """dense_layers=False (no global hook, as the service uses it): the HASTE layers' saved multiply-adds
    per image equal the full profile's, and the layers listed are the HASTE layers only; its ``saving`` is
    a fraction of the HASTE layers' FLOPs, larger than the model's (as its docstring says)."""
    model = haste.convert(torchvision.models.resnet18(num_classes=10).eval())
    x = torch.cat([torch.zeros(1, 3, 32, 32), torch.randn(2, 3, 32, 32)])
    with torch.no_grad(), haste.compression("high"):
        with haste.profile(model) as full:
            model(x)
        with haste.profile(model, dense_layers=False) as light:
            model(x)
    assert light.forwards == 1 and light.images == 3
    assert set(light.layers) == {n for n, s in full.layers.items() if s.kind == "haste"}
    for (dense, executed, overhead), (d, e, o) in zip(full.per_image, light.per_image):
        assert d < dense and dense - executed - overhead == pytest.approx(d - e - o, rel=1e-12)
        assert d - e - o > 0
    assert light.saved_flops == pytest.approx(full.saved_flops, rel=1e-12)
    assert light.saving == pytest.approx(light.saved_flops / light.dense_flops) and light.saving > full.saving
    assert full.saving == pytest.approx(light.saved_flops / haste.count_flops(model, (3, 32, 32)))


def test_profile_ignores_other_threads():
    import threading

    model = haste.convert(torchvision.models.resnet18(num_classes=10).eval())
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad(), haste.profile(model) as r:
        t = threading.Thread(target=lambda: model(torch.randn(4, 3, 32, 32)))
        t.start()
        t.join()
        model(x)
    assert r.images == 1


@pytest.mark.parametrize("merge", ["mean", "scaled"])
def test_overhead_per_tile_follows_the_documented_count(merge):
    """Overhead per tile, multiply-adds: projections C*nnz, centring 2*C*L, sorting C*ceil(log2 C), input
    merge C*D, filter merge C_out*k^2*(C - G); the scaled merge adds the channel sums C*D and its scale
    factors 3*D*(C - G)."""
    from torch import nn

    conv = nn.Conv2d(16, 8, 3, padding=1)
    layer = haste.HasteConv2d(conv, name="c", merge=merge)
    x = torch.randn(1, 16, 8, 8)  # 4 tiles of 4x4, regions of 6x6
    with torch.no_grad(), haste.profile(layer) as r, haste.compression(hyperplanes=6):
        layer(x)
    stats = r.layers["c"]
    c, c_out, d, tiles, kk = 16, 8, 36, 4, 9
    g = stats.mean_buckets * tiles
    nnz = int(torch.count_nonzero(layer.planes[:6]))
    expected = tiles * (c * nnz + 2 * c * 6 + c * 4 + c * d) + c_out * kk * (tiles * c - g)
    if merge == "scaled":
        expected += tiles * c * d + 3 * d * (tiles * c - g)
    assert stats.overhead_flops == pytest.approx(expected)
    assert stats.executed_flops == pytest.approx(c_out * kk * g * 16)


def test_profile_of_a_model_that_splits_its_batch_counts_every_call():
    """A HASTE layer called on parts of the batch (another batch size than the forward's first layer): its calls'
    FLOPs are all counted, spread evenly over the forward's images, as for the dense layers."""
    from torch import nn

    class Split(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Conv2d(3, 8, 3, padding=1)
            self.conv = nn.Conv2d(8, 8, 3, padding=1)

        def forward(self, x):
            y = self.stem(x)
            return torch.cat([self.conv(y[:1]), self.conv(y[1:])])

    model = haste.convert(Split().eval())
    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad(), haste.compression(hyperplanes=4):
        with haste.profile(model) as whole:
            model(x)
        y = model.stem(x)
        with haste.profile(model.conv) as first:
            model.conv(y[:1])
        with haste.profile(model.conv) as rest:
            model.conv(y[1:])
    stats = whole.layers["conv"]
    assert stats.images == 3 and len(whole.per_image) == 3
    expected = first.layers["conv"].executed + rest.layers["conv"].executed
    assert stats.executed == pytest.approx(expected)
    assert sum(row[1] for row in whole.per_image) == pytest.approx(expected + whole.layers["stem"].executed)
