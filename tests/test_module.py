"""HasteConv2d as a drop-in nn.Conv2d: checkpoints, weight edits, input shapes, tracing and export."""

import pytest
import torch
from torch import nn

import haste
from haste import engine

X = torch.randn(2, 3, 12, 12)


def net() -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 16, 3, padding=1)).eval()


def _outputs(model: nn.Module) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        out = {}
        for level in ("off", "high"):
            with haste.compression(level):
                out[level] = model(X)
        return out


def test_state_dict_keys_are_the_original_models_both_ways():
    plain, converted = net(), haste.convert(net())
    assert list(converted.state_dict()) == list(plain.state_dict()) == ["0.weight", "0.bias", "1.weight", "1.bias"]
    converted.load_state_dict(plain.state_dict())  # strict: a plain checkpoint into a converted model
    reference = haste.convert(net())
    reference.load_state_dict(plain.state_dict())
    assert torch.equal(converted[1].conv.weight, plain[1].weight)
    with torch.no_grad(), haste.compression("off"):
        assert torch.equal(converted(X), plain(X))
    other = haste.convert(net())
    back = net()
    back.load_state_dict(other.state_dict())  # strict: a converted model's checkpoint into the plain model
    assert torch.equal(back[1].bias, other[1].conv.bias)
    with torch.no_grad(), haste.compression("off"):
        assert torch.equal(back(X), other(X))
    wrapper = haste.HasteConv2d(nn.Conv2d(8, 16, 3))
    assert list(wrapper.state_dict()) == ["weight", "bias"]
    assert list(wrapper.state_dict()._metadata) == [""]  # the conv's metadata, as nn.Conv2d saves it


def test_old_style_checkpoints_of_converted_models_still_load():
    source = haste.convert(net())
    old_style = {k.replace("1.", "1.conv."): v.clone() for k, v in source.state_dict().items()}
    target = haste.convert(net())
    target.load_state_dict(old_style)  # strict
    for level, y in _outputs(source).items():
        assert torch.equal(_outputs(target)[level], y), level
    with pytest.raises(RuntimeError, match="Missing key"):
        target.load_state_dict({"0.weight": old_style["0.weight"]})


def test_weight_edits_through_data_are_seen():
    model = haste.convert(net())
    layer = model[1]
    with torch.no_grad(), haste.compression("high"):
        model(X)  # caches the CPU kernel's weight layout
        layer.conv.weight.data = layer.conv.weight.data * 3  # replaced storage: seen without refresh
        with engine.forced("reference"):
            expected = model(X)
        torch.testing.assert_close(model(X), expected, rtol=1e-4, atol=1e-4)
        layer.conv.weight.data.mul_(0.5)  # in place through .data: no version counter moves
        layer.conv.bias.data.add_(100)
        assert haste.refresh(model) is model
        with engine.forced("reference"):
            expected = model(X)
        torch.testing.assert_close(model(X), expected, rtol=1e-4, atol=1e-4)
        layer.conv.bias.data = layer.conv.bias.data - 100
        with engine.forced("reference"):
            expected = model(X)
        torch.testing.assert_close(model(X), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("level", ["off", "low", "high"])
def test_unbatched_input_as_nn_conv2d(level):
    model = haste.convert(net())
    with torch.no_grad(), haste.compression(level), haste.profile(model) as report:
        y = model(X[1])
        assert torch.equal(y, model(X[1:2])[0])
    assert y.shape == (16, 12, 12) and report.images == 2 and report.forwards == 2
    assert report.layers["1"].images == 2


@pytest.mark.parametrize("level", ["off", "high"])
@pytest.mark.parametrize("engine_name", [None, "reference"])
def test_an_empty_batch_gives_an_empty_output(level, engine_name):
    model = haste.convert(net())
    x = torch.randn(0, 3, 12, 12)
    forced = engine.forced(engine_name) if engine_name else torch.no_grad()
    with forced, haste.compression(level), haste.profile(model) as report:
        y = model(x)
    assert y.shape == (0, 16, 12, 12)
    assert report.images == 0 and report.forwards == 1 and report.saving == 0
    x.requires_grad_(True)  # the reference engine, with autograd
    with haste.compression(level):
        y = model(x)
    y.sum().backward()
    assert y.shape == (0, 16, 12, 12) and x.grad.shape == x.shape


def test_an_empty_batch_profiles_on_a_plain_model():
    model = nn.Sequential(net(), nn.Flatten(), nn.Linear(16 * 144, 3))
    with torch.no_grad(), haste.profile(model) as report:
        assert model(torch.randn(0, 3, 12, 12)).shape == (0, 3)
    assert report.images == 0 and report.forwards == 1 and report.dense_flops == 0


def test_too_small_an_input_names_the_layer():
    layer = haste.HasteConv2d(nn.Conv2d(4, 4, 5), name="head")
    for forced in ("reference", "cpu"):
        with torch.no_grad(), haste.compression("high"), engine.forced(forced):
            with pytest.raises(ValueError, match=r"^head: input of size \(3, 3\) is smaller than the kernel"):
                layer(torch.randn(1, 4, 3, 3))


def test_the_triton_engine_on_cpu_tensors_says_it_needs_cuda():
    pytest.importorskip("triton")
    layer = haste.HasteConv2d(nn.Conv2d(8, 16, 3, padding=1))
    with torch.no_grad(), haste.compression("high"), engine.forced("triton"):
        with pytest.raises(RuntimeError, match="the triton engine needs CUDA tensors; got cpu tensors"):
            layer(torch.randn(1, 8, 12, 12))


def test_a_model_that_has_run_copies_and_pickles_and_the_copy_reads_its_own_weights():
    import copy
    import io

    model = haste.convert(net())
    expected = _outputs(model)  # the layers now keep their calls (the CPU kernel's, when it is built)
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    for twin in (copy.deepcopy(model), torch.load(buffer, weights_only=False)):
        for level, y in _outputs(twin).items():
            assert torch.equal(y, expected[level]), level
        with torch.no_grad():
            twin[1].conv.weight.mul_(2)
        changed = _outputs(twin)
        assert not torch.equal(changed["high"], expected["high"])
        assert all(torch.equal(y, expected[level]) for level, y in _outputs(model).items())


def test_jit_trace_export_and_script_say_what_works():
    model = haste.convert(net())
    with torch.no_grad():
        with haste.compression("high"):
            with engine.forced("reference"), pytest.raises(
                RuntimeError, match=r"torch.jit.trace records HASTE layers at a level other than off only on the fused "
                r"CPU kernel.*would run the reference engine \(forced by haste.engine.forced\).*torch.compile works"
            ):  # fmt: skip
                torch.jit.trace(model, X)
            with pytest.raises(RuntimeError, match="torch.export cannot capture HASTE layers at a level other than off"
                               ".*torch.jit.trace can"):  # fmt: skip
                torch.export.export(model, (X,))
        with pytest.raises(RuntimeError, match=r"torch.jit.script cannot compile HASTE layers.*haste.revert"):
            torch.jit.script(model)
        with haste.compression("off"):  # the dense model
            traced = torch.jit.trace(model, X)
            exported = torch.export.export(model, (X,)).module()
            dense = model(X)
        assert torch.equal(traced(X), dense) and torch.equal(exported(X), dense)


@pytest.mark.parametrize("backend", ["eager", "aot_eager"])
def test_torch_compile_follows_the_level(backend):
    model = haste.convert(net())
    expected = _outputs(model)
    compiled = torch.compile(model, backend=backend)
    with torch.no_grad():
        for level, y in expected.items():
            with haste.compression(level):
                torch.testing.assert_close(compiled(X), y, rtol=1e-5, atol=1e-5)


def test_fx_traces_hasteconv2d_as_one_call():
    from torchvision.models.feature_extraction import create_feature_extractor

    model = haste.convert(net())
    traced = torch.fx.symbolic_trace(model)
    assert [n.op for n in traced.graph.nodes] == ["placeholder", "call_module", "call_module", "output"]
    features = create_feature_extractor(model, return_nodes=["1"])
    for level, y in _outputs(model).items():  # the traced graphs follow the level at run time
        with torch.no_grad(), haste.compression(level):
            assert torch.equal(traced(X), y) and torch.equal(features(X)["1"], y)


def test_an_empty_batch_does_not_disable_the_triton_engine(monkeypatch):
    pytest.importorskip("triton")
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # CPU tensors allowed (the kernel is not reached)
    monkeypatch.setattr(engine, "triton_failed", None)
    conv = nn.Conv2d(6, 5, 3, padding=1)
    args = dict(stride=(1, 1), padding=(1, 1, 1, 1), patch=4, planes=torch.ones(4, 36))
    with torch.no_grad():
        result = engine.conv2d(torch.randn(0, 6, 8, 8), conv.weight, conv.bias, engine="triton", **args)
    assert result.output.shape == (0, 5, 8, 8) and engine.triton_failed is None


@pytest.mark.parametrize("level", ["off", "high"])
def test_a_repeated_cpu_call_runs_what_the_first_ran(level):
    """The second unprofiled call with the same level and shape takes forward's remembered call (level off needs
    none: it runs the conv directly): same output, and a profile around a later call still records every layer (the
    remembered path steps aside)."""
    model = haste.convert(net())
    layer = model[1]
    with torch.no_grad(), haste.compression(level):
        first = model(X)
        shape = (len(X), 8, *X.shape[2:])  # the second conv's input
        assert list(layer._calls) == ([] if level == "off" else [(level, None, shape)])
        torch.testing.assert_close(model(X), first, rtol=0, atol=0)
        with haste.profile(model) as report:
            model(X)
        assert report.layers["1"].images == len(X)
        with haste.compression(hyperplanes=3):
            model(X)
        assert (None, 3, shape) in layer._calls
    model.to(torch.float32)  # _apply: the remembered calls go with the weight cache
    assert layer._calls == {}
