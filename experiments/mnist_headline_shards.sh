#!/usr/bin/env bash
# The headline chain (experiments/suites/mnist-headline.json, as mnist_headline.sh runs it)
# on test images FROM..TO-1 of one trained run, in shards of SIZE images: one
# `robustopt evaluate --start S --n SIZE` per shard into RUN/shards/eval-S-E.json (its log
# beside it). A shard whose JSON exists is skipped, so a killed or timed-out session resumes
# where it stopped, and shards can run on different machines. On this 2-core CPU a
# 1,000-image shard takes ~22 minutes for the small-CNN mnist-best-seedK runs and ~29 with
# SUITE=...-smooth.json for the trades-mnist ones (1,739 s alone). A kept run without its weight
# files gets them back first (`robustopt train --restore RUN`, checked against its record).
#
#   bash experiments/mnist_headline_shards.sh RUN FROM TO [SIZE]     # SIZE defaults to 1000
#   SUITE=experiments/suites/mnist-headline-smooth.json bash experiments/mnist_headline_shards.sh ...
#   python experiments/merge_eval_shards.py RUN/eval.json RUN/shards/eval-*.json
#
# On 2 cores, two ranges can run side by side with one thread each. A short probe
# (benchmarks/eval_processes.py) measured 1.14x the work of one two-thread process, but two
# real mnist-best-tcnn shards side by side took 3,345 s and 3,584 s against 1,739 s for one
# shard alone (a test run overlapped them for ~4 minutes): no measurable gain on full shards.
#   OMP_NUM_THREADS=1 bash experiments/mnist_headline_shards.sh RUN 1000 6000 &
#   OMP_NUM_THREADS=1 bash experiments/mnist_headline_shards.sh RUN 6000 10000 &
#
# RUN/eval.json from `mnist_headline.sh PRESET 1000` covers images 0..999, so FROM=1000
# completes it to the full test set. Keep SIZE (and the batch size) the same across
# sessions: shards are found by file name, and shards on 500-image boundaries attack their
# points exactly as one 10,000-image evaluation would. SUITE (default the headline chain)
# must be the same for every shard of a run; mnist-headline-smooth.json appends the
# smoothed APGD-CE x5 re-check (beta 15) to the chain, so one pass per shard does both.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh
. .venv/bin/activate
usage="usage: mnist_headline_shards.sh RUN FROM TO [SIZE]"
RUN=${1:?$usage}
FROM=${2:?$usage}
TO=${3:?$usage}
SIZE=${4:-1000}
SUITE=${SUITE:-experiments/suites/mnist-headline.json}
if [ ! -f "$RUN/best.safetensors" ] && [ -f "$RUN/metrics.jsonl" ]; then
  # weights are not kept in the repository: regenerate exactly these (~20 min here)
  robustopt train --restore "$RUN"
fi
mkdir -p "$RUN/shards"
for (( s = FROM; s < TO; s += SIZE )); do
  e=$(( s + SIZE < TO ? s + SIZE : TO ))
  out=$RUN/shards/eval-$s-$e.json
  if [ -f "$out" ]; then
    echo "shard $s..$((e - 1)): $out exists, skipped"
    continue
  fi
  if ! robustopt evaluate "$RUN" --start "$s" --n $(( e - s )) \
      --suite "$SUITE" --out "$out" > "${out%.json}.log" 2>&1; then
    echo "shard $s..$((e - 1)) failed; the end of ${out%.json}.log:"
    tail -n 3 "${out%.json}.log"
    exit 1
  fi
  echo "shard $s..$((e - 1)): $(grep "robust accuracy (worst case" "${out%.json}.log")"
done
