#!/usr/bin/env bash
# Idempotent set-up on a fresh Debian machine with Python 3.11: system packages (Fashion-MNIST data,
# Prometheus for the observability tests, hey for the soak's overload), a virtual environment in .venv,
# the project with its serving and development extras. Safe to run again; it only installs what is
# missing, and does nothing (no apt, no pip) when everything is there.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
[ -d /usr/share/datasets/fashion-mnist ] || need+=(dataset-fashion-mnist)
command -v prometheus >/dev/null 2>&1 || need+=(prometheus)
command -v hey >/dev/null 2>&1 || need+=(hey)  # the overload scenario of scripts/soak.py
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${need[@]}"
fi

PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3
[ -x .venv/bin/python ] || "$PY" -m venv .venv

# pip takes seconds even with nothing to do, so it runs only when the installation is missing or stale:
# the stamp, written after the last successful install, must hold the hash of this script and
# pyproject.toml, and the packages the project, its service and its tests import must be there (found,
# not imported: importing torch alone takes seconds; -I: not the checkout's haste by the working directory).
stamp=.venv/.haste-setup
want=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -d" " -f1)
installed() {
  [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && .venv/bin/python -I -c "
import importlib.util, sys
sys.exit(any(importlib.util.find_spec(m) is None for m in
             ('haste', 'torch', 'torchvision', 'fastapi', 'fastapi_offline', 'uvicorn', 'pytest', 'hypothesis')))"
}
if ! installed; then
  rm -f "$stamp"
  # torch/torchvision first: the pinned pair (a large wheel) is the slow part.
  .venv/bin/python -m pip install -q --disable-pip-version-check "torch==2.14.1" "torchvision==0.29.1"
  .venv/bin/python -m pip install -q --disable-pip-version-check -e ".[dev]"
  echo "$want" >"$stamp"
fi
