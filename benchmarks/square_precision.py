"""Does bfloat16 weaken the Square attack? Float32 and bf16 runs on the same points, paired.

Square's queries are forward passes only, so on a CPU with AVX-512 BF16 they can run
under bfloat16 autocast (``square(..., autocast=torch.bfloat16)``). Every success is
confirmed in float32 and every verdict is float32, so bf16 cannot overstate the attack; it
could still weaken the search, because proposals are accepted on the bf16 loss. This
measures that on a published evaluation:

* a random sample of the points it left standing, attacked by Square under each
  precision and each ``--seeds`` seed (same budget as the re-check: margin loss,
  ``p_init`` 0.8, no schedule rescaling). For each run: points broken, time, queries per
  second, and the float32 margin loss of every returned point (higher is a stronger
  attack: a point breaks at loss > 0). Then, per seed, the mean paired difference
  bf16 - float32 with a bootstrap 95% interval, next to the same difference between two
  float32 seeds: how much the loss moves with nothing but the random draws changed;
* optionally (``--known``) the points earlier re-checks broke: the hard cases that only
  a strong black-box search finds, each attacked under both precisions and every seed.

Its run on mnist-best seed 2 (the command in benchmarks/README.md) found bf16 2.49x faster
and measurably weaker, so the evaluator keeps Square in float32. Run it alone on the
machine: it times the attacks.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from recheck_eval import read_eval, read_rechecks

import robustopt
from robustopt.atomic import write_json_atomic
from robustopt.attacks.square import square
from robustopt.errors import RobustOptError
from robustopt.modelfile import build_from_record, read_model_file, weights_sha256
from robustopt.threat import LinfBall

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16}


def run_square(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float,
               queries: int, seed: int, precision: str, batch: int) -> dict:
    """One Square run in ``batch``-row pieces (as the evaluator batches), one generator."""
    gen = torch.Generator().manual_seed(seed)
    losses, broken, spent, passes = [], [], 0, 0
    t0 = time.perf_counter()
    for lo in range(0, len(x), batch):
        res = square(model, x[lo:lo + batch], y[lo:lo + batch], LinfBall(eps),
                     queries=queries, p_init=0.8, rescale_schedule=False, generator=gen,
                     autocast=PRECISIONS[precision])
        losses.append(res.loss.float())
        broken.append(res.success)
        spent += int(res.queries.sum())
        passes += res.passes
    seconds = time.perf_counter() - t0
    return {"precision": precision, "seed": seed, "points": len(x),
            "broken": int(torch.cat(broken).sum()), "time_s": seconds, "queries": spent,
            "queries_per_s": spent / seconds, "forward_calls": passes,
            "loss": torch.cat(losses).tolist(),
            "broken_mask": torch.cat(broken).tolist()}


def paired(a: list[float], b: list[float], reps: int = 2000, seed: int = 0
           ) -> tuple[float, float, float]:
    """Mean of ``a - b`` with a bootstrap 95% interval over the points."""
    d = torch.tensor(a, dtype=torch.float64) - torch.tensor(b, dtype=torch.float64)
    g = torch.Generator().manual_seed(seed)
    means = d[torch.randint(len(d), (reps, len(d)), generator=g)].mean(dim=1)
    lo, hi = torch.quantile(means, torch.tensor([0.025, 0.975], dtype=torch.float64))
    return float(d.mean()), float(lo), float(hi)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    p.add_argument("--eval", type=Path, required=True, help="an eval.json robustopt wrote")
    p.add_argument("--model", required=True, help="the run or model file it evaluated")
    p.add_argument("--from", dest="lo", type=int, help="first test index to sample from")
    p.add_argument("--to", dest="hi", type=int, help="one past the last test index")
    p.add_argument("--sample", type=int, default=300, help="standing points to attack")
    p.add_argument("--queries", type=int, default=10000)
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    p.add_argument("--known", type=Path, nargs="*", default=[],
                   help="re-check JSON files whose broken points to attack too")
    p.add_argument("--batch-size", type=int, default=500)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    for name in ("sample", "queries", "batch_size"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if len(set(args.seeds)) != len(args.seeds):
        p.error("--seeds must not repeat a seed")
    try:
        return measure(args, read_eval(args.eval))
    except RobustOptError as err:  # a missing or foreign model file, missing data: one line
        raise SystemExit(str(err)) from None


def measure(args: argparse.Namespace, ev: dict) -> int:
    lo = ev["start"] if args.lo is None else args.lo
    hi = ev["stop"] if args.hi is None else args.hi
    if not ev["start"] <= lo < hi <= ev["stop"]:
        raise SystemExit(f"--from {lo} --to {hi} is outside the evaluation's test indices")
    record, tensors = read_model_file(args.model)
    digest = weights_sha256(tensors)
    if ev["digest"] and digest != ev["digest"]:
        raise SystemExit(f"{args.model} holds other weights than {args.eval} attacked")
    model = build_from_record(record, tensors, args.model, torch.device("cpu"))
    known = read_rechecks(args.known, digest)["points"] if args.known else []
    data = robustopt.load_dataset(ev["dataset"], "test", args.data_dir)
    x, y = data.tensors(n=max([hi, *(i + 1 for i in known)]))
    standing = torch.tensor(ev["robust"][lo - ev["start"]:hi - ev["start"]]).nonzero()
    standing = standing.flatten() + lo
    pick = torch.randperm(len(standing), generator=torch.Generator().manual_seed(0))
    idx = standing[pick[:args.sample].sort().values]
    print(f"{args.eval}: {len(idx)} of the {len(standing)} points it left standing in "
          f"{lo}..{hi - 1}; Square-{args.queries}, seeds {args.seeds}, "
          f"{torch.get_num_threads()} threads", flush=True)

    for precision in PRECISIONS:  # warm-up: first calls pay one-off kernel set-up
        run_square(model, x[idx[:8]], y[idx[:8]], ev["eps"], 20, 0, precision, 8)
    runs, known_runs = [], []
    for seed in args.seeds:
        for precision in PRECISIONS:
            r = run_square(model, x[idx], y[idx], ev["eps"], args.queries, seed, precision,
                           args.batch_size)
            runs.append(r)
            print(f"  {precision} seed {seed}: broke {r['broken']} of {r['points']}, "
                  f"{r['time_s']:.0f} s, {r['queries_per_s']:,.0f} queries/s, mean loss "
                  f"{sum(r['loss']) / len(r['loss']):.4f}", flush=True)
            if known:
                k = run_square(model, x[known], y[known], ev["eps"], args.queries, seed,
                               precision, args.batch_size)
                known_runs.append(k)
                hit = [i for i, b in zip(known, k["broken_mask"], strict=True) if b]
                print(f"    on the {len(known)} points earlier re-checks broke: broke "
                      f"{len(hit)} {hit}", flush=True)

    by = {(r["precision"], r["seed"]): r for r in runs}
    fp32 = [by["fp32", s] for s in args.seeds]
    speed = sum(by["bf16", s]["queries_per_s"] for s in args.seeds) / \
        sum(r["queries_per_s"] for r in fp32)
    print(f"bf16 / fp32 queries per second: {speed:.2f}")
    comparisons = {}
    for s in args.seeds:
        comparisons[f"bf16-fp32 seed {s}"] = paired(by["bf16", s]["loss"], by["fp32", s]["loss"])
    if len(args.seeds) > 1:
        s0, s1 = args.seeds[:2]
        comparisons[f"fp32 seed {s1} - fp32 seed {s0} (noise)"] = paired(
            by["fp32", s1]["loss"], by["fp32", s0]["loss"])
    for label, (mean, low, high) in comparisons.items():
        print(f"  mean paired loss difference {label}: {mean:+.4f} (95% {low:+.4f} .. {high:+.4f})")
    broke = {p: sum(by[p, s]["broken"] for s in args.seeds) for p in PRECISIONS}
    print(f"points broken over the seeds: fp32 {broke['fp32']}, bf16 {broke['bf16']}")
    if args.out:
        write_json_atomic(args.out, {
            "eval": str(args.eval), "model": str(args.model), "weights_sha256": digest,
            "test_indices": {"start": lo, "stop": hi}, "attacked": idx.tolist(),
            "queries": args.queries, "seeds": args.seeds, "threads": torch.get_num_threads(),
            "runs": runs, "known": known, "known_runs": known_runs,
            "bf16_over_fp32_speed": speed,
            "paired_loss": {k: dict(zip(("mean", "lo", "hi"), v, strict=True))
                            for k, v in comparisons.items()}})
        print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
