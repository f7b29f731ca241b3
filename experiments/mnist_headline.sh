#!/usr/bin/env bash
# The training issue's MNIST headline: train a preset with several seeds, then attack each
# model with the standard suite (APGD-CE, APGD-T with 9 targets, Square-5000) followed by
# PGD-100 (5 restarts; step 0.01, the issue's, and 0.003) on the cross-entropy and on the
# margin loss (experiments/suites/mnist-headline.json; its steps are fractions of eps), on the
# first N test images (default: all 10,000). Run on an otherwise idle machine: the
# training wall times are part of the result.
#
#   bash experiments/mnist_headline.sh [PRESET] [N] [SEEDS...]   # mnist-quick 10000 0 1 2
#
# Writes results/runs/PRESET-seedK/ (config, weights, metrics.jsonl, eval.json) and the
# logs under results/headline/; `python experiments/headline_table.py` tabulates them.
# EVAL=screen instead attacks all 10,000 test images with APGD-CE alone (3-4 minutes per
# model; exact clean accuracy and an upper bound on robust accuracy) into screen.json, so
# seeds can be trained and screened here and the chain run later where it is fast
# (experiments/mnist_headline_device.sh).
# FLAGS adds training flags to the preset and NAME (default: the preset) names the runs
# results/runs/NAME-seedK, for a candidate recipe the preset does not hold yet, e.g.
#   NAME=mnist-best-teps033 FLAGS="--train-eps 0.33" bash experiments/mnist_headline.sh mnist-best
# (the other headline scripts take NAME where they take PRESET).
# results/runs/mnist-best-seedK hold the mnist-best recipe until session 15 (small-mnist);
# the preset's current recipe (trades-mnist) is kept as NAME=mnist-best-tcnn.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh
. .venv/bin/activate
PRESET=${1:-mnist-quick}
N=${2:-10000}
shift $(( $# < 2 ? $# : 2 ))
SEEDS=${*:-0 1 2}
NAME=${NAME:-$PRESET}
LOGS=results/headline
mkdir -p "$LOGS"
for seed in $SEEDS; do
  run=results/runs/$NAME-seed$seed
  if [ -f "$run/metrics.jsonl" ] && [ ! -f "$run/best.safetensors" ]; then
    # a kept run without its weights: retrain it and adopt the weights only if they are
    # the same bits (its metrics and evaluations are kept as they are)
    robustopt train --restore "$run" 2>&1 | tee "$LOGS/$NAME-seed$seed.restore.log"
  elif [ ! -f "$run/best.safetensors" ]; then
    # shellcheck disable=SC2086  # FLAGS are words
    robustopt train --preset "$PRESET" --seed "$seed" --out "$run" --force ${FLAGS:-} \
      2>&1 | tee "$LOGS/$NAME-seed$seed.train.log"
  fi
  if [ "${EVAL:-headline}" = screen ]; then
    robustopt evaluate "$run" --n 10000 --suite experiments/suites/mnist-screen.json \
      --no-sanity --out "$run/screen.json" 2>&1 | tee "$LOGS/$NAME-seed$seed.screen.log"
  else
    robustopt evaluate "$run" --n "$N" --suite experiments/suites/mnist-headline.json \
      2>&1 | tee "$LOGS/$NAME-seed$seed.eval.log"
  fi
done
