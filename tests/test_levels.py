"""Levels: validation, nesting, seeds and thread safety."""

import threading

import pytest
import torch
import torchvision
from torch import nn

import haste
from haste.buckets import bucketize
from haste.lsh import hash_codes, sample_hyperplanes
from haste.tiles import geometry, regions


def _model(seed=0):
    model = torchvision.models.resnet18(num_classes=10).eval()
    return haste.convert(model, seed=seed)


def test_levels_table():
    assert list(haste.LEVELS) == ["off", "low", "medium", "high"]
    assert haste.LEVELS["off"] == 0
    assert haste.LEVELS["low"] > haste.LEVELS["medium"] > haste.LEVELS["high"] > 0
    with pytest.raises(TypeError):
        haste.LEVELS["high"] = 3


@pytest.mark.parametrize("bad", ["ultra", "", "HIGH", 3, None])
def test_unknown_level_names(bad):
    with pytest.raises(ValueError, match="off, low, medium, high"):
        with haste.compression(bad):
            pass


@pytest.mark.parametrize("bad", [0, -1, 63, 1000, 2.5, True, "8"])
def test_out_of_range_hyperplanes(bad):
    """compression checks against the largest any layer may sample (62); each layer against its own maximum."""
    with pytest.raises(ValueError, match="hyperplanes must be an integer from 1 to 62"):
        with haste.compression(hyperplanes=bad):
            pass


def test_exactly_one_of_level_or_hyperplanes():
    with pytest.raises(ValueError, match="exactly one"):
        with haste.compression("high", hyperplanes=3):
            pass


def test_level_is_restored_after_block():
    assert haste.levels.current().level == haste.DEFAULT_LEVEL
    with haste.compression("high"):
        with haste.compression(hyperplanes=5):
            assert haste.levels.current().hyperplanes == 5
        assert haste.levels.current().level == "high"
    assert haste.levels.current().level == haste.DEFAULT_LEVEL


def test_hyperplanes_above_layer_maximum_rejected():
    model = haste.convert(
        torchvision.models.resnet18(num_classes=10).eval(), max_hyperplanes=8, levels={"low": 8, "medium": 6, "high": 4}
    )
    with pytest.raises(ValueError, match="from 1 to 8"), haste.compression(hyperplanes=12), torch.no_grad():
        model(torch.randn(1, 3, 32, 32))


def test_per_layer_schedule():
    model = torchvision.models.resnet18(num_classes=10).eval()
    haste.convert(model, levels={"high": {"layer1.0.conv1": 3, "default": 6}, "low": 20})
    assert model.layer1[0].conv1.levels["high"] == 3
    assert model.layer2[0].conv1.levels["high"] == 6
    assert model.layer2[0].conv1.levels["low"] == 20
    assert model.layer2[0].conv1.levels["medium"] == haste.LEVELS["medium"]
    with pytest.raises(ValueError, match="level must be one of"):
        haste.convert(torchvision.models.resnet18(), levels={"extreme": 2})


def test_same_seed_same_result_different_seed_differs():
    x = torch.randn(2, 3, 48, 48)
    with torch.no_grad(), haste.compression("high"):
        torch.manual_seed(1)
        a = _model(seed=7)
        torch.manual_seed(1)
        b = _model(seed=7)
        torch.manual_seed(1)
        c = _model(seed=8)
        ya, yb, yc = a(x), b(x), c(x)
    assert torch.equal(ya, yb)
    assert not torch.equal(ya, yc)


def test_nested_hyperplanes_never_fewer_buckets():
    torch.manual_seed(0)
    x = torch.relu(torch.randn(2, 32, 20, 20))
    for family in ("ternary", "gaussian"):
        geo = geometry((20, 20), (3, 3), (1, 1), (1, 1, 1, 1), 4)
        reg = regions(x, geo, (1, 1, 1, 1))
        planes = sample_hyperplanes(24, reg.shape[-1], family=family, seed=5)
        previous = None
        for L in range(1, 25):
            b = bucketize(hash_codes(reg, planes[:L]))
            if previous is not None:
                assert (b.groups >= previous.groups).all()
                # refinement: channels apart at L stay apart at L + 1
                same = previous.index[:, :, None] != previous.index[:, None, :]
                assert (b.index[:, :, None] != b.index[:, None, :])[same].all()
            previous = b


def test_threads_at_different_levels_match_single_runs():
    model = _model()
    x = torch.randn(2, 3, 40, 40)
    settings = [("off", None), ("low", None), ("medium", None), ("high", None), (None, 5), (None, 11)]
    with torch.no_grad():
        expected = {}
        for level, hp in settings:
            with haste.compression(level, hyperplanes=hp):
                expected[(level, hp)] = model(x)
        results, errors = {}, []
        barrier = threading.Barrier(len(settings))

        def run(level, hp):
            try:
                barrier.wait()
                for _ in range(3):  # grad mode is per thread, like the level
                    with torch.no_grad(), haste.compression(level, hyperplanes=hp):
                        y = model(x)
                    results.setdefault((level, hp), []).append(y)
            except Exception as exc:  # pragma: no cover - reported below
                errors.append(exc)

        threads = [threading.Thread(target=run, args=s) for s in settings]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert not errors
    for key, ys in results.items():
        for y in ys:
            assert torch.equal(y, expected[key]), key
    assert not torch.equal(expected[("off", None)], expected[("high", None)])


def test_default_level_applies_outside_context():
    model = _model()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        y = model(x)
        with haste.compression(haste.DEFAULT_LEVEL):
            assert torch.equal(model(x), y)


def test_bad_inputs():
    with pytest.raises(ValueError, match="no convolution of this model can be converted"):
        haste.convert(nn.Sequential(nn.Flatten(), nn.Linear(4, 2)))
    with pytest.raises(ValueError, match="depthwise"):
        haste.convert(nn.Sequential(nn.Conv2d(3, 8, 3), nn.Conv2d(8, 8, 3, groups=8)))
    with pytest.raises(ValueError, match="hash must be one of ternary, gaussian"):
        haste.convert(torchvision.models.resnet18(), hash="md5")
    with pytest.raises(ValueError, match="sparsity"):
        haste.convert(torchvision.models.resnet18(), sparsity=1.5)
    with pytest.raises(ValueError, match="patch_size"):
        haste.convert(torchvision.models.resnet18(), patch_size=0)
    model = _model()
    with torch.no_grad(), haste.compression("high"):
        with pytest.raises(ValueError, match=r"4D \(N, C, H, W\) or 3D \(C, H, W\) input"):
            model.layer1[0].conv1(torch.randn(8, 8))
        with pytest.raises(ValueError, match="expects 64 input channels"):
            model.layer1[0].conv1(torch.randn(1, 32, 8, 8))
        with pytest.raises(ValueError, match="smaller than the kernel"):
            haste.HasteConv2d(nn.Conv2d(4, 4, 5))(torch.randn(1, 4, 3, 3))


def test_zero_in_a_schedule_runs_that_layer_dense():
    """A per-layer 0 (where merging does not pay) runs that conv dense at that level, bit-exact (followed by the
    BatchNorm it took in: haste.fold), and the profile counts no saving and no overhead for it; the other layers
    still merge."""
    from haste_lab.sweep import conv_names, schedule_table

    dense = torchvision.models.resnet18(num_classes=10).eval()
    table = schedule_table(conv_names(dense), 6, "layer1.0.conv1=0,layer4=+2")
    assert table["layer1.0.conv1"] == 0 and table["layer4.0.conv1"] == 8 and table["default"] == 6
    model = haste.convert(dense, levels={"high": table})
    layer = model.layer1[0].conv1
    x = torch.randn(2, 64, 16, 16)
    with torch.no_grad(), haste.compression("high"):
        assert layer.hyperplanes() == 0
        assert torch.equal(layer(x), nn.BatchNorm2d.forward(model.layer1[0].bn1, layer.conv(x)))
        with haste.profile(model) as report:
            model(torch.randn(2, 3, 32, 32))
    stats = report.layers["layer1.0.conv1"]
    assert stats.saving == 0 and stats.overhead == 0
    assert report.layers["layer1.0.conv2"].saving > 0


def test_convert_adopts_the_options_of_the_model_card():
    """Options left unset come from the card the levels were calibrated with; an option passed that
    differs keeps the card's levels out (they were measured for other settings)."""
    card = {
        "haste": {"options": {"patch_size": 2, "seed": 3, "sparsity": 0.5, "merge": "scaled"}, "levels": {"high": 9}}
    }
    dense = torchvision.models.resnet18(num_classes=10).eval()
    dense.haste_card = card
    model = haste.convert(dense)
    options = haste.conversion(model).options
    assert (options["patch_size"], options["seed"], options["sparsity"], options["hash"]) == (2, 3, 0.5, "ternary")
    layer = model.layer1[0].conv1
    assert layer.patch_size == 2 and layer.levels["high"] == 9 and layer.merge == "scaled"
    other = torchvision.models.resnet18(num_classes=10).eval()
    other.haste_card = card
    haste.convert(other, patch_size=4)
    assert other.layer1[0].conv1.patch_size == 4 and other.layer1[0].conv1.merge == "scaled"
    assert other.layer1[0].conv1.levels["high"] == haste.LEVELS["high"]


def test_convert_rejects_an_unknown_merge_rule():
    with pytest.raises(ValueError, match="merge must be one of mean, scaled; got 'median'"):
        haste.convert(torchvision.models.resnet18(num_classes=10), merge="median")
