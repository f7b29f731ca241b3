"""Re-check a published evaluation with other attacks, on exactly the points it counts as robust.

A robust-accuracy figure stands only if attacks written by someone else, or stronger ones,
cannot break the points it calls robust. This takes any ``eval.json`` that ``robustopt
evaluate`` wrote (one run's, one shard's, or ``experiments/merge_eval_shards.py``'s merge of
10,000 images), checks that the model given is the one it attacked (the weights digest it
records), and attacks the points it left standing with either

* torchattacks' counterparts of the ``standard`` suite (the default;
  ``_torchattacks.build_attacks``: AutoAttack's budgets, 100 steps, 9 targets, 5,000
  queries) chained by torchattacks' own ``MultiAttack``; every returned point is judged
  here (inside the ball and the box, misclassified by the model in eval mode, float32); or
* robustopt's own attacks with ``--suite`` (a suite name such as ``strong`` or a JSON suite
  file) under ``--seed``: a bigger budget or other random draws than the evaluation's.

The work can be split: ``--from``/``--to`` take a range of test indices inside the
evaluation's, ``--sample K`` a seeded random K of the standing points in it, and
``--combine`` adds up pieces, so the 10,000-image figure can be re-checked a piece at a
time on a CPU, or in one go on a GPU::

    python benchmarks/recheck_eval.py --eval results/headline_shards/mnist-best-seed0.eval.json \\
        --model results/runs/mnist-best-seed0 --from 0 --to 1000 \\
        --out results/recheck/mnist-best-seed0-0-1000.json
    python benchmarks/recheck_eval.py --eval results/headline_shards/mnist-best-seed0.eval.json \\
        --combine results/recheck/mnist-best-seed0-*.json
    python benchmarks/recheck_eval.py --eval EVAL.json --model RUN \\
        --suite '[{"attack": "square", "queries": 10000}]' --seed 1 --sample 300

Each piece prints what it did and writes it as JSON (``--out``) with the test indices of
every point the re-check broke that the evaluation had left standing.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch
from _torchattacks import build_attacks, import_torchattacks, run_chained, verify

import robustopt
from robustopt.atomic import write_json_atomic
from robustopt.errors import RobustOptError
from robustopt.evaluate import SUITE_NAMES, AttackSpec, evaluate, get_suite, read_suite_file
from robustopt.modelfile import build_from_record, read_model_file, weights_sha256
from robustopt.threat import LinfBall


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
        raise SystemExit(f"{path} is an {settings.get('norm')} evaluation; this re-check "
                         "is L-inf only")
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


def parse_suite(text: str) -> list[AttackSpec]:
    """A suite name, a JSON suite file, or a JSON list given inline; checked up front."""
    try:
        if text in SUITE_NAMES:
            return get_suite(text)
        if text.lstrip().startswith("["):
            return get_suite(json.loads(text))
        return get_suite(read_suite_file(text))
    except ValueError as err:  # JSON errors and robustopt's InputError alike
        raise SystemExit(f"--suite {text!r}: {err}") from None


def read_rechecks(paths: list[Path], digest: str) -> dict:
    """The test indices earlier re-checks (``--out`` files of this script) broke, with
    their eps and dataset; one-line errors for other files or other weights."""
    broken: set[int] = set()
    eps, dataset = None, None
    for path in paths:
        try:
            doc = json.loads(Path(path).read_text())
            found = [int(i) for i in doc["broken"]]
            piece = (doc["weights_sha256"], float(doc["eps"]), str(doc["dataset"]))
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise SystemExit(f"{path} is not a re-check written by recheck_eval.py --out "
                             f"({type(err).__name__}: {err})") from None
        if piece[0] != digest:
            raise SystemExit(f"{path} re-checked other weights than the model given")
        if eps is not None and piece[1:] != (eps, dataset):
            raise SystemExit(f"{path} re-checked {piece[2]} at eps {piece[1]}, another file "
                             f"{dataset} at eps {eps}: give re-checks of one evaluation")
        eps, dataset = piece[1], piece[2]
        broken.update(found)
    return {"points": sorted(broken), "eps": eps, "dataset": dataset}


def attack_theirs(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float,
                  args: argparse.Namespace) -> tuple[torch.Tensor, dict]:
    """torchattacks' APGD-CE, APGD-T and Square chained by its MultiAttack; judged here."""
    ta, ta_note = import_torchattacks()
    if ta is None:
        raise SystemExit(ta_note)
    with torch.no_grad():
        classes = model(x[:1]).shape[1]
    attacks = build_attacks(ta, model, eps, seed=args.seed, classes=classes)
    run = run_chained(ta, attacks, model, x, y, args.batch_size)
    check = verify(model, x, y, run["x_adv"], eps)
    label = (f"{ta_note}: APGD-CE, APGD-T ({classes - 1} targets), Square-5000, chained "
             f"(seed {args.seed})")
    return check["broken"].cpu(), {"attacks": label, "time_s": run["time_s"],
                                   "passes": run["passes"], "per_attack": run["per_attack"],
                                   "outside_ball": int(check["outside"].sum())}


def attack_ours(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float,
                args: argparse.Namespace) -> tuple[torch.Tensor, dict]:
    """robustopt's own attacks (``--suite``) under ``--seed``; points verified by evaluate."""
    res = evaluate(model, x, y, LinfBall(eps), args.suite, seed=args.seed,
                   batch_size=args.batch_size, sanity=False)
    label = f"robustopt {', '.join(a.name for a in res.attacks)} (seed {args.seed})"
    return ~res.robust.cpu(), {"attacks": label, "time_s": res.time_s,
                               "passes": res.passes_spent, "table": res.table()}


def recheck(args: argparse.Namespace, ev: dict) -> int:
    lo = ev["start"] if args.lo is None else args.lo
    hi = ev["stop"] if args.hi is None else args.hi
    if not ev["start"] <= lo < hi <= ev["stop"]:
        raise SystemExit(f"--from {lo} --to {hi} is not inside the evaluation's test indices "
                         f"{ev['start']}..{ev['stop'] - 1}")
    record, tensors = read_model_file(args.model, args.which)
    digest = weights_sha256(tensors)
    if ev["digest"] and digest != ev["digest"]:
        raise SystemExit(f"{args.model} holds other weights than {args.eval} attacked (digest "
                         f"{digest[:12]} vs {ev['digest'][:12]}): pass the model it evaluated")
    t0 = time.perf_counter()
    device = torch.device(args.device)
    model = build_from_record(record, tensors, args.model, device)
    del tensors
    data = robustopt.load_dataset(ev["dataset"], "test", args.data_dir)
    x, y = data.tensors(device=device, n=hi)
    standing = torch.tensor(ev["robust"][lo - ev["start"]:hi - ev["start"]], dtype=torch.bool)
    idx = standing.nonzero().flatten() + lo  # test indices the evaluation left standing
    if args.sample is not None and args.sample < len(idx):
        pick = torch.randperm(len(idx), generator=torch.Generator().manual_seed(args.seed))
        idx = idx[pick[:args.sample].sort().values]
    print(f"re-checking {args.eval} on test images {lo}..{hi - 1}: it left "
          f"{int(standing.sum())} of {hi - lo} standing; attacking "
          f"{'all of them' if len(idx) == int(standing.sum()) else f'a sample of {len(idx)}'}",
          flush=True)
    broken = torch.zeros(0, dtype=torch.long)
    info: dict = {"attacks": None, "time_s": 0.0, "passes": 0}
    if len(idx):
        attack = attack_ours if args.suite else attack_theirs
        hit, info = attack(model, x[idx.to(device)], y[idx.to(device)], ev["eps"], args)
        broken = idx[hit]
    print(f"  with {info['attacks']}")
    print(f"  broke {len(broken)} of the {len(idx)} points attacked; {info['time_s']:.0f} s, "
          f"{info['passes']:,} passes", flush=True)
    if len(broken):
        print(f"  broken test indices: {broken.tolist()}")
    if info.get("outside_ball"):
        print(f"  note: {info['outside_ball']} returned point(s) were outside the ball or the "
              "box and were not counted as broken")
    doc = {"eval": str(args.eval), "model": str(args.model), "weights_sha256": digest,
           "seed": args.seed, "batch_size": args.batch_size, "device": str(device),
           "dataset": ev["dataset"], "eps": ev["eps"],
           "test_indices": {"start": lo, "stop": hi}, "standing_before": int(standing.sum()),
           "attacked": idx.tolist(), "broken": broken.tolist(), **info,
           "wall_s": time.perf_counter() - t0}
    if args.out:
        write_json_atomic(args.out, doc)
        print(f"  written to {args.out}")
    return 0


def upper_bound(broken: int, attacked: int, level: float = 0.95) -> float:
    """One-sided Clopper-Pearson upper bound on a breaking rate seen as broken/attacked:
    the rate p at which seeing <= ``broken`` has probability 1 - level (bisection)."""
    if broken >= attacked:
        return 1.0

    def cdf(p: float) -> float:
        return sum(math.comb(attacked, k) * p ** k * (1 - p) ** (attacked - k)
                   for k in range(broken + 1))

    lo, hi = broken / attacked, 1.0
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if cdf(mid) > 1 - level else (lo, mid)
    return hi


def combine(args: argparse.Namespace, ev: dict) -> int:
    """Add up re-checked pieces of one evaluation; refuses overlaps and foreign pieces.

    Pieces of different re-checks (other attacks or seeds) may cover the same test images:
    each re-check's pieces are added up on their own, and a point counts as broken if any
    re-check broke it (the per-example worst case over all of them).
    """
    loaded = sorted(((json.loads(Path(p).read_text()), p) for p in args.combine),
                    key=lambda dp: dp[0]["test_indices"]["start"])
    checks: dict[str, dict] = {}
    for piece, path in loaded:
        span = piece["test_indices"]
        if not ev["start"] <= span["start"] < span["stop"] <= ev["stop"]:
            raise SystemExit(f"{path} covers test indices outside {args.eval}'s")
        if ev["digest"] and piece["weights_sha256"] != ev["digest"]:
            raise SystemExit(f"{path} re-checked other weights than {args.eval} attacked")
        check = checks.setdefault(piece["attacks"], {"attacked": set(), "broken": set(),
                                                     "covered": 0, "end": None})
        if check["end"] is not None and span["start"] < check["end"]:
            raise SystemExit(f"{path} overlaps another piece of the same re-check at test "
                             f"index {span['start']}")
        check["end"] = span["stop"]
        check["attacked"].update(piece["attacked"])
        check["covered"] += span["stop"] - span["start"]
        check["broken"].update(piece["broken"])
        print(f"{path}: test images {span['start']}..{span['stop'] - 1}, "
              f"{len(piece['attacked'])} of {piece['standing_before']} standing points "
              f"attacked, {len(piece['broken'])} broken, with {piece['attacks']}")
    n, robust = ev["stop"] - ev["start"], sum(ev["robust"])
    attacked = set().union(*(c["attacked"] for c in checks.values()))
    broken = set().union(*(c["broken"] for c in checks.values()))
    if len(checks) > 1:
        for label, c in checks.items():
            print(f"{label}: attacked {len(c['attacked'])} of the {robust} standing points, "
                  f"broke {len(c['broken'])}"
                  + (f" (test indices {sorted(c['broken'])})" if c["broken"] else ""))
    print(f"{args.eval}: {robust} of {n} robust ({robust / n:.2%}); the re-checks attacked "
          f"{len(attacked)} of those {robust} and broke {len(broken)}"
          + (f" (test indices {sorted(broken)})" if broken else ""))
    print(f"robust after the re-checks: {robust - len(broken)} of {n} "
          f"({(robust - len(broken)) / n:.2%})"
          + ("" if len(attacked) == robust else f"; {robust - len(attacked)} standing points "
             "not re-checked"))
    covered = max(c["covered"] for c in checks.values())
    if len(checks) == 1 and 0 < len(attacked) < robust and covered == n:
        # samples drawn across the whole range
        bound = upper_bound(len(broken), len(attacked))
        print(f"if the points attacked are a random sample of the standing ones: these attacks "
              f"break at most {bound:.2%} of them (one-sided 95% bound), so robust accuracy "
              f"is at least {robust * (1 - bound) / n:.2%}")
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
    p.add_argument("--suite", default=None,
                   help="re-check with robustopt's attacks instead of torchattacks': a suite "
                        "name (e.g. strong), a JSON suite file or an inline JSON list")
    p.add_argument("--sample", type=int, default=None,
                   help="attack a random SAMPLE of the standing points (drawn with --seed)")
    p.add_argument("--seed", type=int, default=0,
                   help="the attacks' seed (and the sample's); pick one the evaluation did "
                        "not use for new random draws")
    p.add_argument("--batch-size", type=int, default=500)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")
    p.add_argument("--out", type=Path, default=None, help="JSON file for this piece")
    p.add_argument("--combine", nargs="+", default=None,
                   help="add up pieces written by --out instead of attacking")
    args = p.parse_args(argv)
    if args.sample is not None and args.sample < 1:
        p.error("--sample must be >= 1")
    if args.suite is not None:
        args.suite = parse_suite(args.suite)
    ev = read_eval(args.eval)
    if args.combine:
        return combine(args, ev)
    if args.model is None:
        p.error("--model is required unless --combine is given")
    try:
        return recheck(args, ev)
    except RobustOptError as err:  # a missing or foreign model file, missing data: one line
        raise SystemExit(str(err)) from None


if __name__ == "__main__":
    sys.exit(main())
