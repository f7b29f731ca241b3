#!/usr/bin/env bash
# docs/experiments.md's CIFAR-10 section: the seed's experiments at the scale this 2-core CPU
# allows, on the FGSM-RS-trained cifar10-cpu model of session 3 (results/runs/cifar10-cpu18-seed0:
# `robustopt train --preset cifar10-cpu --epochs 18 --heldout-n 1000 --eval-steps 20`, ~1 hour)
# and a standard cifar-cnn trained here for 3 epochs (~5 minutes). About 10 minutes beyond
# the two trainings. Numbers and figures go to OUT (default results/landscape_cifar10); the
# PNGs are copied to docs/figures/cifar10/.
#
#   bash experiments/cifar10_landscape.sh [ROBUST_RUN] [OUT]
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh
. .venv/bin/activate
ROBUST=${1:-results/runs/cifar10-cpu18-seed0}
OUT=${2:-results/landscape_cifar10}
STD=results/runs/cifar10-standard
mkdir -p "$OUT" docs/figures/cifar10
if [ ! -f "$STD/model.json" ]; then
  robustopt train --preset cifar10-cpu --adversary none --epochs 3 --heldout-n 1000 \
    --eval-steps 20 --out "$STD" --force \
    2>&1 | tee "$OUT/standard_train.log"
fi
MODELS=("$STD" "$ROBUST")
LABELS=standard,fgsm-rs

# 5. accuracy under FGSM and PGD-40 (and label leaking) on the first 500 test images
robustopt landscape fgsm-vs-pgd "${MODELS[@]}" --labels $LABELS --n 500 --weights last \
  --out "$OUT" | tee "$OUT/fgsm_vs_pgd.txt"
# 4. training curves
robustopt landscape curves "${MODELS[@]}" --labels $LABELS --out "$OUT"
# 1. loss along the FGSM and PGD directions, 10 test points
robustopt landscape direction "${MODELS[@]}" --labels $LABELS --weights last --n 10 \
  --out "$OUT" | tee "$OUT/direction.txt"
# 2. final PGD-40 loss from 1,000 random starts on 2 test points
robustopt landscape restarts "${MODELS[@]}" --labels $LABELS --weights last --n 2 \
  --restarts 1000 --precision bf16 --out "$OUT" | tee "$OUT/restarts.txt"
# 3. the plane through two PGD maxima, 2 test points
robustopt landscape surface "${MODELS[@]}" --labels $LABELS --weights last --indices 0,1 \
  --out "$OUT" | tee "$OUT/surface.txt"
cp "$OUT"/*.png docs/figures/cifar10/
