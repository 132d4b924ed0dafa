"""Fixtures of the deployment tests."""

from __future__ import annotations

import pytest
import yaml
from deploytools import find_tool, run


@pytest.fixture(scope="session")
def rendered() -> dict[str, list[dict]]:
    """The Kubernetes manifests as kustomize renders them: {"base": [docs], "cpu": [docs]}."""
    kubectl = find_tool("kubectl")
    out = {}
    for name, path in (("base", "k8s/base"), ("cpu", "k8s/overlays/cpu")):
        proc = run([kubectl, "kustomize", path])
        assert proc.returncode == 0, f"kubectl kustomize {path} failed:\n{proc.stderr}"
        out[name] = [doc for doc in yaml.safe_load_all(proc.stdout) if doc]
    return out
