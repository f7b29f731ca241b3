"""Time ``robustopt.landscape.restart_losses``: N random restarts of PGD on one MNIST point.

Target (the restart-histogram experiment): 10^5 restarts of PGD-40 on one MNIST test
point with the small MNIST CNN in at most 3 minutes on 2 CPU cores. The Madry et al.
CNN is about 20x more work per pass; by default it is timed on fewer restarts and the
time for 10^5 is extrapolated linearly (restarts are independent stacked batches, so
time is linear in their number) and labelled as such.

    python benchmarks/landscape_restarts.py                       # both models
    python benchmarks/landscape_restarts.py --models small-mnist --restarts 100000
    python benchmarks/landscape_restarts.py --run /tmp/runs/quick  # trained small-mnist weights

Printed: one line per (model, precision) with restarts/s and the (extrapolated) time for
10^5. Run on a quiet machine: timings on busy cores are meaningless.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

import robustopt
from robustopt.landscape import restart_losses
from robustopt.models import build_model
from robustopt.models.normalize import DATASET_STATS
from robustopt.threat import LinfBall

TARGET = 100_000


def _model(name: str, run: str | None) -> tuple[torch.nn.Module, str]:
    if run and name == "small-mnist":
        model = robustopt.load_model(run)
        spec = getattr(model, "robustopt_spec", {})
        if spec.get("arch") == name:
            return model.eval(), f"trained weights from {run}"
    mean, std = DATASET_STATS["mnist"]
    torch.manual_seed(0)
    return build_model(name, mean=mean, std=std).eval(), "untrained weights"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["small-mnist", "madry-mnist"])
    p.add_argument("--restarts", type=int, default=TARGET,
                   help="restarts for small-mnist (default 10^5)")
    p.add_argument("--madry-restarts", type=int, default=10_000,
                   help="restarts for madry-mnist, extrapolated to 10^5 (default 10^4)")
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--chunk", type=int, default=256)
    p.add_argument("--precision", nargs="+", default=["fp32", "bf16"],
                   choices=("fp32", "bf16"))
    p.add_argument("--run", help="run directory with trained small-mnist weights")
    p.add_argument("--data-dir", default=os.environ.get("ROBUSTOPT_DATA"))
    p.add_argument("--index", type=int, default=0, help="MNIST test image (default 0)")
    p.add_argument("--json", default="results/landscape_restarts.json",
                   help="raw timings (default results/landscape_restarts.json)")
    args = p.parse_args(argv)

    data = robustopt.load_dataset("mnist", "test", args.data_dir)
    x, y = data.tensors(n=args.index + 1)
    x, y = x[args.index:], y[args.index:]
    threat = LinfBall(0.3)
    header = {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
              "torch": torch.__version__, "robustopt": robustopt.__version__,
              "python": platform.python_version(), "cpu_count": os.cpu_count(),
              "torch_threads": torch.get_num_threads(), "loadavg_start": os.getloadavg(),
              "settings": f"L-inf eps 0.3, PGD-{args.steps}, step 2.5*eps/steps, random "
                          f"start, MNIST test #{args.index}, chunk {args.chunk}"}
    print("restart histogram benchmark: robustopt.landscape.restart_losses on one point")
    for k, v in header.items():
        print(f"  {k:<14}{v}")
    print()
    print(f"{'model':<14}{'weights':<44}{'precision':<10}{'restarts':>9}{'time':>10}"
          f"{'restarts/s':>12}{'time for 1e5':>14}")
    rows = []
    for name in args.models:
        model, weights = _model(name, args.run)
        n = args.restarts if name == "small-mnist" else args.madry_restarts
        for prec in args.precision:
            autocast = torch.bfloat16 if prec == "bf16" else None
            fmt = torch.channels_last if autocast is not None else torch.contiguous_format
            model = model.to(memory_format=fmt)  # oneDNN's fast bf16 convs want NHWC
            restart_losses(model, x, y, threat, restarts=min(256, n), steps=2, trace=0,
                           chunk=args.chunk, autocast=autocast)  # warm-up
            t0 = time.perf_counter()
            res = restart_losses(model, x, y, threat, restarts=n, steps=args.steps, trace=0,
                                 chunk=args.chunk, autocast=autocast)
            elapsed = time.perf_counter() - t0
            full = elapsed * TARGET / n
            tag = "" if n == TARGET else " (extrap.)"
            q = res.meta["points"][0]["final_loss"]
            print(f"{name:<14}{weights[:43]:<44}{prec:<10}{n:>9,}{elapsed:>9.1f}s"
                  f"{n / elapsed:>12.0f}{full:>9.1f}s{tag}", flush=True)
            rows.append({"model": name, "weights": weights, "precision": prec, "restarts": n,
                         "time_s": elapsed, "restarts_per_s": n / elapsed,
                         "time_for_1e5_s": full, "extrapolated": n != TARGET,
                         "final_loss": q})
    header["loadavg_end"] = os.getloadavg()
    print(f"\n  loadavg_end   {header['loadavg_end']}")
    print("target: small-mnist, 10^5 restarts of PGD-40 in <= 180 s")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({**header, "rows": rows}, indent=2) + "\n")
        print(f"raw timings written to {args.json}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
