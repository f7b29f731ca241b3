"""Merge evaluation shards (``robustopt evaluate --start S --n N``) into one evaluation.

Prints the merged chain and, with ``--out``, writes it in ``eval.json``'s layout (so
``headline_table.py --evals`` reads it) plus ``shards``, each shard's range and figures.
See ``robustopt.evaluate.shards`` for what must match.

    python experiments/merge_eval_shards.py RUN/eval.json RUN/shards/eval-*.json \\
        --out results/headline10k/mnist-best-seed0.eval.json
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from robustopt.atomic import write_json_atomic
from robustopt.errors import RobustOptError
from robustopt.evaluate.shards import load_shard, merge_shards, shards_table


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("shards", nargs="+", type=Path, help="eval JSON files of one evaluation")
    p.add_argument("--out", type=Path, help="write the merged evaluation here")
    p.add_argument("--blocks", type=int, metavar="SIZE",
                   help="also print clean and robust counts per block of SIZE test images")
    args = p.parse_args(argv)
    try:
        doc = merge_shards([(path, load_shard(path)) for path in args.shards])
    except RobustOptError as exc:
        print(f"merge_eval_shards: error: {exc}", file=sys.stderr)
        return 2
    print(shards_table(doc))
    if args.blocks:
        ex, start = doc["per_example"], doc["test_indices"]["start"]
        for lo in range(0, doc["n"], args.blocks):
            hi = min(lo + args.blocks, doc["n"])
            print(f"images {start + lo}..{start + hi - 1}: clean {sum(ex['clean_correct'][lo:hi])}"
                  f", robust {sum(ex['robust'][lo:hi])} of {hi - lo}")
    if args.out:
        write_json_atomic(args.out, doc)
        print(f"merged evaluation written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
