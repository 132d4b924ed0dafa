#!/bin/bash
# Calibrate the levels of reference models and regenerate the README tables:
#   bash scripts/calibrate_reference.sh fmnist-resnet18 fmnist-vgg16_bn
# Per model: a uniform-hyperplane sweep on the calibration split (3 hyperplane seeds), then haste calibrate
# (levels into the model card, measured on the 10k test images). LIMIT (default 2500 calibration images)
# and THREADS (default 1) can be set in the environment.
set -euo pipefail
cd "$(dirname "$0")/.."
HASTE=${HASTE:-haste}
LIMIT=${LIMIT:-2500}
THREADS=${THREADS:-1}
for model in "$@"; do
  $HASTE sweep --model "$model" --hyperplanes 6 8 10 12 14 16 --seeds 0 1 2 --threads "$THREADS" --limit "$LIMIT" \
    --out "results/sweep-$model"
  $HASTE calibrate --model "$model" --sweep "results/sweep-$model.json" --threads "$THREADS" \
    --out "results/calibrate-$model" --write-card
done
${PYTHON:-python} scripts/readme_tables.py
