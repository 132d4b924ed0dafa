#!/bin/bash
# The full calibration of a reference model, every step on the calibration split (the last 5k training
# images) and only the final levels measured on the test split:
#   bash scripts/calibrate_pipeline.sh fmnist-resnet34-w32
# 1. uniform hyperplanes, 3 seeds; 2. per-stage sensitivity (one stage at L, the others at 24), seed 0;
# 3. the per-stage schedules scripts/schedule_search.py predicts, 3 seeds; 4. every setting within 3 points
# with the layers that save < 3% run dense (scripts/dense_unprofitable.py), 3 seeds; 5. haste calibrate
# (levels into the model card, measured on the 10k test images); README tables regenerated.
# LIMIT (calibration images, default 2500), THREADS (default 2) and MERGE (mean, the paper's, or scaled)
# can be set in the environment; the sweeps of both merge rules share the result files (rows carry it).
set -euo pipefail
cd "$(dirname "$0")/.."
HASTE=${HASTE:-haste}
PYTHON=${PYTHON:-python}
LIMIT=${LIMIT:-2500}
THREADS=${THREADS:-2}
MERGE=${MERGE:-mean}
for model in "$@"; do
  common=(--model "$model" --threads "$THREADS" --limit "$LIMIT" --merge "$MERGE")
  $HASTE sweep "${common[@]}" --hyperplanes 6 8 10 12 14 16 --seeds 0 1 2 --out "results/sweep-$model"
  $HASTE sweep "${common[@]}" --seeds 0 --hyperplanes 24 --schedule "*=24" --out "results/sensitivity-$model"
  $HASTE sweep "${common[@]}" --seeds 0 --hyperplanes 6 8 10 12 14 --out "results/sensitivity-$model" \
    --schedule "*=24,layer1=+0" "*=24,layer2=+0" "*=24,layer3=+0" "*=24,layer4=+0"
  schedules=$($PYTHON scripts/schedule_search.py "results/sensitivity-$model.json" --merge "$MERGE" | tail -n 1)
  eval "$HASTE sweep ${common[*]} --hyperplanes 10 --seeds 0 1 2 --out results/sweep-$model $schedules"
  $PYTHON scripts/dense_unprofitable.py "results/sweep-$model.json" --max-drop 3 --threshold 0.03 --merge "$MERGE" |
    while read -r args; do
      eval "$HASTE sweep ${common[*]} --seeds 0 1 2 --out results/sweep-$model $args" </dev/null
    done
  $HASTE calibrate --model "$model" --sweep "results/sweep-$model.json" --threads "$THREADS" --merge "$MERGE" \
    --out "results/calibrate-$model" --write-card
done
$PYTHON scripts/readme_tables.py
