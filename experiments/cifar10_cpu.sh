#!/usr/bin/env bash
# The training issue's CIFAR-10 run: the best recipe found for 60 minutes of training on 2 CPU
# cores (preset cifar10-cpu), then its clean and PGD-20 (step 2/255, 5 restarts) accuracy at
# eps 8/255 on the first N_PGD test images, and the worst case over PGD-20 followed by the
# standard suite (APGD-CE, APGD-T x9, Square-5000) on the first N_STD (fewer: Square-5000 on
# CPU costs ~5 s per surviving point for this model).
#
#   bash experiments/cifar10_cpu.sh [SEED] [N_PGD] [N_STD]     # defaults: 0 1000 300
#
# Run on an otherwise idle machine: the training wall time is part of the result.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh
. .venv/bin/activate
SEED=${1:-0}
N_PGD=${2:-1000}
N_STD=${3:-300}
run=results/runs/cifar10-cpu-seed$SEED
logs=results/cifar10
mkdir -p "$logs"
if [ ! -f "$run/model.json" ]; then
  /usr/bin/time -f "training wall %e s" robustopt train --preset cifar10-cpu --seed "$SEED" \
    --out "$run" --force 2>&1 | tee "$logs/train-seed$SEED.log"
fi
robustopt evaluate "$run" --n "$N_PGD" --suite experiments/suites/cifar10-pgd20.json \
  --no-sanity --out "$logs/pgd20-seed$SEED.json" 2>&1 | tee "$logs/pgd20-seed$SEED.log"
robustopt evaluate "$run" --n "$N_STD" --suite experiments/suites/cifar10-headline.json \
  --out "$logs/standard-seed$SEED.json" 2>&1 | tee "$logs/standard-seed$SEED.log"
