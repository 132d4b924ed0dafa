"""Settings from HASTE_* variables, app factory isolation (one metrics registry per app), CLI registration,
and the decoder's caps on real files. In process, no server."""

from __future__ import annotations

import argparse
import asyncio
import io

import httpx
import pytest
import torch
from fastapi import FastAPI
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families
from pydantic import ValidationError
from service_support import FIXTURES, MANIFEST, MODEL, WEIGHTS_DIR, require_model, trained

import haste
from haste.cli import build_parser
from haste.levels import current
from haste.zoo.registry import FMNIST_SPEC
from service import Settings, cli, create_app, errors, registry, served
from service.decode import Limits, decode, sniff, to_input
from service.errors import ServiceError
from service.metrics import batch_buckets
from service.middleware import RequestIdMiddleware


def test_settings_from_environment(monkeypatch):
    monkeypatch.setenv("HASTE_MODELS", "fmnist-resnet18, fmnist-resnet34")
    monkeypatch.setenv("HASTE_DEFAULT_LEVEL", "high")
    monkeypatch.setenv("HASTE_MAX_BATCH_SIZE", "16")
    monkeypatch.setenv("HASTE_MAX_BATCH_DELAY_MS", "2.5")
    monkeypatch.setenv("HASTE_DEVICE", "cpu")
    s = Settings()
    assert s.models == ["fmnist-resnet18", "fmnist-resnet34"] and s.default_model == "fmnist-resnet18"
    assert s.default_level == "high" and s.max_batch_size == 16 and s.max_batch_delay_s == 0.0025
    monkeypatch.setenv("HASTE_MODELS", '["resnet50:IMAGENET1K_V2"]')
    assert Settings().models == ["resnet50:IMAGENET1K_V2"]


def test_defaults_serve_the_resnet34_reference_model(monkeypatch):
    for name in ("HASTE_MODELS", "HASTE_DEFAULT_MODEL", "HASTE_PORT"):
        monkeypatch.delenv(name, raising=False)
    s = Settings()
    assert s.models == ["fmnist-resnet34"] and s.default_model == "fmnist-resnet34" and s.port == 8000


@pytest.mark.parametrize("empty", ["", "  "])
def test_an_empty_default_model_means_the_first_of_models(monkeypatch, empty):
    """compose passes HASTE_DEFAULT_MODEL=${HASTE_DEFAULT_MODEL:-}: setting only HASTE_MODELS must work."""
    monkeypatch.setenv("HASTE_MODELS", "fmnist-resnet18")
    monkeypatch.setenv("HASTE_DEFAULT_MODEL", empty)
    assert Settings().default_model == "fmnist-resnet18"
    monkeypatch.setenv("HASTE_DEFAULT_MODEL", "fmnist-resnet34")  # a real pin still has to be served
    with pytest.raises(ValidationError, match="is not one of models"):
        Settings()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"default_level": "max"}, "level must be one of off, low, medium, high"),
        ({"models": []}, "at least one model"),
        ({"models": ["a", "b"], "default_model": "c"}, "is not one of models"),
        ({"max_batch_size": 0}, "greater than or equal to 1"),
        ({"device": "tpu"}, "auto"),
    ],
)
def test_bad_settings_say_what_is_accepted(kwargs, message):
    with pytest.raises(ValidationError, match=message):
        Settings(**kwargs)


def test_apps_have_their_own_metrics_registries():
    apps = [create_app(Settings(models=["fmnist-resnet18"])) for _ in range(2)]
    first, second = (app.state.service.metrics for app in apps)
    first.requests.labels("m", "high", "200").inc()
    text = second.render()[0].decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert "haste_requests" in families and not families["haste_requests"].samples
    assert families["haste_ready"].samples[0].value == 0.0  # not started: not ready


def test_serve_subcommand_is_registered():
    assert build_parser().parse_args(["serve", "--port", "8001"]).func is cli._run  # the `haste` command
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command")
    cli.add_command(sub)
    args = parser.parse_args(["serve", "--host", "0.0.0.0", "--port", "9000"])
    assert args.func is cli._run and args.host == "0.0.0.0" and args.port == 9000


def test_batch_size_buckets():
    assert batch_buckets(8) == (1.0, 2.0, 4.0, 8.0)
    assert batch_buckets(12) == (1.0, 2.0, 4.0, 8.0, 12.0)
    assert batch_buckets(1) == (1.0,)


def test_decoder_formats_and_caps():
    png = (FIXTURES / MANIFEST[0]["file"]).read_bytes()
    assert sniff(png) == "PNG" and sniff((FIXTURES / "photo-chelsea.jpg").read_bytes()) == "JPEG"
    assert sniff((FIXTURES / "fmnist-0019-t-shirt-top.webp").read_bytes()) == "WEBP"
    assert decode(png).size == (28, 28)
    assert to_input(png, FMNIST_SPEC).shape == (1, 32, 32)
    # the EXIF-rotated photo comes out upright: same size as the original JPEG
    assert decode((FIXTURES / "photo-chelsea-exif6.png").read_bytes()).size == (451, 300)
    with pytest.raises(ServiceError) as bomb:
        decode((FIXTURES / "bomb-8000x8000.png").read_bytes())
    assert bomb.value.status == 413 and "64000000 pixels" in bomb.value.message
    with pytest.raises(ServiceError) as small:
        decode(png, Limits(min_side=29))
    assert small.value.code == "invalid_image"
    buf = io.BytesIO()
    Image.new("L", (64, 64)).save(buf, format="GIF")
    with pytest.raises(ServiceError) as gif:
        decode(buf.getvalue())
    assert gif.value.code == "unsupported_media_type"


def test_unexpected_errors_are_masked_with_the_request_id():
    """The app's error plumbing (middleware + handlers) on a route that fails: a 500 in the common shape
    that does not leak the exception text."""
    app = FastAPI()
    errors.install(app)
    app.add_middleware(RequestIdMiddleware)

    @app.get("/boom")
    async def boom():
        raise RuntimeError("secret internal detail")

    async def call():
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
            return await c.get("/boom", headers={"X-Request-ID": "req-1"})

    response = asyncio.run(call())
    assert response.status_code == 500
    assert response.json() == {
        "error": "internal error; quote the request_id when reporting it",
        "code": "internal_error",
        "request_id": "req-1",
    }
    assert response.headers["x-request-id"] == "req-1"


def test_settings_page_lists_every_setting():
    page = (FIXTURES.parents[1] / "docs" / "settings.md").read_text()
    for name in Settings.model_fields:
        assert f"| `HASTE_{name.upper()}` |" in page, name


def test_models_are_held_in_the_layout_the_settings_name_and_answer_the_same_in_both():
    """HASTE_CHANNELS_LAST: every 3x3 conv weight of the loaded model is channels-last (default) or NCHW (false),
    the model says which, and both layouts give the same answers on real images at every level."""
    require_model()
    held = {}
    for channels_last in (True, False):
        settings = Settings(models=[MODEL], weights_dir=WEIGHTS_DIR, channels_last=channels_last, max_batch_size=1)
        model = registry.load(MODEL, settings, torch.device("cpu"))
        model.flops_dense = 1.0  # run() needs only a number here: the FLOPs are not compared
        weights = [p for p in model.model.parameters() if p.dim() == 4 and p.shape[1] > 1 and p.shape[2] == 3]
        wanted, other = (torch.channels_last, torch.contiguous_format)[:: 1 if channels_last else -1]
        assert weights and all(w.is_contiguous(memory_format=wanted) for w in weights)
        assert not any(w.is_contiguous(memory_format=other) for w in weights)
        assert model.layout == ("channels_last" if channels_last else "nchw")
        held[channels_last] = model
    x = torch.stack([to_input((FIXTURES / m["file"]).read_bytes(), held[True].spec) for m in MANIFEST[:4]])
    for level in haste.LEVELS:
        nhwc, nchw = held[True].run(level, x), held[False].run(level, x)
        assert nhwc.probs.argmax(1).tolist() == nchw.probs.argmax(1).tolist(), level
        torch.testing.assert_close(nhwc.probs, nchw.probs, rtol=0, atol=1e-3)


def test_batchnorms_are_fused_unless_the_settings_say_not_and_the_answers_agree():
    """HASTE_FUSE_BATCHNORM: by default every BatchNorm of the reference model is fused into its conv (none is left)
    and level off gives the model as trained up to float rounding; false keeps them, and off is then bit-exact. At
    every level both give the same top label and scores within 1e-3 on real images."""
    require_model()
    reference = trained(MODEL).to(memory_format=torch.channels_last)
    count = sum(isinstance(m, torch.nn.BatchNorm2d) for m in reference.modules())
    assert count > 0
    held = {}
    for fuse in (True, False):
        settings = Settings(models=[MODEL], weights_dir=WEIGHTS_DIR, fuse_batchnorm=fuse, max_batch_size=1)
        model = registry.load(MODEL, settings, torch.device("cpu"))
        model.flops_dense = 1.0  # run() needs only a number here: the FLOPs are not compared
        norms = [m for m in model.model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
        assert (model.fused_batchnorms, len(norms)) == ((count, 0) if fuse else (0, count))
        assert model.describe()["conversion"]["fused_batchnorms"] == model.fused_batchnorms
        held[fuse] = model
    x = torch.stack([to_input((FIXTURES / m["file"]).read_bytes(), held[True].spec) for m in MANIFEST[:4]])
    with torch.inference_mode():
        expected = reference(x).float().softmax(dim=1)
    assert torch.equal(held[False].run("off", x).probs, expected)
    torch.testing.assert_close(held[True].run("off", x).probs, expected, rtol=0, atol=1e-5)
    for level in haste.LEVELS:
        fused, kept = held[True].run(level, x), held[False].run(level, x)
        assert fused.probs.argmax(1).tolist() == kept.probs.argmax(1).tolist(), level
        torch.testing.assert_close(fused.probs, kept.probs, rtol=0, atol=1e-3)


def test_latency_table_is_the_median_of_interleaved_runs_after_warm_up():
    """ServedModel.warm_up on a real model: the warm-up forwards come first; then every level is timed
    served.LATENCY_RUNS times at batch 1, levels interleaved, and each level's entry is a positive
    latency (the median of those runs). Eager (graph_mode=False): a trace runs without the model's Python hooks."""
    require_model()
    settings = Settings(models=[MODEL], weights_dir=WEIGHTS_DIR, max_batch_size=2, warmup_rounds=1, graph_mode=False)
    model = registry.load(MODEL, settings, torch.device("cpu"))
    calls: list[tuple[str, int]] = []
    handle = model.model.register_forward_pre_hook(lambda m, args: calls.append((current().level, len(args[0]))))
    try:
        model.warm_up(settings)
    finally:
        handle.remove()
    levels = list(haste.LEVELS)
    warm, timed = calls[: -served.LATENCY_RUNS * len(levels)], calls[-served.LATENCY_RUNS * len(levels) :]
    assert served.LATENCY_RUNS >= 5
    assert [level for level, _ in warm] == [level for level in levels for _ in range(2)]  # batch 1 and 2
    assert timed == [(level, 1) for _ in range(served.LATENCY_RUNS) for level in levels]
    assert set(model.latency_ms) == set(levels) and all(v > 0 for v in model.latency_ms.values())
    assert [row["latency_ms"] for row in model.levels_table()] == [model.latency_ms[level] for level in levels]
