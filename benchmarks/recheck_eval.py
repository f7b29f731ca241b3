"""Re-check a published evaluation with independent attacks: torchattacks' APGD-CE, APGD-T and
Square, chained, on exactly the points the evaluation counts as robust.

A robust-accuracy figure stands only if attacks written by someone else cannot break the
points it calls robust. This takes any ``eval.json`` that ``robustopt evaluate`` wrote
(one run's, one shard's, or ``experiments/merge_eval_shards.py``'s merge of 10,000 images),
checks that the model given is the one it attacked (the weights digest it records), and
runs torchattacks' counterparts of the ``standard`` suite (``_torchattacks.build_attacks``:
AutoAttack's budgets, 100 steps, 9 targets, 5,000 queries) through torchattacks' own
``MultiAttack`` on the points it left standing. Every returned point is judged here (inside
the ball and the box, misclassified by the model in eval mode, float32).

The work can be split: ``--from``/``--to`` take a range of test indices inside the
evaluation's, and ``--combine`` adds up the pieces, so the 10,000-image figure can be
re-checked a shard at a time on a CPU, or in one go on a GPU::

    python benchmarks/recheck_eval.py --eval results/headline_shards/mnist-best-seed0.eval.json \\
        --model results/runs/mnist-best-seed0 --from 0 --to 1000 \\
        --out results/recheck/mnist-best-seed0-0-1000.json
    python benchmarks/recheck_eval.py --eval results/headline_shards/mnist-best-seed0.eval.json \\
        --combine results/recheck/mnist-best-seed0-*.json

Each piece prints its table and writes it as JSON (``--out``) with the indices of every
point torchattacks broke that the evaluation had left standing.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from _torchattacks import build_attacks, import_torchattacks, run_chained, verify

import robustopt
from robustopt.atomic import write_json_atomic
from robustopt.modelfile import read_model_file, weights_sha256


def read_eval(path: Path) -> dict:
    """The parts of an eval.json a re-check needs; one-line errors for anything else."""
    try:
        doc = json.loads(path.read_text())
        settings, span = doc["settings"], doc["test_indices"]
        robust = doc["per_example"]["robust"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise SystemExit(f"{path} is not an evaluation written by robustopt evaluate "
                         f"({type(err).__name__}: {err}); pass its eval.json") from None
    if settings.get("norm") != "linf":
        raise SystemExit(f"{path} is an {settings.get('norm')} evaluation; torchattacks' "
                         "counterparts here are L-inf only")
    if span.get("gaps"):
        raise SystemExit(f"{path} has gaps in its test range {span['gaps']}; re-check the "
                         "shards it was merged from instead")
    if len(robust) != span["stop"] - span["start"]:
        raise SystemExit(f"{path}: {len(robust)} per-example records for test indices "
                         f"{span['start']}..{span['stop'] - 1}; the file is inconsistent")
    return {"dataset": settings["dataset"], "eps": float(settings["eps"]),
            "digest": settings.get("weights_sha256"), "start": span["start"],
            "stop": span["stop"], "robust": robust,
            "robust_accuracy": doc.get("robust_accuracy")}


def recheck(args: argparse.Namespace, ev: dict) -> int:
    lo = ev["start"] if args.lo is None else args.lo
    hi = ev["stop"] if args.hi is None else args.hi
    if not ev["start"] <= lo < hi <= ev["stop"]:
        raise SystemExit(f"--from {lo} --to {hi} is not inside the evaluation's test indices "
                         f"{ev['start']}..{ev['stop'] - 1}")
    _, tensors = read_model_file(args.model, args.which)
    digest = weights_sha256(tensors)
    del tensors
    if ev["digest"] and digest != ev["digest"]:
        raise SystemExit(f"{args.model} holds other weights than {args.eval} attacked (digest "
                         f"{digest[:12]} vs {ev['digest'][:12]}): pass the model it evaluated")
    ta, ta_note = import_torchattacks()
    if ta is None:
        raise SystemExit(ta_note)
    t0 = time.perf_counter()
    device = torch.device(args.device)
    model = robustopt.load_model(args.model, which=args.which, device=device)
    data = robustopt.load_dataset(ev["dataset"], "test", args.data_dir)
    x, y = data.tensors(device=device, n=hi)
    x, y = x[lo:], y[lo:]
    standing = torch.tensor(ev["robust"][lo - ev["start"]:hi - ev["start"]], dtype=torch.bool)
    idx = standing.nonzero().flatten()
    with torch.no_grad():
        classes = model(x[:1]).shape[1]
    attacks = build_attacks(ta, model, ev["eps"], seed=args.seed, classes=classes)
    print(f"re-checking {args.eval} on test images {lo}..{hi - 1} with {ta_note}", flush=True)
    print(f"  the evaluation left {len(idx)} of {hi - lo} standing; torchattacks' APGD-CE, "
          f"APGD-T ({classes - 1} targets) and Square-5000, chained, attack those", flush=True)
    broken = torch.zeros(0, dtype=torch.long)
    outside = 0
    run = {"time_s": 0.0, "passes": 0, "per_attack": {}}
    if len(idx):
        xs, ys = x[idx.to(device)], y[idx.to(device)]
        run = run_chained(ta, attacks, model, xs, ys, args.batch_size)
        check = verify(model, xs, ys, run["x_adv"], ev["eps"])
        broken = idx[check["broken"].cpu()] + lo
        outside = int(check["outside"].sum())
    survivors = len(idx) - len(broken)
    print(f"  torchattacks broke {len(broken)} of them: {survivors} of {hi - lo} still robust "
          f"({survivors / (hi - lo):.2%}); {run['time_s']:.0f} s, {run['passes']:,} passes",
          flush=True)
    if len(broken):
        print(f"  broken test indices: {broken.tolist()}")
    if outside:
        print(f"  note: {outside} returned point(s) were outside the ball or the box and were "
              "not counted as broken")
    doc = {"eval": str(args.eval), "model": str(args.model), "weights_sha256": digest,
           "torchattacks": ta_note, "seed": args.seed, "batch_size": args.batch_size,
           "device": str(device), "dataset": ev["dataset"], "eps": ev["eps"],
           "test_indices": {"start": lo, "stop": hi}, "standing_before": len(idx),
           "broken_by_torchattacks": broken.tolist(), "outside_ball": outside,
           "standing_after": survivors, "time_s": run["time_s"], "passes": run["passes"],
           "per_attack": run["per_attack"], "wall_s": time.perf_counter() - t0}
    if args.out:
        write_json_atomic(args.out, doc)
        print(f"  written to {args.out}")
    return 0


def combine(args: argparse.Namespace, ev: dict) -> int:
    """Add up re-checked pieces of one evaluation; refuses overlaps and foreign pieces."""
    loaded = sorted(((json.loads(Path(p).read_text()), p) for p in args.combine),
                    key=lambda dp: dp[0]["test_indices"]["start"])
    pieces = [d for d, _ in loaded]
    covered, broken, end = 0, [], None
    for piece, path in loaded:
        span = piece["test_indices"]
        if not ev["start"] <= span["start"] < span["stop"] <= ev["stop"]:
            raise SystemExit(f"{path} covers test indices outside {args.eval}'s")
        if ev["digest"] and piece["weights_sha256"] != ev["digest"]:
            raise SystemExit(f"{path} re-checked other weights than {args.eval} attacked")
        if end is not None and span["start"] < end:
            raise SystemExit(f"{path} overlaps another piece at test index {span['start']}")
        end = span["stop"]
        covered += span["stop"] - span["start"]
        broken += piece["broken_by_torchattacks"]
    n = ev["stop"] - ev["start"]
    spans = ", ".join(f"{p['test_indices']['start']}..{p['test_indices']['stop'] - 1}"
                      for p in pieces)
    print(f"{args.eval}: {sum(ev['robust'])} of {n} robust ({sum(ev['robust']) / n:.2%})")
    print(f"re-checked with torchattacks on {covered} of its {n} test images ({spans})")
    print(f"points torchattacks broke that the evaluation left standing: {len(broken)}"
          + (f" (test indices {sorted(broken)})" if broken else ""))
    after = sum(ev["robust"]) - len(broken)
    print(f"robust after the re-check: {after} of {n} ({after / n:.2%})"
          + ("" if covered == n else "; the rest of the range is not re-checked yet"))
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--eval", type=Path, required=True, help="eval.json to re-check")
    p.add_argument("--model", type=Path, help="the run directory or model file it attacked")
    p.add_argument("--which", choices=("best", "last"), default=None)
    p.add_argument("--from", dest="lo", type=int, default=None,
                   help="first test index (default: the evaluation's first)")
    p.add_argument("--to", dest="hi", type=int, default=None,
                   help="one past the last test index (default: the evaluation's end)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=500)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")
    p.add_argument("--out", type=Path, default=None, help="JSON file for this piece")
    p.add_argument("--combine", nargs="+", default=None,
                   help="add up pieces written by --out instead of attacking")
    args = p.parse_args(argv)
    ev = read_eval(args.eval)
    if args.combine:
        return combine(args, ev)
    if args.model is None:
        p.error("--model is required unless --combine is given")
    return recheck(args, ev)


if __name__ == "__main__":
    sys.exit(main())
