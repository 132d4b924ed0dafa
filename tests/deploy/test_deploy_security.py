"""Security basics of the compose files: with no variable set, nothing is published beyond the host's
loopback (the API has no authentication or TLS of its own); HASTE_PUBLISH_ADDRESS publishes the API
elsewhere when asked. Non-root users and read-only root file systems are checked in test_deploy_static."""

from __future__ import annotations

import re

import pytest
import yaml
from deploytools import ROOT

COMPOSE_FILES = ("docker/compose.yaml", "docker/compose.cpu.yaml")


def _published(path: str, env: dict[str, str]) -> dict[str, list[str]]:
    """service -> its published ports, compose's ${NAME:-default} resolved with ``env``."""
    text = re.sub(r"\$\{(\w+):-([^}]*)\}", lambda m: env.get(m[1]) or m[2], (ROOT / path).read_text())
    services = yaml.safe_load(text)["services"]
    return {name: [str(p) for p in s.get("ports", [])] for name, s in services.items()}


@pytest.mark.parametrize("path", COMPOSE_FILES)
def test_nothing_is_published_on_every_interface_unless_asked(path):
    published = _published(path, {})
    assert published["api"], "the API publishes no port"
    for service, ports in published.items():
        for port in ports:
            assert port.startswith("127.0.0.1:"), f"{service} publishes {port} beyond the loopback"


@pytest.mark.parametrize("path", COMPOSE_FILES)
def test_the_api_address_is_chosen_by_haste_publish_address(path):
    published = _published(path, {"HASTE_PUBLISH_ADDRESS": "0.0.0.0", "HASTE_PUBLISH_PORT": "9000"})
    assert published["api"] == ["0.0.0.0:9000:8000"]
