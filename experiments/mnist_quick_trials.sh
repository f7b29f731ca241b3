#!/usr/bin/env bash
# The recipe search behind the mnist-quick preset: each trial trains from the previous
# preset's settings (BASE, spelled out so later preset changes do not alter it) with a
# few overrides, then is attacked with the standard suite (APGD-CE, APGD-T with 9
# targets, Square-5000) on the first 1,000 MNIST test images at L-inf eps 0.3.
# config.json, metrics.jsonl and eval.json of each trial go to results/trials/NAME;
# `python experiments/trials_table.py` prints the table and draws the time-vs-robustness
# plot. About 4-8 minutes per trial on 2 cores; run on an otherwise idle machine if the
# training times are to mean anything.
#
#   bash experiments/mnist_quick_trials.sh [NAME ...]   # default: every trial
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh
. .venv/bin/activate
BASE=(--dataset mnist --model small-mnist --eps 0.3 --adversary pgd --attack-steps 7
      --attack-step-size 0.1 --eps-ramp-epochs 1 --epochs 4 --batch-size 100
      --optimizer adam --lr 1e-3 --schedule onecycle --precision bf16)
declare -A TRIALS=(
  [baseline]=""
  [q-lr5e3]="--lr 5e-3"
  [q-e8]="--lr 5e-3 --epochs 8"
  [q-e7s5]="--lr 5e-3 --epochs 7 --attack-steps 5 --attack-step-size 0.12"
  [q-w2e3]="--lr 5e-3 --epochs 3 --model-kwargs {\"width\":2}"
  [A-w2e4]="--lr 5e-3 --epochs 4 --model-kwargs {\"width\":2}"
  [B-eps35]="--lr 5e-3 --eps 0.35 --attack-step-size 0.12"
  [C-pgd10]="--lr 5e-3 --attack-steps 10 --attack-step-size 0.05"
  [D-w2e5]="--lr 5e-3 --epochs 5 --model-kwargs {\"width\":2}"
)
names=("$@")
[ ${#names[@]} -eq 0 ] && names=(baseline q-lr5e3 q-e8 q-e7s5 q-w2e3 A-w2e4 B-eps35 C-pgd10 D-w2e5)
for name in "${names[@]}"; do
  run=runs/trials/$name
  # shellcheck disable=SC2086  # the overrides are words
  robustopt train --out "$run" --force "${BASE[@]}" ${TRIALS[$name]}
  robustopt evaluate "$run" --eps 0.3 --n 1000 --no-sanity
  mkdir -p "results/trials/$name"
  cp "$run/config.json" "$run/metrics.jsonl" "$run/eval.json" "results/trials/$name/"
done
