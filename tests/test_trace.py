"""torch.jit.trace of a converted model at a level: HASTE layers recorded as the CPU kernel's torch operator
(torch.ops.haste.conv2d), the level's plan for the traced batch size baked in; frozen, saved and loaded elsewhere."""

import copy
import subprocess
import sys
import warnings

import pytest
import torch

import haste
from haste import engine

pytestmark = [
    pytest.mark.skipif(not engine.cpu_kernel_available(), reason=f"CPU kernel: {engine.unavailable}"),
    pytest.mark.filterwarnings("ignore:`torch.jit.*` is deprecated:FutureWarning"),
]

PLANS = {"cpu": {"high": [{"batch": 1, "levels": {"layer1": 10, "layer2.0.conv2": 12}}, {"batch": 4, "levels": {}}]}}


def traced(model, x, level):
    """The trace of ``model`` on ``x`` at ``level``, failing on any TracerWarning (a trace that might not
    generalise to other inputs)."""
    with torch.no_grad(), haste.compression(level), warnings.catch_warnings():
        warnings.simplefilter("error", torch.jit.TracerWarning)
        return torch.jit.trace(model, x)


def kernel_calls(module) -> int:
    return sum(node.kind() == "haste::conv2d" for node in module.inlined_graph.nodes())


def haste_layers_at(model, x, level) -> int:
    with torch.no_grad(), haste.profile(model) as report, haste.compression(level):
        model(x)
    return sum(1 for s in report.layers.values() if s.kind == "haste" and s.hyperplanes)


@pytest.mark.parametrize("level", ["low", "high"])
def test_a_trace_runs_the_kernel_and_computes_what_the_model_computes(resnet18, resnet18_images, level):
    model = haste.convert(copy.deepcopy(resnet18))  # BatchNorms folded into the kernel's output (haste.fold)
    trace = traced(model, resnet18_images[:2], level)
    assert kernel_calls(trace) == haste_layers_at(model, resnet18_images[:2], level) > 0
    frozen = torch.jit.freeze(trace)
    with torch.no_grad(), haste.compression(level):
        for x in (resnet18_images[:2], resnet18_images[2:5]):  # the traced batch size and another
            expected = model(x)
            assert torch.equal(trace(x), expected)
            torch.testing.assert_close(frozen(x), expected, rtol=1e-4, atol=1e-4)
    with torch.no_grad(), haste.compression("off"):
        x = resnet18_images[:2]
        assert not torch.allclose(trace(x), model(x), atol=1e-3)  # the level is baked in


def test_a_trace_takes_the_plan_for_its_batch_size(resnet18, resnet18_images):
    model = haste.convert(copy.deepcopy(resnet18), plans=PLANS)
    in_layer1 = sum(isinstance(m, haste.HasteConv2d) for m in model.layer1.modules())
    one = traced(model, resnet18_images[:1], "high")
    assert kernel_calls(one) == in_layer1 + 1 == 5  # layer1's convs, layer2.0.conv2
    four = traced(model, resnet18_images[:4], "high")
    assert kernel_calls(four) == 0  # the batch-4 plan runs every layer dense
    with torch.no_grad():
        assert torch.equal(four(resnet18_images[:4]), resnet18(resnet18_images[:4]))


def test_a_saved_trace_runs_in_a_new_process_once_the_kernel_is_loaded(resnet18, resnet18_images, tmp_path):
    model = haste.convert(copy.deepcopy(resnet18))
    path, inputs = tmp_path / "high.pt", tmp_path / "x.pt"
    torch.jit.save(torch.jit.freeze(traced(model, resnet18_images[:2], "high")), path)
    torch.save(resnet18_images[:3], inputs)
    with torch.no_grad(), haste.compression("high"):
        expected = model(resnet18_images[:3])
    script = (
        "import sys, torch\n"
        "try:\n"
        "    torch.jit.load(sys.argv[1])(torch.load(sys.argv[2]))\n"
        "except RuntimeError as exc:\n"
        "    print('before:', ' '.join(str(exc).split()[:40]))\n"
        "import haste\n"
        "assert haste.engine.cpu_kernel_available()\n"
        "with torch.no_grad():\n"
        "    torch.save(torch.jit.load(sys.argv[1])(torch.load(sys.argv[2])), sys.argv[3])\n"
    )
    out = tmp_path / "y.pt"
    run = subprocess.run(
        [sys.executable, "-c", script, str(path), str(inputs), str(out)], capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stderr
    assert "haste::conv2d" in run.stdout  # without the kernel loaded, the operator is unknown
    torch.testing.assert_close(torch.load(out), expected, rtol=1e-4, atol=1e-4)


def test_a_trace_that_would_not_run_the_kernel_says_why(resnet18, resnet18_images):
    model = haste.convert(copy.deepcopy(resnet18))
    with pytest.raises(RuntimeError, match=r"layer1.0.conv1.*would run the reference engine \(gradients are needed"):
        with haste.compression("high"):
            torch.jit.trace(model, resnet18_images[:1].requires_grad_())
    with pytest.raises(RuntimeError, match=r"reference engine \(the fused CPU kernel takes float32 \(input "
                                           r"torch.float64"):  # fmt: skip
        traced(copy.deepcopy(model).double(), resnet18_images[:1].double(), "high")


def test_the_operator_rejects_an_input_it_cannot_run(resnet18, resnet18_images):
    layer = haste.convert(copy.deepcopy(resnet18)).layer1[0].conv1
    with torch.no_grad():
        trace = traced(layer, torch.randn(1, 16, 8, 8), "high")
    with pytest.raises(RuntimeError, match=r"haste conv2d: the input must be a float32 \(N, C, H, W\) CPU tensor"):
        trace(torch.randn(1, 16, 8, 8, dtype=torch.float64))
    with pytest.raises(RuntimeError, match="wt must be"):  # 8 channels where the conv takes 16
        trace(torch.randn(1, 8, 8, 8))


@pytest.mark.parametrize(("level", "batch"), [("high", 1), ("high", 4), ("low", 3), ("off", 2)])
def test_haste_trace_counts_what_the_profile_counts(resnet18, resnet18_images, level, batch):
    model = copy.deepcopy(resnet18)
    haste.fuse_batchnorm(model)
    haste.convert(model, plans=PLANS)
    with warnings.catch_warnings():
        warnings.simplefilter("error", torch.jit.TracerWarning)
        traced = haste.trace(model, resnet18_images[:batch], level)
    assert traced.level == level and traced.batch == batch and traced.size == tuple(resnet18_images.shape[2:])
    # the example, and other images (same batch size, same plan)
    for x in (resnet18_images[:batch], resnet18_images.flip(0)[:batch]):
        with torch.no_grad(), haste.compression(level), haste.profile(model, dense_layers=False) as report:
            expected = model(x)
        y, saved = traced(x)
        assert torch.equal(y, expected)
        assert saved.tolist() == pytest.approx([d - e - o for d, e, o in report.per_image], rel=1e-12, abs=1e-6)
    assert len(traced.calls) == haste_layers_at(model, resnet18_images[:batch], level)
    runs_haste = (level, batch) in {("high", 1), ("low", 3)}  # PLANS: high's batch-4 entry is all dense
    assert bool(traced.calls) == bool(saved.all()) == runs_haste


def test_haste_trace_says_what_it_takes(resnet18, resnet18_images):
    model = haste.convert(copy.deepcopy(resnet18))
    traced = haste.trace(model, resnet18_images[:1], "high")
    with pytest.raises(ValueError, match=r"this trace takes \(N, C, 32, 32\) inputs.*got shape \(1, 1, 28, 28\)"):
        traced(resnet18_images[:1, :, :28, :28])
    with pytest.raises(ValueError, match=r"haste.trace takes an example batch \(N, C, H, W\)"):
        haste.trace(model, resnet18_images[0], "high")
    with engine.forced("reference"), pytest.raises(RuntimeError, match="would run the reference engine"):
        haste.trace(model, resnet18_images[:1], "high")
