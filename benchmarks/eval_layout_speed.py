"""Evaluation time with the model's convolution weights in the default layout vs channels-last.

``evaluate`` holds a conv net's weights channels-last on the CPU (``fast_layout``); this
times the same evaluation both ways on the first ``--n`` MNIST test images of each kept run
given, with a suite that has a gradient attack and a black-box one, and checks that the two
agree point by point (robust or not, and which attack broke it). Each layout runs once per
model, default layout first; nothing else should run on the machine meanwhile.

    python benchmarks/eval_layout_speed.py | tee results/eval_layout_speed.txt   # ~6 min
"""

from __future__ import annotations

import argparse
import time

import torch

import robustopt
from robustopt.evaluate import EvalResult, evaluate
from robustopt.modelfile import load_model
from robustopt.threat import LinfBall

RUNS = ("results/runs/mnist-best-tcnn-seed0", "results/runs/mnist-quick-seed0")
SUITE = [{"attack": "apgd", "loss": "ce"}, {"attack": "square", "queries": 1000}]


def timed(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, fast: bool
          ) -> tuple[float, EvalResult]:
    start = time.perf_counter()
    res = evaluate(model, x, y, LinfBall(0.3), SUITE, sanity=False, channels_last=fast)
    return time.perf_counter() - start, res


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=500, help="first N MNIST test images")
    p.add_argument("--data", default=None, help="dataset directory ($ROBUSTOPT_DATA)")
    p.add_argument("runs", nargs="*", default=list(RUNS), help="kept run directories")
    args = p.parse_args()
    robustopt.keep_freed_memory()  # as the robustopt command evaluates
    x, y = robustopt.load_dataset("mnist", "test", args.data).tensors(n=args.n)
    print(f"evaluate(), eps 0.3, APGD-CE 100 steps then Square 1,000 queries, first {args.n} "
          f"MNIST test images, float32, {torch.get_num_threads()} threads")
    print(f"{'run':40s} {'default s':>9s} {'chl-last s':>10s} {'speed-up':>8s} "
          f"{'robust':>13s} same points")
    for run in args.runs:
        model = load_model(run)
        slow, ref = timed(model, x, y, False)
        fast, res = timed(model, x, y, True)
        same = (torch.equal(ref.robust, res.robust) and ref.broken_by == res.broken_by)
        print(f"{run:40s} {slow:9.1f} {fast:10.1f} {slow / fast:7.2f}x "
              f"{int(ref.robust.sum()):6d}/{int(res.robust.sum()):<6d} {same}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
