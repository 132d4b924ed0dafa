"""A torchvision ImageNet model served by configuration (HASTE_MODELS=resnet18:IMAGENET1K_V1), its weights
taken from a pre-seeded torch cache (no network): RGB 224 x 224 preprocessing from the weights' own
transforms, 1000 labels, and answers equal to the offline model's for the photo."""

from __future__ import annotations

import httpx
import pytest
import torch
import torchvision
from service_support import FIXTURES, Offline, Server

import haste.zoo.torchvision as tv

NAME = "resnet18:IMAGENET1K_V1"


@pytest.fixture(scope="module")
def torch_home(tmp_path_factory):
    """A torch cache holding resnet18 weights under torchvision's file name (random weights, seed 0)."""
    home = tmp_path_factory.mktemp("torch-home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TORCH_HOME", str(home))
        path = tv.cache_path(NAME)
        path.parent.mkdir(parents=True)
        torch.manual_seed(0)
        torch.save(torchvision.models.resnet18().state_dict(), path)
        yield home


def test_serves_a_torchvision_model_from_the_local_cache(torch_home, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(torch_home))
    monkeypatch.setenv("HASTE_OFFLINE", "1")
    srv = Server(models=NAME, max_batch_size=1, torch_threads=2)
    try:
        srv.wait()
        offline = Offline(NAME)
        photo = FIXTURES / "photo-chelsea.jpg"
        with httpx.Client(base_url=srv.url, timeout=120) as c:
            detail = c.get(f"/v1/models/{NAME}").json()
            assert detail["input"]["mode"] == "RGB" and detail["input"]["size"] == [224, 224]
            assert len(detail["labels"]) == 1000
            for level in ("off", "high"):
                body = c.post("/v1/classify", params={"model": NAME, "level": level, "top_k": 5},
                              files={"file": ("cat.jpg", photo.read_bytes())}).json()  # fmt: skip
                probs, dense, executed = offline.predict(photo, level)
                assert body["model"] == NAME and body["level"] == level
                for p in body["predictions"]:
                    assert p["label"] == offline.labels[p["index"]]
                    assert abs(p["score"] - float(probs[p["index"]])) <= 1e-4
                assert body["compute"]["flops_dense"] == pytest.approx(dense)
                assert body["compute"]["flops_executed"] == pytest.approx(executed)
    finally:
        srv.stop()


def test_missing_weights_stop_the_server_with_the_expected_path(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setenv("HASTE_OFFLINE", "1")
    srv = Server(models=NAME)
    try:
        assert srv.proc.wait(120) != 0
        assert str(tmp_path) in srv.output() and "resnet18" in srv.output()
    finally:
        srv.stop()
