#!/usr/bin/env bash
# Reproduce docs/experiments.md: three MNIST models (standard, FGSM-trained, PGD-trained;
# the mnist-quick recipe: today's preset, not the width-1 4-epoch one docs/experiments.md's
# figures were made with) and every loss-landscape figure, one step at a time. About 30-40
# minutes on 2 busy CPU cores, most of it training. Figures and their JSON/NPZ data go to
# FIG (default docs/figures); the last block writes into the PGD run's plots/ and report.
#
#   bash experiments/mnist_landscape.sh [RUNS_DIR] [FIG_DIR]   # defaults runs/landscape docs/figures
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh
. .venv/bin/activate
RUNS=${1:-runs/landscape}
FIG=${2:-docs/figures}

# 5. train (or reuse) RUNS/standard, RUNS/fgsm, RUNS/pgd; FGSM vs PGD accuracy table.
#    --weights last: the standard and FGSM runs have 0% held-out PGD accuracy at every
#    epoch, so their default ("best") weights would be the first epoch's.
robustopt landscape fgsm-vs-pgd --train-dir "$RUNS" --standard --n 1000 --weights last --out "$FIG"

# 4. training curves of the three runs on one figure
robustopt landscape curves "$RUNS/standard" "$RUNS/fgsm" "$RUNS/pgd" \
  --labels standard,fgsm,pgd --out "$FIG"

# 1. loss along the FGSM and PGD directions, 20 test points, one figure per model
robustopt landscape direction "$RUNS/standard" "$RUNS/fgsm" "$RUNS/pgd" \
  --labels standard,fgsm,pgd --weights last --n 20 --out "$FIG"

# 2. final PGD-40 loss over 10^4 random restarts on 3 test points (the seed: 10^5;
#    --restarts 100000 takes ~2-5 minutes per point with the small CNN), then the
#    per-iteration traces of both models redrawn from the saved numbers
robustopt landscape restarts "$RUNS/standard" "$RUNS/pgd" --labels standard,pgd --weights last \
  --n 3 --restarts 10000 --precision bf16 --out "$FIG"
python -c "from robustopt.landscape import Result, plot_traces; plot_traces([('standard', Result.load('$FIG/standard_restarts')), ('pgd', Result.load('$FIG/pgd_restarts'))], '$FIG/restarts_compare_traces.png')"

# 3. the plane through x and two PGD maxima from different starts
robustopt landscape surface "$RUNS/standard" "$RUNS/pgd" --labels standard,pgd --weights last \
  --indices 0,1 --out "$FIG"

# the PGD run's own plots/ (picked up by the report), evaluation, report, screenshot
robustopt evaluate "$RUNS/pgd" --suite quick --n 300 --sweep 0.1,0.2,0.3,0.4
robustopt landscape direction "$RUNS/pgd" --n 20
robustopt landscape surface "$RUNS/pgd" --n 1
robustopt landscape restarts "$RUNS/pgd" --n 2 --restarts 2000 --precision bf16
robustopt report "$RUNS/pgd"
if command -v chromium > /dev/null; then
  bash experiments/screenshot_report.sh "$RUNS/pgd/report.html" /tmp/report.png
fi
