"""Folding BatchNorms into the HASTE layers before them (haste.fold): which pairs, what level off and the other
levels compute, state_dict keys, training mode, edits of the statistics, revert, models torch.fx cannot trace."""

import copy

import pytest
import torch
import torchvision
from torch import nn

import haste
from haste.fold import FoldedBatchNorm2d, batchnorm_pairs

X = torch.randn(2, 3, 32, 32)


def scrambled(model: nn.Module) -> nn.Module:
    """``model`` in eval mode, its BatchNorms' statistics and affine parameters drawn away from the identity."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            with torch.no_grad():
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    return model.eval()


def resnet() -> nn.Module:
    """A torchvision resnet18 with BatchNorm statistics and affine parameters that are not the identity."""
    torch.manual_seed(0)
    return scrambled(torchvision.models.resnet18(num_classes=10))


def test_every_converted_conv_read_only_by_a_batchnorm_takes_it_in():
    dense = resnet()
    model = haste.convert(copy.deepcopy(dense))
    record = haste.conversion(model)
    block_convs = [n for n in record.replaced if n.endswith(("conv1", "conv2")) and n != "conv1"]
    assert record.folded == {n: n.replace("conv", "bn") for n in block_convs} and record.unfolded is None
    for conv_name, bn_name in record.folded.items():
        bn = model.get_submodule(bn_name)
        assert type(bn) is FoldedBatchNorm2d and model.get_submodule(conv_name).batchnorm is bn
    assert type(model.bn1) is nn.BatchNorm2d  # after the stem, which stays dense
    assert type(model.layer2[0].downsample[1]) is nn.BatchNorm2d  # after a 1x1 conv, which stays dense
    assert list(model.state_dict()) == list(dense.state_dict())


def test_level_off_is_bit_exact_and_other_levels_match_the_unfolded_model():
    dense = resnet()
    folded = haste.convert(copy.deepcopy(dense))
    unfolded = haste.convert(copy.deepcopy(dense), fold_batchnorm=False)
    assert haste.conversion(unfolded).folded == {}
    with torch.no_grad():
        with haste.compression("off"):
            assert torch.equal(folded(X), dense(X))
        for setting in ({"level": "high"}, {"hyperplanes": 5}):
            with haste.compression(**setting):  # the CPU kernel applies the BatchNorms as it writes
                torch.testing.assert_close(folded(X), unfolded(X), rtol=1e-4, atol=1e-4)
            with haste.engine.forced("reference"), haste.compression(**setting):  # the BatchNorm right after
                assert torch.equal(folded(X), unfolded(X))


def test_a_layer_run_alone_returns_its_batchnorm_output_except_at_off():
    model = haste.convert(resnet())
    layer, bn = model.layer1[0].conv1, model.layer1[0].bn1
    x = torch.randn(2, 64, 8, 8)
    with torch.no_grad():
        with haste.compression("off"):
            assert torch.equal(layer(x), layer.conv(x)) and torch.equal(bn(x), nn.BatchNorm2d.forward(bn, x))
        with haste.compression("high"):
            assert torch.equal(bn(x), x)
            with haste.engine.forced("reference"):
                expected = nn.BatchNorm2d.forward(bn, haste.engine.conv2d(
                    x, layer.conv.weight, layer.conv.bias, stride=(1, 1), padding=(1, 1, 1, 1), patch=4,
                    planes=layer.planes[: layer.hyperplanes()], engine="reference", merge=layer.merge,
                ).output)  # fmt: skip
                assert torch.equal(layer(x), expected)


def test_training_mode_runs_the_batchnorm_with_batch_statistics():
    dense = resnet()
    folded = haste.convert(copy.deepcopy(dense)).train()
    unfolded = haste.convert(copy.deepcopy(dense), fold_batchnorm=False).train()
    with torch.no_grad(), haste.compression("high"):
        torch.testing.assert_close(folded(X), unfolded(X), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(folded.layer1[0].bn1.running_mean, unfolded.layer1[0].bn1.running_mean)
    assert not torch.equal(folded.layer1[0].bn1.running_mean, dense.layer1[0].bn1.running_mean)


def test_revert_gives_the_batchnorms_their_class_back():
    dense = resnet()
    model = haste.convert(copy.deepcopy(dense))
    haste.revert(model)
    assert not any(isinstance(m, FoldedBatchNorm2d) for m in model.modules())
    with torch.no_grad():
        assert torch.equal(model(X), dense(X))
    assert haste.conversion(haste.convert(model)).folded  # and it converts again


class Untraceable(nn.Module):
    """A forward that branches on a value (torch.fx cannot trace it)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.head = nn.Conv2d(8, 8, 3, padding=1)

    def forward(self, x):
        y = self.bn(self.head(self.conv(x)))
        return y if float(y.mean()) > -1e9 else -y


class Shared(nn.Module):
    """The second conv's output is read by its BatchNorm and by the residual addition."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.conv = nn.Conv2d(8, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)

    def forward(self, x):
        y = self.conv(self.stem(x))
        return self.bn(y) + y


def test_no_fold_where_the_batchnorm_is_not_the_only_reader_or_the_model_cannot_be_traced():
    for model in (Shared().eval(), Untraceable().eval()):
        reference = copy.deepcopy(model)
        haste.convert(model)
        record = haste.conversion(model)
        assert record.folded == {} and type(model.bn) is nn.BatchNorm2d
        with torch.no_grad(), haste.engine.forced("reference"), haste.compression("high"):
            converted = model(X)
        haste.revert(model)
        with torch.no_grad():
            assert converted.shape == reference(X).shape
    assert "torch.fx cannot trace the model" in haste.conversion(haste.convert(Untraceable())).unfolded
    assert batchnorm_pairs(Shared()) == ({}, None)


def test_a_wrong_batchnorm_is_refused():
    with pytest.raises(ValueError, match="batchnorm must be an nn.BatchNorm2d over the conv's 8 output channels"):
        haste.HasteConv2d(nn.Conv2d(3, 8, 3), batchnorm=nn.BatchNorm2d(4))


def _edit_statistics(model):
    model.layer1[0].bn1.running_var.mul_(4)  # in place: its version moves
    model.layer2[1].bn2.load_state_dict({**model.layer2[1].bn2.state_dict(), "bias": torch.ones(128)})


def _replace_conv_weight(model):
    conv = model.layer1[0].conv1.conv
    conv.weight = nn.Parameter(conv.weight.detach() * 2)


def _replace_statistics(model):
    bn = model.layer1[0].bn1
    bn.running_mean = bn.running_mean + 0.3


def _edit_eps(model):
    model.layer1[0].bn1.eps = 0.5


def _edit_weight_in_place(model):
    with torch.no_grad():
        model.layer2[0].conv2.conv.weight.mul_(-1)


def _edit_affine_through_data(model):
    model.layer1[1].bn2.weight.data = model.layer1[1].bn2.weight.data * 3


def _train_the_batchnorm(model):
    model.layer1[0].bn1.train()


@pytest.fixture()
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize(
    "edit",
    [_edit_statistics, _replace_conv_weight, _replace_statistics, _edit_eps, _edit_weight_in_place,
     _edit_affine_through_data, _train_the_batchnorm],
)  # fmt: skip
def test_a_kept_call_runs_again_only_while_what_it_read_is_unchanged(edit, one_thread):
    """A layer's kept CPU call (the serving path) checks the conv's and its BatchNorm's tensors, their replacement,
    eps and the training flag: after each edit the converted model computes what the unfolded one does. On one
    thread: a BatchNorm in training mode reduces its batch statistics in an order that depends on the threads, and
    a last-bit difference there can flip a hash sign downstream (a merge, not the kept call, would then differ)."""
    dense = resnet()
    folded = haste.convert(copy.deepcopy(dense))
    unfolded = haste.convert(copy.deepcopy(dense), fold_batchnorm=False)
    with torch.no_grad(), haste.compression("high"):
        folded(X)
        folded(X)  # the kept calls
        for model in (folded, unfolded):
            edit(model)
        torch.testing.assert_close(folded(X), unfolded(X), rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(folded(X), unfolded(X), rtol=1e-4, atol=1e-4)  # kept again after the edit


def test_a_kept_call_steps_aside_for_gradients_and_a_forced_engine():
    model = haste.convert(resnet())
    x = X.clone().requires_grad_(True)
    with haste.compression("high"):
        with torch.no_grad():
            model(X)
            model(X)
        model(x).sum().backward()  # the reference engine: differentiable
        assert x.grad is not None and x.grad.abs().sum() > 0
        with torch.no_grad():
            with haste.engine.forced("reference"):
                expected = model(X)
            torch.testing.assert_close(model(X), expected, rtol=1e-4, atol=1e-4)
