"""Service tests start the real server (``haste serve`` in a subprocess on a loopback port) and talk HTTP
to it; see service_support.py."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

# This directory is named like the package it tests and has no __init__.py, so with pytest's rootdir on
# sys.path ``import service`` would find it as a namespace package; the repository root on sys.path makes
# the real (regular) package win.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import httpx  # noqa: E402
import pytest  # noqa: E402
from service_support import MODEL, Offline, Server, require_model  # noqa: E402


@pytest.fixture(scope="session")
def server() -> Iterator[Server]:
    """The shared server: default settings except BASE_ENV, ready."""
    require_model()
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
    require_model()
    return Offline(MODEL)
