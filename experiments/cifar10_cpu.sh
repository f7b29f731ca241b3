#!/usr/bin/env bash
# The training issue's CIFAR-10 run: the best recipe found for 60 minutes of training on 2 CPU
# cores (preset cifar10-cpu), then its clean and PGD-20 (step 2/255, 5 restarts) accuracy at
# eps 8/255 on the first N_PGD test images, and the worst case over PGD-20 followed by the
# standard suite (APGD-CE, APGD-T x9, Square-5000) on the first N_STD (fewer: Square-5000 on
# CPU costs ~5 s per surviving point for this model).
#
#   bash experiments/cifar10_cpu.sh [SEED] [N_PGD] [N_STD]     # defaults: 0 1000 300
#
# FLAGS adds training flags to the preset and NAME (default cifar10-cpu) names the run
# results/runs/NAME-seedK and its logs results/cifar10/NAME/..., for a candidate recipe:
#   NAME=cifar10-cpu-ema FLAGS="--ema-decay 0.999" bash experiments/cifar10_cpu.sh 0
# The preset's own run keeps its logs directly under results/cifar10/.
#
# Run on an otherwise idle machine: the training wall time is part of the result.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh
. .venv/bin/activate
SEED=${1:-0}
N_PGD=${2:-1000}
N_STD=${3:-300}
NAME=${NAME:-cifar10-cpu}
run=results/runs/$NAME-seed$SEED
logs=results/cifar10
[ "$NAME" = cifar10-cpu ] || logs=results/cifar10/$NAME
mkdir -p "$logs"
if [ ! -f "$run/model.json" ]; then
  # shellcheck disable=SC2086  # FLAGS are words
  /usr/bin/time -f "training wall %e s" robustopt train --preset cifar10-cpu --seed "$SEED" \
    --out "$run" --force ${FLAGS:-} 2>&1 | tee "$logs/train-seed$SEED.log"
fi
robustopt evaluate "$run" --n "$N_PGD" --suite experiments/suites/cifar10-pgd20.json \
  --no-sanity --out "$logs/pgd20-seed$SEED.json" 2>&1 | tee "$logs/pgd20-seed$SEED.log"
robustopt evaluate "$run" --n "$N_STD" --suite experiments/suites/cifar10-headline.json \
  --out "$logs/standard-seed$SEED.json" 2>&1 | tee "$logs/standard-seed$SEED.log"
