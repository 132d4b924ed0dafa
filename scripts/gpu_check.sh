#!/usr/bin/env bash
# The GPU checks in one run, results (gpu_check.json and one log per step) in OUTDIR; docs/gpu.md.
#
#   bash scripts/gpu_check.sh OUTDIR                 # on a GPU host (its own python3, the project on PYTHONPATH)
#   bash scripts/gpu_check.sh OUTDIR --dry-run       # the same steps on the CPU at tiny sizes (or GPU_CHECK_DRY=1)
#   bash scripts/gpu_check.sh --build-wheels gpu_wheels   # here: the folder of wheels to carry to the GPU host
#
# PYTHON picks the interpreter (default: python3, or .venv/bin/python when there is one).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${PYTHON:-}" ]; then
    if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec "$PYTHON" scripts/gpu_check.py "$@"
