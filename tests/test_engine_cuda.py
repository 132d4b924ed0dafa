"""The GPU engine on a real GPU: the fused Triton kernel gives the reference implementation's buckets and
outputs, per conv (odd channel counts, maps that are not a multiple of the tile, batch 1, strides, kernel sizes,
both merge rules, float32 and the reduced precisions it accepts) and for whole reference models at every level.

Marked ``cuda``: skipped without a CUDA device and Triton; ``scripts/gpu_check.sh`` runs them on a GPU host
(``python -m pytest -m cuda``). On CPU, tests/test_engine.py checks the same kernel under Triton's interpreter.
"""

from __future__ import annotations

import copy
import importlib.util

import pytest
import torch
from torch import nn

import haste
from haste import engine
from haste.functional import conv_padding
from haste.lsh import sample_hyperplanes

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
    pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="needs Triton"),
]

CASES = [
    # c_in, c_out, kernel, stride, padding, size, patch, hyperplanes, batch
    (16, 8, 3, 1, 1, (17, 13), 4, 7, 3),
    (3, 5, 3, 1, 1, (9, 7), 4, 5, 1),  # 3 input channels, batch 1
    (33, 17, 3, 2, 1, (16, 16), 4, 10, 2),  # odd channel counts, stride 2
    (64, 40, 1, 1, 0, (9, 9), 3, 6, 2),  # 1x1
    (16, 16, 5, 1, 2, (12, 20), 8, 12, 1),
    (32, 8, 7, 2, 3, (23, 19), 2, 5, 2),
    (8, 33, (3, 5), (1, 2), (0, 2), (11, 14), 4, 20, 2),  # rectangular kernel and stride
    (7, 130, 3, 1, 1, (8, 8), 4, 5, 1),  # wide output: three blocks of output channels
    (64, 16, 3, 1, 1, (4, 4), 8, 40, 4),  # one tile larger than the map
]


def conv_and_args(c_in, c_out, k, stride, pad, patch, hyperplanes, merge, device="cuda"):
    conv = nn.Conv2d(c_in, c_out, k, stride=stride, padding=pad).to(device)
    region = ((patch - 1) * conv.stride[0] + conv.kernel_size[0]) * ((patch - 1) * conv.stride[1] + conv.kernel_size[1])
    planes = sample_hyperplanes(hyperplanes, region, family="ternary", seed=1).to(device)
    return conv, dict(stride=conv.stride, padding=conv_padding(conv), patch=patch, planes=planes, merge=merge)


@pytest.mark.parametrize("merge", ["mean", "scaled"])
@pytest.mark.parametrize(("c_in", "c_out", "k", "stride", "pad", "size", "patch", "hyperplanes", "batch"), CASES)
def test_triton_engine_matches_reference_on_cuda(c_in, c_out, k, stride, pad, size, patch, hyperplanes, batch, merge):
    """Integer-valued inputs make every projection exact: the same codes on the GPU as on the CPU reference."""
    conv, args = conv_and_args(c_in, c_out, k, stride, pad, patch, hyperplanes, merge)
    x = torch.randint(-3, 4, (batch, c_in, *size), device="cuda").float()
    with torch.no_grad():
        assert engine.choose(x, conv.weight) == "triton"
        tri = engine.conv2d(x, conv.weight, conv.bias, engine="triton", **args)
        ref = engine.conv2d(x, conv.weight, conv.bias, engine="reference", **args)
        cpu_ref = engine.conv2d(
            x.cpu(), conv.weight.cpu(), conv.bias.cpu(), engine="reference", **{**args, "planes": args["planes"].cpu()}
        )
    assert tri.output.device.type == "cuda" and tri.output.dtype == torch.float32
    assert torch.equal(tri.groups, ref.groups) and torch.equal(tri.groups.cpu(), cpu_ref.groups)
    if hyperplanes <= 10 and c_in > 3:
        assert tri.groups.float().mean() < c_in  # some channels merged
    tol = 1e-4 if merge == "mean" else 1e-3
    torch.testing.assert_close(tri.output, ref.output, rtol=tol, atol=tol)
    torch.testing.assert_close(tri.output.cpu(), cpu_ref.output, rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("merge", ["mean", "scaled"])
def test_reduced_precision_inputs_match_the_float32_reference(dtype, merge):
    """Half and bfloat16 tensors run through the Triton engine (computed in float32, returned in the input's
    dtype); the reference on the same values in float32 agrees within the output dtype's rounding."""
    conv, args = conv_and_args(24, 19, 3, 1, 1, 4, 8, merge)
    conv = conv.to(dtype)
    x = torch.randint(-3, 4, (2, 24, 15, 11), device="cuda").to(dtype)
    with torch.no_grad():
        assert engine.choose(x, conv.weight) == "triton"
        tri = engine.conv2d(x, conv.weight, conv.bias, engine="triton", **args)
        ref = engine.conv2d(x.float(), conv.weight.float(), conv.bias.float(), engine="reference", **args)
    assert tri.output.dtype == dtype
    assert torch.equal(tri.groups, ref.groups)
    torch.testing.assert_close(tri.output.float(), ref.output, rtol=2e-2, atol=2e-2)


def reference_model(name: str) -> nn.Module:
    model = haste.zoo.load(name)
    haste.convert(model)
    return model.cuda()


@pytest.mark.parametrize("name", ["fmnist-resnet34", "fmnist-vgg16_bn"])
@pytest.mark.parametrize("batch", [1, 5])
def test_reference_model_on_cuda_matches_reference_engine_at_every_level(name, batch):
    """A converted reference model on CUDA: at every level the Triton engine gives the reference engine's
    logits and the same FLOPs accounting; ``off`` is the dense model (cuDNN)."""
    model = reference_model(name)
    dense = copy.deepcopy(model)
    haste.revert(dense)
    card = model.haste_card
    x = torch.randn(batch, card["input"]["channels"], 32, 32, device="cuda").relu()
    with torch.no_grad():
        with haste.compression("off"):
            torch.testing.assert_close(model(x), dense(x), rtol=1e-6, atol=1e-6)  # the wrapped convs themselves
        for level in haste.LEVELS:
            if level == "off":
                continue
            with haste.compression(level), haste.profile(model) as fast:
                out = model(x)
            with haste.compression(level), engine.forced("reference"), haste.profile(model) as slow:
                ref = model(x)
            torch.testing.assert_close(out, ref, rtol=1e-3, atol=1e-3)
            assert out.argmax(1).tolist() == ref.argmax(1).tolist()
            assert fast.saving == pytest.approx(slow.saving, abs=1e-9) and 0 < fast.saving < 1
    assert engine.triton_failed is None


def test_odd_sized_inputs_through_a_reference_model():
    """Maps that are not a multiple of the tile anywhere in the network (29x23 input), batch 1 and 3."""
    model = reference_model("fmnist-resnet34")
    for batch in (1, 3):
        x = torch.randn(batch, model.haste_card["input"]["channels"], 29, 23, device="cuda").relu()
        with torch.no_grad(), haste.compression("high"):
            out = model(x)
            with engine.forced("reference"):
                ref = model(x)
        assert out.shape == (batch, 10)
        torch.testing.assert_close(out, ref, rtol=1e-3, atol=1e-3)
