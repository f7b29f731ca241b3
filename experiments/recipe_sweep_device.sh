#!/usr/bin/env bash
# A recipe sweep on an accelerator: many candidate recipes for the CPU targets (CIFAR-10 in
# 60 minutes, mnist-best in 20) trained side by side on one GPU, each then attacked, so that
# only the most promising recipe needs the hour of 2-core CPU time that is the actual result.
# The GPU only ranks recipes: every published figure comes from the CPU run of the winner.
# Epoch counts are sized to the CPU budget from CPU throughput: measured for cifar-cnn width
# 32/64 and the ResNets (benchmarks/cifar_train_speed.py) and MNIST width 3, interpolated
# for the other widths.
#
#   bash experiments/recipe_sweep_device.sh OUTDIR [DEVICE] [TRIAL ...]   # default: all
#
# Each trial trains into OUTDIR/NAME and writes OUTDIR/NAME/eval.json: for CIFAR-10 PGD-20
# (step 2/255, 5 restarts) then the standard suite on the first 1,000 test images; for MNIST
# the training headline's chain (experiments/suites/mnist-headline.json) on the first 1,000.
# Expects robustopt importable and ROBUSTOPT_DATA set. Every trial is cut at TRIAL_LIMIT_S.
set -uo pipefail
cd "$(dirname "$0")/.."
OUTDIR=${1:?usage: recipe_sweep_device.sh OUTDIR [DEVICE] [TRIAL ...]}
DEVICE=${2:-cuda}
shift $(( $# < 2 ? $# : 2 ))
PY=${PYTHON:-python}
LIMIT=${TRIAL_LIMIT_S:-480}
N=${N:-1000}
CIFAR_SUITE=${CIFAR_SUITE:-experiments/suites/cifar10-headline.json}
EXTRA=${EXTRA:-}   # appended to every trial (smoke tests: "--train-n 300 --epochs 1")
declare -A TRIALS=(
  # Every trial spells out what differs from today's presets, so it reruns as it ran.
  # CIFAR-10 (cifar10-cpu: cifar-cnn, FGSM-RS 10/255, SGD one-cycle 0.1, bf16)
  [c-w64e22]="--preset cifar10-cpu --heldout-n 1000 --eval-steps 20 --epochs 22"
  [c-w48e34]="--preset cifar10-cpu --heldout-n 1000 --eval-steps 20 --model-kwargs {\"width\":48} --epochs 34"
  [c-w32e60]="--preset cifar10-cpu --heldout-n 1000 --eval-steps 20 --model-kwargs {\"width\":32} --epochs 60"
  [c-w96e10]="--preset cifar10-cpu --heldout-n 1000 --eval-steps 20 --model-kwargs {\"width\":96} --epochs 10"
  [c-w64e15-pgd2]="--preset cifar10-cpu --heldout-n 1000 --eval-steps 20 --epochs 15 --adversary pgd --attack-steps 2 --attack-step-size 5/255"
  [c-w64e15-pgd2-s1]="--preset cifar10-cpu --heldout-n 1000 --eval-steps 20 --epochs 15 --adversary pgd --attack-steps 2 --attack-step-size 5/255 --seed 1"
  [c-rn18e5]="--preset cifar10-fast --epochs 5"
  [c-wrn16-4e7]="--preset cifar10-cpu --heldout-n 1000 --eval-steps 20 --model wide-resnet --model-kwargs {\"depth\":16,\"width\":4} --epochs 7"
  # MNIST (from mnist-best: small-mnist, TRADES, eps ramp 3, Adam 3e-3 one-cycle, bf16;
  # the sweep ran beta 6 with no weight averaging)
  [m-best]="--preset mnist-best --ema-decay 0 --trades-beta 6 --attack-steps 10 --attack-step-size 0.075 --model-kwargs {\"width\":3} --epochs 13"
  [m-beta3]="--preset mnist-best --ema-decay 0 --attack-steps 10 --attack-step-size 0.075 --model-kwargs {\"width\":3} --epochs 13 --trades-beta 3"
  [m-w4e10]="--preset mnist-best --ema-decay 0 --trades-beta 6 --attack-steps 10 --attack-step-size 0.075 --model-kwargs {\"width\":4} --epochs 10"
  [m-w4e10-beta3]="--preset mnist-best --ema-decay 0 --attack-steps 10 --attack-step-size 0.075 --model-kwargs {\"width\":4} --epochs 10 --trades-beta 3"
  [m-pgd7e17]="--preset mnist-best --ema-decay 0 --trades-beta 6 --model-kwargs {\"width\":3} --attack-steps 7 --attack-step-size 0.1 --epochs 17"
)
names=("$@")
[ ${#names[@]} -eq 0 ] && names=("${!TRIALS[@]}")
mkdir -p "$OUTDIR"
# Decode each dataset once before the trials start (the cache is shared).
"$PY" -c "import robustopt as r; [r.load_dataset(d, s) for d in ('mnist', 'cifar10') for s in ('train', 'test')]"

trial() {
  local name=$1 run=$OUTDIR/$1 suite
  case $name in
    c-*) suite=$CIFAR_SUITE ;;
    *) suite=experiments/suites/mnist-headline.json ;;
  esac
  # shellcheck disable=SC2086  # the overrides are words
  "$PY" -m robustopt train ${TRIALS[$name]} $EXTRA --device "$DEVICE" --out "$run" --force \
    && "$PY" -m robustopt evaluate "$run" --n "$N" --suite "$suite" --device "$DEVICE" \
         --batch-size "$N" --out "$run/eval.json"
}
for name in "${names[@]}"; do
  ( export OMP_NUM_THREADS=1; SECONDS=0
    timeout "$LIMIT" bash -c "$(declare -f trial); $(declare -p TRIALS OUTDIR DEVICE PY N EXTRA CIFAR_SUITE); trial $name" \
      >"$OUTDIR/$name.log" 2>&1
    echo "== $name rc $? after ${SECONDS}s" | tee -a "$OUTDIR/$name.log" ) &
done
wait
