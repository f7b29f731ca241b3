#!/usr/bin/env bash
# Trials toward the mnist-best target (>= 92% robust, >= 99% clean, <= 20 minutes of
# training): each trains from the mnist-quick preset with overrides, then is attacked
# with the training headline's chain (standard suite + PGD-100 x5 on CE and margin) on
# the first 1,000 MNIST test images. config.json, metrics.jsonl and eval.json go to
# results/trials/NAME.
#
#   bash experiments/mnist_best_trials.sh [NAME ...]   # default: every trial
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh
. .venv/bin/activate
declare -A TRIALS=(
  [best-w3e10]="--model-kwargs {\"width\":3} --epochs 10 --eps-ramp-epochs 2"
  [best-trades-w3e13]="--adversary trades --model-kwargs {\"width\":3} --epochs 13 --eps-ramp-epochs 3 --attack-steps 10 --attack-step-size 0.075 --lr 3e-3"
  # the GPU sweep's best held-out PGD accuracy (results/sweep_device/m-pgd7e17)
  [best-trades-pgd7e17]="--adversary trades --model-kwargs {\"width\":3} --epochs 17 --eps-ramp-epochs 3 --attack-steps 7 --attack-step-size 0.1 --lr 3e-3"
  # more capacity for the clean target, fewer epochs to stay inside 20 minutes
  [best-trades-w4e12]="--adversary trades --model-kwargs {\"width\":4} --epochs 12 --eps-ramp-epochs 3 --attack-steps 7 --attack-step-size 0.1 --lr 3e-3"
)
names=("$@")
[ ${#names[@]} -eq 0 ] && names=(best-w3e10 best-trades-w3e13)
for name in "${names[@]}"; do
  run=runs/trials/$name
  # shellcheck disable=SC2086  # the overrides are words
  robustopt train --preset mnist-quick --out "$run" --force ${TRIALS[$name]}
  robustopt evaluate "$run" --n 1000 --suite experiments/suites/mnist-headline.json
  mkdir -p "results/trials/$name"
  cp "$run/config.json" "$run/metrics.jsonl" "$run/eval.json" "results/trials/$name/"
done
