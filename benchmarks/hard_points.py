"""Which attacks break the points only a strong re-check broke? Each attack alone, every point.

A published evaluation left some test points standing that a later re-check
(``benchmarks/recheck_eval.py``) broke. If a cheap attack also breaks them, the chain can
be fixed cheaply; if only a big black-box budget does, re-checks stay expensive. This
attacks exactly those points with every attack of a suite, each on every point
(``full_budget``: no chaining), and prints which attack broke which point.

    python benchmarks/hard_points.py --model results/runs/mnist-best-seed2 \\
        --known results/recheck/mnist-best-seed2-square10k-seed1-*000.json \\
        --suite strong --seeds 0 1 2 --out results/recheck/mnist-best-seed2-hard-points.json
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from recheck_eval import parse_suite, read_rechecks

import robustopt
from robustopt.atomic import write_json_atomic
from robustopt.errors import RobustOptError
from robustopt.evaluate import evaluate
from robustopt.modelfile import build_from_record, read_model_file, weights_sha256
from robustopt.threat import LinfBall


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    p.add_argument("--model", required=True, help="the run or model file the re-checks attacked")
    p.add_argument("--known", type=Path, nargs="+", required=True, help="re-check JSON files")
    p.add_argument("--suite", default="strong", help="a suite name or a JSON suite file")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--data-dir", default=None)
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    suite = parse_suite(args.suite)
    try:
        record, tensors = read_model_file(args.model)
        digest = weights_sha256(tensors)
        model = build_from_record(record, tensors, args.model, torch.device("cpu"))
        known = read_rechecks(args.known, digest)
        idx, eps = known["points"], known["eps"]
        if not idx:
            raise SystemExit("the re-checks given broke no point: nothing to attack")
        data = robustopt.load_dataset(known["dataset"], "test", args.data_dir)
        x, y = data.tensors(n=max(idx) + 1)
    except RobustOptError as err:  # a missing or foreign model file, missing data: one line
        raise SystemExit(str(err)) from None
    x, y = x[idx], y[idx]
    print(f"{len(idx)} points the re-checks broke: {idx}; eps {eps}; suite {args.suite}; "
          f"each attack alone on every point", flush=True)
    rows = []
    for seed in args.seeds:
        t0 = time.perf_counter()
        res = evaluate(model, x, y, LinfBall(eps), suite, seed=seed, full_budget=True,
                       sanity=False, batch_size=len(idx))
        for a in res.attacks:
            hit = [i for i, b in zip(idx, a.broke_mask.tolist(), strict=True) if b]
            rows.append({"seed": seed, "attack": a.name, "broke": hit, "time_s": a.time_s})
            print(f"  seed {seed} {a.name:<28} broke {len(hit):>2} of {len(idx)} {hit}",
                  flush=True)
        print(f"  seed {seed}: {time.perf_counter() - t0:.0f} s", flush=True)
    if args.out:
        write_json_atomic(args.out, {"model": str(args.model), "weights_sha256": digest,
                                     "points": idx, "eps": eps, "suite": args.suite,
                                     "seeds": args.seeds, "runs": rows})
        print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
