"""APGD-T wall time against the chunk size of its stacked rows (``max_batch``).

APGD-T stacks 9 targets x N examples into one batch of rows; this times it on the first
``--n`` MNIST test points of a model for several chunk sizes (same seed, so the verdicts
must agree) — the measurement behind :func:`robustopt.attacks.core.default_chunk`.

    python benchmarks/apgd_chunk.py --model results/runs/mnist-quick-seed0   # ~1.5 min
"""

from __future__ import annotations

import argparse
import time

import torch

import robustopt
from robustopt.attacks.apgd import apgd_t
from robustopt.attacks.core import default_chunk


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="run directory or model file (MNIST)")
    p.add_argument("--n", type=int, default=250, help="first N test points (250)")
    p.add_argument("--chunks", default="8192,default,512",
                   help="comma-separated max_batch values; 'default' = default_chunk")
    args = p.parse_args()
    model = robustopt.load_model(args.model)
    x, y = robustopt.load_dataset("mnist", "test").tensors(n=args.n)
    print(f"APGD-T (9 targets, 100 steps, stop on success) on {args.n} points of "
          f"{args.model}: {9 * args.n} stacked rows; torch threads {torch.get_num_threads()}")
    for text in args.chunks.split(","):
        chunk = default_chunk(x) if text == "default" else int(text)
        start = time.perf_counter()
        res = apgd_t(model, x, y, robustopt.LinfBall(0.3), steps=100, n_targets=9,
                     stop_on_success=True, max_batch=chunk,
                     generator=torch.Generator().manual_seed(0))
        print(f"max_batch {chunk:>5}{' (default)' if text == 'default' else '':<10} "
              f"{time.perf_counter() - start:6.1f} s  robust accuracy {res.accuracy:.1%}",
              flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
