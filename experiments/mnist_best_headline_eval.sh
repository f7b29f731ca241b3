#!/usr/bin/env bash
# The whole published evaluation of the mnist-best runs, one seed after another, resumable:
# for each seed K of results/runs/NAME-seedK,
#   1. the headline chain plus smoothed APGD-CE x5 on all 10,000 test images in 1,000-image
#      shards (mnist_headline_shards.sh with SUITE=experiments/suites/mnist-headline-smooth.json;
#      ~29 minutes a shard on this 2-core CPU, ~5 hours a seed);
#   2. the shards merged into results/headline_shards/NAME-seedK.eval.json (+ .txt);
#   3. Square with 10,000 queries under another seed (1) on a random 300 of the points still
#      standing, a bigger black-box budget with new draws (~10 minutes), written to
#      results/recheck/NAME-seedK-square10k-seed1-sample300.json and combined (.combined.txt);
#   4. torchattacks' APGD-CE, APGD-T and Square-5000 (someone else's code, chained by its
#      MultiAttack) on the standing points of test images 0..499
#      (results/recheck/NAME-seedK-torchattacks-0-500.json; needs torchattacks installed:
#      pip install --no-deps torchattacks).
# A step whose output exists is skipped, so a killed run (or a session's end) resumes at
# the shard it stopped in; nothing finished is redone or overwritten.
#
#   bash experiments/mnist_best_headline_eval.sh [SEEDS...]        # default: 0 1 2
#   NAME=mnist-best-tcnn (default) names the runs.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh
. .venv/bin/activate
NAME=${NAME:-mnist-best-tcnn}
for seed in ${*:-0 1 2}; do
  run=results/runs/$NAME-seed$seed
  merged=results/headline_shards/$NAME-seed$seed.eval.json
  sample=results/recheck/$NAME-seed$seed-square10k-seed1-sample300.json
  theirs=results/recheck/$NAME-seed$seed-torchattacks-0-500.json
  SUITE=experiments/suites/mnist-headline-smooth.json \
    bash experiments/mnist_headline_shards.sh "$run" 0 10000
  if [ ! -f "$merged" ]; then
    python experiments/merge_eval_shards.py "$run"/shards/eval-*.json --out "$merged" \
      > "${merged%.eval.json}.txt"
    tail -n 3 "${merged%.eval.json}.txt"
  fi
  if [ ! -f "$sample" ]; then
    python benchmarks/recheck_eval.py --eval "$merged" --model "$run" \
      --suite '[{"attack": "square", "queries": 10000}]' --seed 1 --sample 300 \
      --out "$sample" > "${sample%.json}.txt"
    python benchmarks/recheck_eval.py --eval "$merged" --combine "$sample" \
      > "${sample%.json}.combined.txt"
    tail -n 2 "${sample%.json}.combined.txt"
  fi
  if [ ! -f "$theirs" ]; then
    # not fatal: without torchattacks the next seeds still run
    if python benchmarks/recheck_eval.py --eval "$merged" --model "$run" --from 0 --to 500 \
        --out "$theirs" > "${theirs%.json}.txt" 2>&1; then
      tail -n 2 "${theirs%.json}.txt"
    else
      echo "torchattacks re-check of seed $seed failed: ${theirs%.json}.txt"
    fi
  fi
done
