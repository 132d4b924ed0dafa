"""Service tests start the real server (``haste serve`` in a subprocess on a loopback port) and talk HTTP
to it; see service_support.py."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from service_support import MODEL, Offline, Server

NO_MODEL = "no trained reference model (haste train --model fmnist-resnet18)"


@pytest.fixture(scope="session")
def server() -> Iterator[Server]:
    """The shared server: default settings except BASE_ENV, ready."""
    if MODEL is None:
        pytest.skip(NO_MODEL)
    srv = Server()
    try:
        srv.wait()
        yield srv
    finally:
        srv.stop()


@pytest.fixture()
def client(server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=60) as c:
        yield c


@pytest.fixture(scope="session")
def offline() -> Offline:
    if MODEL is None:
        pytest.skip(NO_MODEL)
    return Offline(MODEL)
