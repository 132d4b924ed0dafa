"""The fused CPU engine gives the reference implementation's buckets and outputs."""

import pytest
import torch
import torchvision
from torch import nn

import haste
from haste import engine
from haste.flops import tile_sums
from haste.functional import conv_padding
from haste.lsh import sample_hyperplanes

pytestmark = pytest.mark.skipif(not engine.cpu_kernel_available(), reason=f"CPU kernel: {engine.unavailable}")

CASES = [
    # c_in, c_out, kernel, stride, padding, size, patch, hyperplanes, family
    (16, 8, 3, 1, 1, (17, 13), 4, 7, "ternary"),
    (32, 16, 3, 2, 1, (16, 16), 4, 10, "gaussian"),
    (64, 40, 1, 1, 0, (9, 9), 3, 6, "ternary"),
    (16, 16, 5, 1, 2, (12, 20), 8, 12, "ternary"),
    (32, 8, 7, 2, 3, (23, 19), 2, 5, "ternary"),
    (8, 33, (3, 5), (1, 2), (0, 2), (11, 14), 4, 20, "ternary"),
    (12, 20, 3, 1, 1, (10, 9), 4, 9, "ternary"),
    (24, 7, 3, 2, 1, (13, 12), 2, 16, "gaussian"),
    (64, 16, 3, 1, 1, (4, 4), 8, 40, "gaussian"),
    # the most hyperplanes a layer may have: 8 plane vectors on an 8-lane (AVX2) build, 4 on AVX-512
    (16, 24, 3, 1, 1, (9, 9), 4, 62, "gaussian"),
    # wide output: two 64-channel micro-kernel blocks and a scalar remainder of 2 channels
    (32, 130, 3, 1, 1, (8, 8), 4, 5, "ternary"),
]


@pytest.mark.parametrize("merge", ["mean", "scaled"])
@pytest.mark.parametrize(("c_in", "c_out", "k", "stride", "pad", "size", "patch", "hyperplanes", "family"), CASES)
def test_cpu_engine_matches_reference(c_in, c_out, k, stride, pad, size, patch, hyperplanes, family, merge):
    """Integer-valued inputs make every projection exact, so both engines must find the same codes
    (for either merge rule; the scaled merge's factors are rounded differently, hence its tolerance)."""
    conv = nn.Conv2d(c_in, c_out, k, stride=stride, padding=pad)
    x = torch.randint(-3, 4, (3, c_in, *size)).float()
    region = ((patch - 1) * conv.stride[0] + conv.kernel_size[0]) * ((patch - 1) * conv.stride[1] + conv.kernel_size[1])
    planes = sample_hyperplanes(hyperplanes, region, family="ternary", seed=1)
    if family == "gaussian":  # integer-valued Gaussian-like planes keep the projections exact
        planes = torch.round(sample_hyperplanes(hyperplanes, region, family="gaussian", seed=1) * 3)
    args = dict(stride=conv.stride, padding=conv_padding(conv), patch=patch, planes=planes, merge=merge)
    with torch.no_grad():
        ref = engine.conv2d(x, conv.weight, conv.bias, engine="reference", **args)
        cpu = engine.conv2d(x, conv.weight, conv.bias, engine="cpu", **args)
    assert torch.equal(ref.groups, cpu.groups.to(torch.int64))
    tol = 1e-5 if merge == "mean" else 1e-4
    torch.testing.assert_close(cpu.output, ref.output, rtol=tol, atol=tol)
    # the kernel's per-image FLOPs sums equal those computed from the reference's buckets per tile
    operands = (engine.weight_layout(conv.weight), conv.bias.detach(), planes.contiguous())
    geometry_args = (conv.kernel_size, conv.stride, conv_padding(conv), patch, merge == "scaled", conv.out_channels)
    _, _, sums = engine.cpu_conv2d(x, *operands, *geometry_args)
    assert sums.tolist() == tile_sums(ref.geometry, ref.groups)


@pytest.mark.parametrize("engine_name", ["reference", "cpu"])
def test_scaled_merge_is_exact_for_channels_that_are_multiples_of_one_another(engine_name):
    """Channels that are positive multiples of one base pattern hash alike under the within-channel hash
    and merge exactly with least-squares scales; so do flat channels (code 0) inside the image, and at its
    border (zero padding) their +/- multiples of the padding mask: at most 4 buckets of 12, dense output."""
    conv = nn.Conv2d(12, 24, 3, padding=1)
    base = torch.randn(2, 1, 8, 8)
    scales = torch.tensor([0.5, 1.0, 2.0, 3.0, 0.25, 1.5, 4.0, 0.75])
    flat = torch.tensor([0.0, 1.0, -2.0, 0.5])[None, :, None, None] * torch.ones(2, 4, 8, 8)
    x = torch.cat([base * scales[None, :, None, None], flat], dim=1)
    planes = sample_hyperplanes(10, 36, family="ternary", seed=5)
    args = dict(stride=conv.stride, padding=conv_padding(conv), patch=4, planes=planes, engine=engine_name)
    with torch.no_grad():
        dense = conv(x)
        scaled = engine.conv2d(x, conv.weight, conv.bias, merge="scaled", **args)
    assert scaled.groups.max().item() <= 4
    torch.testing.assert_close(scaled.output, dense, rtol=1e-4, atol=1e-4)
    mean = engine.conv2d(x, conv.weight, conv.bias, merge="mean", **args)
    assert (mean.output - dense).abs().max() > 0.1  # the paper's merge of the same channels is not exact


@pytest.mark.parametrize("merge", ["mean", "scaled"])
def test_large_weights_match_reference(merge):
    """Weights larger than the L2 cache (128 -> 264 channels, 3x3: 1.2 MB), many tiles, partial edge tiles and
    output channels beyond a multiple of 16 (264): the kernel still equals the reference."""
    conv = nn.Conv2d(128, 264, 3, padding=1)
    x = torch.randint(-3, 4, (3, 128, 13, 11)).float()  # 4 x 3 tiles per image, 36 in all, edge tiles partial
    planes = sample_hyperplanes(6, 36, family="ternary", seed=4)
    args = dict(stride=conv.stride, padding=conv_padding(conv), patch=4, planes=planes, merge=merge)
    with torch.no_grad():
        ref = engine.conv2d(x, conv.weight, conv.bias, engine="reference", **args)
        cpu = engine.conv2d(x, conv.weight, conv.bias, engine="cpu", **args)
    assert torch.equal(ref.groups, cpu.groups.to(torch.int64)) and ref.groups.float().mean() < 128
    torch.testing.assert_close(cpu.output, ref.output, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("merge", ["mean", "scaled"])
@pytest.mark.parametrize("c_out", [72, 40, 256])
def test_single_tile_gemm_split_over_threads_matches_reference(c_out, merge):
    """One image, one tile, more threads than tiles: the kernel splits the GEMM (and the merged filter
    sums) by output channels."""
    conv = nn.Conv2d(24, c_out, 3, padding=1)
    x = torch.randint(-3, 4, (1, 24, 4, 4)).float()
    planes = sample_hyperplanes(6, 36, family="ternary", seed=3)
    args = dict(stride=conv.stride, padding=conv_padding(conv), patch=4, planes=planes, merge=merge)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with torch.no_grad():
            ref = engine.conv2d(x, conv.weight, conv.bias, engine="reference", **args)
            cpu = engine.conv2d(x, conv.weight, conv.bias, engine="cpu", **args)
    finally:
        torch.set_num_threads(threads)
    assert cpu.groups.tolist() == ref.groups.tolist() and ref.groups.item() < 24  # some buckets merged
    tol = 1e-5 if merge == "mean" else 1e-4
    torch.testing.assert_close(cpu.output, ref.output, rtol=tol, atol=tol)


def test_model_outputs_agree_and_engine_is_used():
    model = haste.convert(torchvision.models.resnet18(num_classes=10).eval())
    x = torch.randn(2, 3, 48, 40)
    conv = model.layer1[0].conv1
    with torch.no_grad(), haste.compression("medium"):
        assert engine.choose(x, conv.conv.weight) == "cpu"
        fast = model(x)
    with torch.no_grad(), haste.compression("medium"), engine.forced("reference"):
        assert engine.choose(x, conv.conv.weight) == "reference"
        slow = model(x)
    with pytest.raises(ValueError, match="engine must be one of cpu, triton, reference"):
        with engine.forced("gpu"):
            pass
    # float inputs: a projection within rounding of zero may flip a bit, so compare predictions
    assert (fast.argmax(1) == slow.argmax(1)).all()
    torch.testing.assert_close(fast, slow, rtol=0.05, atol=0.05)


def test_gradients_use_the_reference_engine():
    conv = nn.Conv2d(8, 8, 3, padding=1)
    wrapper = haste.HasteConv2d(conv)
    x = torch.randn(1, 8, 9, 9, requires_grad=True)
    assert engine.choose(x, conv.weight) == "reference"
    with haste.compression("high"):
        wrapper(x).sum().backward()
    assert x.grad is not None and conv.weight.grad is not None


def test_weight_changes_invalidate_the_cached_layout():
    conv = nn.Conv2d(8, 8, 3, padding=1)
    wrapper = haste.HasteConv2d(conv)
    x = torch.randn(1, 8, 9, 9)
    with torch.no_grad(), haste.compression("low"):
        before = wrapper(x)
        conv.weight.mul_(2)
        after = wrapper(x)
    torch.testing.assert_close(after - conv.bias[None, :, None, None], 2 * (before - conv.bias[None, :, None, None]))


def test_a_failing_triton_engine_falls_back_to_the_reference(monkeypatch, caplog):
    """Chosen automatically, a Triton engine that cannot run (here: CPU tensors without Triton's interpreter,
    like a GPU image without a C compiler for Triton's driver) logs why once and the reference answers;
    forced, the error propagates."""
    pytest.importorskip("triton")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setattr(engine, "triton_failed", None)
    conv = nn.Conv2d(6, 5, 3, padding=1)
    x = torch.randn(1, 6, 8, 8)
    args = dict(stride=(1, 1), padding=(1, 1, 1, 1), patch=4, planes=sample_hyperplanes(4, 36, seed=0))
    with torch.no_grad():
        with engine.forced("triton"), pytest.raises(RuntimeError):  # Triton: "0 active drivers"
            engine.conv2d(x, conv.weight, conv.bias, engine="triton", **args)
        assert engine.triton_failed is None
        fallback = engine.conv2d(x, conv.weight, conv.bias, engine="triton", **args)
        ref = engine.conv2d(x, conv.weight, conv.bias, engine="reference", **args)
    assert engine.triton_failed and "Triton engine failed" in caplog.text
    torch.testing.assert_close(fallback.output, ref.output, rtol=0, atol=0)

    class FakeCuda:  # choose() only looks at the device and grads
        device = torch.device("cuda")
        is_cpu = False
        requires_grad = False

    with torch.no_grad():
        assert engine.choose(FakeCuda(), conv.weight) == "reference"  # CUDA tensors no longer try Triton


def test_kernel_build_is_named_by_what_goes_into_it():
    """Checkouts and environments sharing TORCH_EXTENSIONS_DIR keep separate builds, not one they rebuild in turn."""
    name = engine.build_name("", engine._CFLAGS)
    assert name == engine.build_name("", engine._CFLAGS)  # stable: a second load reuses the build
    assert name != engine.build_name("", [*engine._CFLAGS, "-DHASTE_PROFILE"])
    assert engine.build_name("_profile", engine._CFLAGS).startswith("haste_cpu_profile_")
    assert engine._load().__name__ == name  # the module in use is the build of this checkout


TRITON_CHECK = """
import os
os.environ["TRITON_INTERPRET"] = "1"
import torch
from torch import nn
from haste import engine
from haste.flops import tile_sums
from haste.functional import conv_padding
from haste.lsh import sample_hyperplanes
torch.manual_seed(0)
for (c, o, k, s, pad, size, patch, hyperplanes), merge in [
    ((8, 5, 3, 1, 1, (9, 7), 4, 5), "mean"), ((6, 70, 3, 2, 1, (8, 8), 2, 3), "mean"),
    ((4, 3, 1, 1, 0, (5, 5), 3, 4), "mean"), ((8, 5, 3, 1, 1, (9, 7), 4, 5), "scaled"),
    ((6, 70, 3, 2, 1, (8, 8), 2, 3), "scaled"),
]:
    conv = nn.Conv2d(c, o, k, stride=s, padding=pad)
    x = torch.randint(-3, 4, (2, c, *size)).float()
    planes = sample_hyperplanes(hyperplanes, ((patch - 1) * s + k) ** 2, seed=1)
    args = dict(stride=conv.stride, padding=conv_padding(conv), patch=patch, planes=planes, merge=merge)
    with torch.no_grad():
        ref = engine.conv2d(x, conv.weight, conv.bias, engine="reference", **args)
        tri = engine.conv2d(x, conv.weight, conv.bias, engine="triton", **args)
    assert torch.equal(ref.groups, tri.groups) and ref.groups.float().mean() < c  # some channels merged
    torch.testing.assert_close(tri.output, ref.output, rtol=1e-4, atol=1e-4)
print("triton kernel matches the reference")
"""


def test_triton_gpu_kernel_matches_reference_under_the_interpreter():
    """The GPU engine's fused Triton kernel, run on CPU tensors by Triton's interpreter."""
    import subprocess
    import sys

    pytest.importorskip("triton")
    done = subprocess.run([sys.executable, "-c", TRITON_CHECK], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "matches" in done.stdout


def test_cuda_tensors_choose_the_gpu_engine_without_running():
    x = torch.empty(1, 4, 8, 8, device="meta")
    w = torch.empty(4, 4, 3, 3, device="meta")

    class FakeCuda:  # a meta tensor that claims a CUDA device: choose() only looks at device and grads
        device = torch.device("cuda")
        is_cpu = False
        requires_grad = False

    with torch.no_grad():
        assert engine.choose(FakeCuda(), w) in ("triton", "reference")
        assert engine.choose(x, w) == "reference"  # meta: neither CPU float32 nor CUDA


@pytest.mark.parametrize("setting", ["refrence", "cpu", "off"])
def test_an_unknown_haste_engine_setting_is_an_error_at_the_first_kernel_load(monkeypatch, setting):
    monkeypatch.setattr(engine, "_module", None)  # as before the first load (restored after the test)
    monkeypatch.setattr(engine, "unavailable", None)
    monkeypatch.setenv("HASTE_ENGINE", setting)
    with pytest.raises(ValueError, match=f"HASTE_ENGINE must be unset, auto .* or reference .*; got '{setting}'"):
        engine.cpu_kernel_available()
    monkeypatch.setenv("HASTE_ENGINE", "Reference")
    assert not engine.cpu_kernel_available() and engine.unavailable == "disabled by HASTE_ENGINE=reference"
