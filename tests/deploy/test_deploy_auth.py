"""The API token in the deployments: compose's auth overlay (docker/compose.auth.yaml) gives the api a
Docker secret read through HASTE_API_TOKEN_FILE; the Kubernetes Deployment takes HASTE_API_TOKEN from an
optional Secret, never from the ConfigMap."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
OVERLAY = ROOT / "docker" / "compose.auth.yaml"


def _interpolated(text: str) -> str:
    text = re.sub(r"\$\{(\w+):-([^}]*)\}", lambda m: m[2], text)
    assert "${" not in text, "a variable without a default"
    return text


def test_compose_auth_overlay_is_valid_and_feeds_the_token_file_setting(tmp_path, monkeypatch):
    schema = json.loads((ROOT / "tests" / "deploy" / "compose-spec.schema.json").read_text())
    overlay = yaml.safe_load(_interpolated(OVERLAY.read_text()))
    errors = [e.message for e in jsonschema.Draft201909Validator(schema).iter_errors(overlay)]
    assert not errors, errors
    from compose_spec import PyCompose

    base = yaml.safe_load(_interpolated((ROOT / "docker" / "compose.yaml").read_text()))
    base["services"]["api"]["environment"].update(overlay["services"]["api"]["environment"])
    base["services"]["api"]["secrets"] = overlay["services"]["api"]["secrets"]
    base["secrets"] = overlay["secrets"]
    assert "api" in PyCompose.from_yaml(yaml.safe_dump(base)).service_names()  # the merged file parses
    (secret,) = overlay["services"]["api"]["secrets"]
    path = overlay["services"]["api"]["environment"]["HASTE_API_TOKEN_FILE"]
    assert path == f"/run/secrets/{secret}" and secret in overlay["secrets"]
    settings = pytest.importorskip("service.settings")
    token = tmp_path / secret
    token.write_text("0123456789abcdef0123456789abcdef\n")  # as `openssl rand -hex 32 > file` writes it
    for name in [n for n in os.environ if n.startswith("HASTE_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("HASTE_API_TOKEN_FILE", str(token))
    assert settings.Settings().api_token.get_secret_value() == "0123456789abcdef0123456789abcdef"
    token.write_text("short\n")
    with pytest.raises(ValueError, match="at least 16 characters"):
        settings.Settings()


def test_kubernetes_token_comes_from_an_optional_secret(rendered):
    for docs in rendered.values():
        deployment = next(d for d in docs if d["kind"] == "Deployment")
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        env = {e["name"]: e for e in container.get("env", [])}
        ref = env["HASTE_API_TOKEN"]["valueFrom"]["secretKeyRef"]
        assert ref["optional"] is True and ref["name"] and ref["key"]
        configmap = next(d for d in docs if d["kind"] == "ConfigMap")
        assert not {k for k in configmap["data"] if k.startswith("HASTE_API_TOKEN")}, "a token in the ConfigMap"
