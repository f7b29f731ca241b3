#!/usr/bin/env bash
# The MNIST headline's full 10,000-point evaluation on an accelerator: for each seed's run
# directory (trained on 2 CPU cores by experiments/mnist_headline.sh), the headline suite
# (experiments/suites/mnist-headline.json: AutoAttack's standard attacks, then PGD-100 with 5
# restarts on the cross-entropy and the margin loss at step 0.01 eps = 0.003 and at step
# 1/30 eps = 0.01, the issue's step; a suite's "step" is a fraction of eps) and the
# independent cross-check with torchattacks' APGD-CE, APGD-T and Square
# (benchmarks/eval_crosscheck.py), on all N test points; then a stronger black-box re-check
# of every point the headline suite left standing: Square with 10,000 queries under another
# seed (benchmarks/recheck_eval.py).
#
#   bash experiments/mnist_headline_device.sh OUTDIR [DEVICE] [N] [PRESET] [SEEDS...]
#   # e.g.  bash experiments/mnist_headline_device.sh results/headline10k cuda 10000 mnist-quick 0 1 2
#
# Expects robustopt importable and ROBUSTOPT_DATA set (scripts/env.sh does both on a checkout
# with .venv); torchattacks installed (pip install --no-deps torchattacks). Leaves the run
# directories untouched: every output goes to OUTDIR.
set -euo pipefail
cd "$(dirname "$0")/.."
OUTDIR=${1:?usage: mnist_headline_device.sh OUTDIR [DEVICE] [N] [PRESET] [SEEDS...]}
DEVICE=${2:-cuda}
N=${3:-10000}
PRESET=${4:-mnist-quick}
shift $(( $# < 4 ? $# : 4 ))
SEEDS=${*:-0 1 2}
PY=${PYTHON:-python}
mkdir -p "$OUTDIR"
for seed in $SEEDS; do
  run=results/runs/$PRESET-seed$seed
  echo "== $run: headline suite on $N points ($DEVICE)"
  "$PY" -m robustopt evaluate "$run" --n "$N" --suite experiments/suites/mnist-headline.json \
    --device "$DEVICE" --batch-size "$N" --out "$OUTDIR/$PRESET-seed$seed.eval.json" \
    2>&1 | tee "$OUTDIR/$PRESET-seed$seed.eval.log"
done
for seed in $SEEDS; do
  run=results/runs/$PRESET-seed$seed
  echo "== $run: torchattacks cross-check on $N points ($DEVICE)"
  "$PY" benchmarks/eval_crosscheck.py --model "$run" --n "$N" --device "$DEVICE" \
    --batch-size "$N" --seed "$seed" --out "$OUTDIR/$PRESET-seed$seed.crosscheck.json" \
    2>"$OUTDIR/$PRESET-seed$seed.crosscheck.err"
done
for seed in $SEEDS; do
  run=results/runs/$PRESET-seed$seed
  echo "== $run: Square-10000 (seed 1) on the points the headline suite left standing ($DEVICE)"
  "$PY" benchmarks/recheck_eval.py --eval "$OUTDIR/$PRESET-seed$seed.eval.json" --model "$run" \
    --suite '[{"attack": "square", "queries": 10000}]' --seed 1 --device "$DEVICE" \
    --batch-size "$N" --out "$OUTDIR/$PRESET-seed$seed.recheck-square10k.json" \
    2>&1 | tee "$OUTDIR/$PRESET-seed$seed.recheck-square10k.txt"
done
