#!/usr/bin/env bash
# Trials toward the mnist-best target (>= 92% robust, >= 99% clean, <= 20 minutes of
# training): each trains from the mnist-quick preset with overrides, then is attacked
# with the training headline's chain (standard suite + PGD-100 x5 on CE and margin) on
# the first 1,000 MNIST test images. config.json, metrics.jsonl and eval.json go to
# results/trials/NAME.
#
#   bash experiments/mnist_best_trials.sh [NAME ...]   # default: the first two trials
#
# EVAL=screen instead attacks with APGD-CE alone on all 10,000 test images (3-4 minutes;
# clean accuracy on the full test set and an upper bound on robust accuracy) into
# screen.json, to rank recipes before spending the headline chain's ~15 minutes on one;
# EVAL=smoothed attacks the first N (default 1,000) at eps 0.3 whatever eps the run trained
# at, with the standard suite and smoothed APGD-CE x5 (beta 15) into trial-eval.json (the
# attacks that broke what the headline chain missed on mnist-best; ~15 minutes);
# EVAL=blackbox attacks the first 1,000 with Square alone at AutoAttack-plus's budget
# (5 restarts x 5,000 queries, seed 1 so none repeats the headline's restart) into
# blackbox.json, for when the headline's black-box sanity check flags the gradient attacks;
# experiments/union_worst_case.py combines it with eval.json per example.
# TRAIN=0 skips training and attacks the existing run.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh
. .venv/bin/activate
# TRADES with PGD-7 step 0.1 on the KL, eps ramp 3, Adam 3e-3: shared by the later trials
T7="--adversary trades --eps-ramp-epochs 3 --attack-steps 7 --attack-step-size 0.1 --lr 3e-3"
# the mnist-best preset (beta 2, width 4, 400 hidden units, 11 epochs, weight averaging)
BEST="$T7 --trades-beta 2 --model-kwargs {\"width\":4,\"fc\":400} --epochs 11 --ema-decay 0.999"
declare -A TRIALS=(
  [best-w3e10]="--model-kwargs {\"width\":3} --epochs 10 --eps-ramp-epochs 2"
  [best-trades-w3e13]="--adversary trades --model-kwargs {\"width\":3} --epochs 13 --eps-ramp-epochs 3 --attack-steps 10 --attack-step-size 0.075 --lr 3e-3"
  # the GPU sweep's best held-out PGD accuracy (results/sweep_device/m-pgd7e17)
  [best-trades-pgd7e17]="$T7 --model-kwargs {\"width\":3} --epochs 17"
  # more capacity for the clean target, fewer epochs to stay inside 20 minutes
  [best-trades-w4e12]="$T7 --model-kwargs {\"width\":4} --epochs 12"
  # a wider hidden layer (Madry's CNN has 1,024) for the clean target (25% slower per epoch: 11 epochs fit)
  [best-trades-w4fc400e11]="$T7 --model-kwargs {\"width\":4,\"fc\":400} --epochs 11"
  # weight averaging (--ema-decay) on the best recipe so far, nothing else changed
  [best-trades-w4e12-ema]="$T7 --model-kwargs {\"width\":4} --epochs 12 --ema-decay 0.999"
  # for the clean target on all 10,000 test images: the wider hidden layer, averaging and
  # a smaller KL weight (beta 4)
  [best-trades-w4fc400b4e11-ema]="$T7 --trades-beta 4 --model-kwargs {\"width\":4,\"fc\":400} --epochs 11 --ema-decay 0.999"
  [best-trades-w4fc400b3e11-ema]="$T7 --trades-beta 3 --model-kwargs {\"width\":4,\"fc\":400} --epochs 11 --ema-decay 0.999"
  [best-trades-w4fc400b2e11-ema]="$T7 --trades-beta 2 --model-kwargs {\"width\":4,\"fc\":400} --epochs 11 --ema-decay 0.999"
  # the mnist-best preset with the training adversary searching through sigmoid-backward
  # ReLUs (beta 15), which see through the ReLU thresholds that hide points from gradients
  [best-smooth15]="$BEST --attack-smooth 15"
  # best-smooth15's held-out PGD accuracy collapsed (92% -> 48%): half of each batch searched
  # through smoothed gradients, half through the model's own
  [best-smooth15-half]="$BEST --attack-smooth 15 --attack-smooth-share 0.5"
  # the mnist-best preset trained at eps 0.33: a margin beyond the tested 0.3, so points
  # that gradient attacks cannot reach at 0.3 are more likely truly robust there
  [best-eps033]="$BEST --eps 0.33"
  # best-eps033's recipe (--train-eps, so the held-out checks are at 0.3) under seed 1
  [best-teps033-s1]="$BEST --train-eps 0.33 --seed 1"
  # best-eps033 read 99.01% clean on the test set: a smaller KL weight for clean margin,
  # trained at 0.33 with --train-eps (held-out checks and the saved threat stay at 0.3)
  [best-teps033-b15]="$BEST --train-eps 0.33 --trades-beta 1.5"
  # the mnist-best recipe on TRADES' own SmallCNN (four 3x3 convs, two max-pools, fc 200,
  # fc 200): a deeper net at about the same cost per step, under the weak seed 2
  [best-tradescnn-s2]="$T7 --trades-beta 2 --model trades-mnist --model-kwargs {\"width\":1} --epochs 11 --ema-decay 0.999 --seed 2"
)
names=("$@")
[ ${#names[@]} -eq 0 ] && names=(best-w3e10 best-trades-w3e13)
for name in "${names[@]}"; do
  run=runs/trials/$name
  if [ "${TRAIN:-1}" != 0 ]; then
    # shellcheck disable=SC2086  # the overrides are words
    robustopt train --preset mnist-quick --out "$run" --force ${TRIALS[$name]}
  fi
  mkdir -p "results/trials/$name"
  cp "$run/config.json" "$run/metrics.jsonl" "results/trials/$name/"
  if [ "${EVAL:-headline}" = screen ]; then
    robustopt evaluate "$run" --n 10000 --suite experiments/suites/mnist-screen.json \
      --no-sanity --out "$run/screen.json"
    cp "$run/screen.json" "results/trials/$name/"
  elif [ "${EVAL:-headline}" = smoothed ]; then
    robustopt evaluate "$run" --n "${N:-1000}" --eps 0.3 --suite experiments/suites/mnist-trial.json \
      --no-sanity --out "$run/trial-eval.json"
    cp "$run/trial-eval.json" "results/trials/$name/"
  elif [ "${EVAL:-headline}" = blackbox ]; then
    robustopt evaluate "$run" --n 1000 --suite experiments/suites/mnist-blackbox.json \
      --no-sanity --seed 1 --out "$run/blackbox.json"
    cp "$run/blackbox.json" "results/trials/$name/"
  else
    robustopt evaluate "$run" --n 1000 --suite experiments/suites/mnist-headline.json
    cp "$run/eval.json" "results/trials/$name/"
  fi
done
