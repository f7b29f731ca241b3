"""Cross-check: robustopt's ``standard`` suite vs torchattacks' APGD-CE, APGD-T and Square on a
robust MNIST model.

On the first ``--n`` MNIST test points (default 1000) and the model's eps (L-inf; from the run's
model.json, else 0.3):

* robustopt, each attack of the standard suite run **alone on every point** (a one-attack
  suite through ``evaluate``: APGD-CE 100 steps; APGD-T, targeted DLR, 100 steps, 9 targets;
  Square, 5000 queries, p_init 0.8, no schedule rescaling), no sanity checks;
* torchattacks' ``APGD`` (CE), ``APGDT`` (DLR, ``n_classes=10`` -> 9 targets) and ``Square``
  (5000 queries, p_init 0.8, margin loss, ``resc_schedule=False``), each alone on every
  point with the same budgets (torchattacks' own defaults, 10 steps, are not AutoAttack's);
  their returned points are judged here: inside the eps ball and the box, and misclassified
  by the model in eval mode;
* robustopt's chained ``standard`` suite (``evaluate(..., "standard")``, the default:
  survivor-only chaining, sanity checks on).

The claim: the chained suite's worst case (robust accuracy) is no higher than torchattacks'
worst case (a point counts as robust only if all three of its attacks fail on it).
Randomised attacks differ point by point between two runs; the per-point disagreements
are listed so that a difference can be read as noise or not.

    python benchmarks/eval_crosscheck.py --model runs/mnist-quick       # ~6 min, 2 quiet cores
    python benchmarks/eval_crosscheck.py --model runs/mnist-quick --n 200

Prints its tables to stdout (progress to stderr), writes the raw numbers to
``results/eval_crosscheck.json`` and the printed output to ``results/eval_crosscheck.txt``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from _torchattacks import TA_NAMES, build_attacks, import_torchattacks, run_attack, verify
from eval_masking import default_data_dir, finish, log, mnist_test, pct, progress, start

import robustopt
from robustopt.evaluate import evaluate, get_suite
from robustopt.threat import LinfBall

LABELS = {"apgd-ce": "APGD-CE (100 steps)", "apgd-t": "APGD-T (DLR, 100 steps, 9 targets)",
          "square": "Square (5000 queries)"}


def model_eps(model: Path, eps: float | None = None) -> tuple[float, dict]:
    """The radius to attack at: ``eps`` if given, else the L-inf eps in a run directory's
    model.json, else 0.3; and the model.json contents ({} for a bare model file)."""
    try:
        info = json.loads((model / "model.json").read_text()) if model.is_dir() else {}
    except (OSError, ValueError):
        info = {}
    threat = info.get("threat") or {}
    recorded = threat.get("eps") if threat.get("norm", "linf") == "linf" else None
    if eps is None:
        eps = recorded if recorded is not None else 0.3
    return eps, info


def ours_alone(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float,
               seed: int, batch_size: int) -> dict:
    """Each attack of the standard suite alone on every point (one-attack suites)."""
    out = {}
    for spec, key in zip(get_suite("standard"), TA_NAMES, strict=True):
        ev = evaluate(model, x, y, LinfBall(eps), [spec], seed=seed, batch_size=batch_size,
                      sanity=False, progress=progress(f"ours {key}"))
        a = ev.attacks[0]
        out[key] = {"spec": spec.to_dict(), "robust": ev.robust, "clean": ev.clean_correct,
                    "accuracy": ev.robust_accuracy, "time_s": ev.time_s,
                    "passes": ev.passes_spent, "full_passes": ev.passes_full,
                    "attacked": a.attacked, "broke": a.broke}
    return out


def theirs_alone(ta, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float,
                 seed: int, batch_size: int, classes: int) -> dict:
    atks = build_attacks(ta, model, eps, seed=seed, classes=classes)
    with torch.no_grad():
        clean = model(x).argmax(1) == y
    out = {}
    for key in TA_NAMES:
        t0 = time.perf_counter()
        run = run_attack(atks[key], model, x, y, batch_size)
        check = verify(model, x, y, run["x_adv"], eps)
        robust = (clean & ~check["broken"]).cpu()  # evaluate()'s masks live on the CPU
        out[key] = {"robust": robust, "clean": clean.cpu(),
                    "accuracy": float(robust.float().mean()),
                    "time_s": run["time_s"], "passes": run["passes"],
                    "outside_ball": int(check["outside"].sum()),
                    "max_linf": check["max_dist"], "wall_incl_check_s": time.perf_counter() - t0,
                    "repr": repr(atks[key])}
        log(f"[theirs {key}] accuracy {out[key]['accuracy']:.1%}, {run['time_s']:.1f} s, "
            f"{run['passes']:,} passes")
    return out


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, required=True,
                   help="run directory (or .safetensors file) of the robust MNIST model")
    p.add_argument("--which", choices=("best", "last"), default=None,
                   help="weights of a run directory (default: its model.json's default)")
    p.add_argument("--n", type=int, default=1000, help="first N MNIST test points (1000)")
    p.add_argument("--eps", type=float, default=None,
                   help="L-inf radius (default: the run's model.json, else 0.3)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=500,
                   help="points per evaluate() batch and per torchattacks call (500)")
    p.add_argument("--data-dir", default=None,
                   help="MNIST directory (default $ROBUSTOPT_DATA, else ../shared/data)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")
    p.add_argument("--out", type=Path, default=Path("results/eval_crosscheck.json"))
    args = p.parse_args(argv)
    if args.n < 1 or args.batch_size < 1:
        p.error("--n and --batch-size must be >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    t_start = time.perf_counter()
    ta, ta_note = import_torchattacks()
    eps, info = model_eps(args.model, args.eps)
    data_dir = args.data_dir or default_data_dir()
    report, meta = start(
        "Cross-check: robustopt standard suite vs torchattacks APGD-CE / APGD-T / Square",
        args.threads,
        {"torchattacks": ta_note,
         "model": f"{args.model} (weights: {args.which or info.get('default_weights', 'last')})",
         "data": f"MNIST test points 0..{args.n - 1} (the first {args.n}), L-inf eps {eps:g}, "
                 f"seed {args.seed}, batch {args.batch_size}, device {args.device}"})
    if ta is None:
        report("torchattacks is required for this script.")
        return 1
    device = torch.device(args.device)
    model = robustopt.load_model(args.model, which=args.which, device=device)
    x, y = (t.to(device) for t in mnist_test(args.n, data_dir))
    with torch.no_grad():
        classes = model(x[:1]).shape[1]
    threat = LinfBall(eps)

    chained = evaluate(model, x, y, threat, "standard", seed=args.seed,
                       batch_size=args.batch_size, progress=progress("ours chained"))
    ours = ours_alone(model, x, y, eps, args.seed, args.batch_size)
    theirs = theirs_alone(ta, model, x, y, eps, args.seed, args.batch_size, classes)

    clean = chained.clean_correct
    n = args.n
    union_ours = clean.clone()
    union_theirs = clean.clone()
    for key in TA_NAMES:
        union_ours &= ours[key]["robust"]
        union_theirs &= theirs[key]["robust"]

    report(f"clean accuracy {pct(chained.clean_accuracy)} ({int(clean.sum())}/{n})")
    report()
    report("Each attack alone on all points (robust accuracy; wall time; model passes):")
    hdr = f"{'attack':<36}{'robustopt':>11}{'torchattacks':>14}{'ro time':>10}{'ta time':>10}" \
          f"{'ro passes':>13}{'ta passes':>13}{'only ro broke':>15}{'only ta broke':>15}"
    report(hdr)
    report("-" * len(hdr))
    rows = {}
    for key in TA_NAMES:
        o, t = ours[key], theirs[key]
        only_ro = int((~o["robust"] & t["robust"]).sum())
        only_ta = int((o["robust"] & ~t["robust"]).sum())
        rows[key] = {"only_robustopt_broke": only_ro, "only_torchattacks_broke": only_ta}
        report(f"{LABELS[key]:<36}{pct(o['accuracy']):>11}{pct(t['accuracy']):>14}"
               f"{o['time_s']:>9.1f}s{t['time_s']:>9.1f}s{o['passes']:>13,}{t['passes']:>13,}"
               f"{only_ro:>15}{only_ta:>15}")
    only_ro = int((~union_ours & union_theirs).sum())
    only_ta = int((union_ours & ~union_theirs).sum())
    acc_uo, acc_ut = float(union_ours.float().mean()), float(union_theirs.float().mean())
    report(f"{'worst case of the three (per point)':<36}{pct(acc_uo):>11}{pct(acc_ut):>14}"
           f"{sum(ours[k]['time_s'] for k in TA_NAMES):>9.1f}s"
           f"{sum(theirs[k]['time_s'] for k in TA_NAMES):>9.1f}s"
           f"{sum(ours[k]['passes'] for k in TA_NAMES):>13,}"
           f"{sum(theirs[k]['passes'] for k in TA_NAMES):>13,}{only_ro:>15}{only_ta:>15}")
    report()
    chain_vs_ta_only_ta = int((chained.robust & ~union_theirs).sum())
    chain_vs_ta_only_ro = int((~chained.robust & clean & union_theirs).sum())
    report(f"robustopt chained standard suite: robust accuracy {pct(chained.robust_accuracy)} "
           f"({int(chained.robust.sum())}/{n}), {chained.time_s:.1f} s, passes "
           f"{chained.passes_spent:,} of a {chained.passes_full:,} full budget "
           f"(+{chained.sanity_passes:,} sanity probes)")
    report(f"  points torchattacks' worst case broke that the chained suite left standing: "
           f"{chain_vs_ta_only_ta}; the reverse: {chain_vs_ta_only_ro}")
    report()
    report(chained.table())
    report()
    for key in TA_NAMES:
        t = theirs[key]
        if t["outside_ball"]:
            report(f"note: torchattacks {key} returned {t['outside_ball']} point(s) outside the "
                   f"ball/box (max L-inf {t['max_linf']:.6g}); they were not counted as broken")
    ok = chained.robust_accuracy <= acc_ut
    report(f"[{'met' if ok else 'NOT MET'}] chained standard suite worst case "
           f"{pct(chained.robust_accuracy)} <= torchattacks' worst case {pct(acc_ut)} "
           f"({int(chained.robust.sum())} vs {int(union_theirs.sum())} robust points)")
    for key in TA_NAMES:
        o, t = ours[key], theirs[key]
        d = int(o["robust"].sum()) - int(t["robust"].sum())
        report(f"  {key}: robustopt {pct(o['accuracy'])} vs torchattacks {pct(t['accuracy'])} "
               f"({d:+d} points: {'ours stronger or equal' if d <= 0 else 'theirs stronger'})")

    def strip(d: dict) -> dict:
        return {k: v for k, v in d.items() if not isinstance(v, torch.Tensor)}

    payload = {
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "eps": eps, "torchattacks": ta_note, "classes": classes,
        "points": {"dataset": "mnist", "split": "test", "first": n},
        "clean_accuracy": chained.clean_accuracy,
        "robustopt_alone": {k: strip(v) for k, v in ours.items()},
        "torchattacks_alone": {k: strip(v) for k, v in theirs.items()},
        "disagreements": rows,
        "worst_case": {"robustopt_alone_union": acc_uo, "torchattacks_union": acc_ut,
                       "robustopt_chained": chained.robust_accuracy,
                       "only_robustopt_union_broke": only_ro,
                       "only_torchattacks_union_broke": only_ta,
                       "torchattacks_broke_chain_missed": chain_vs_ta_only_ta,
                       "chain_broke_torchattacks_missed": chain_vs_ta_only_ro},
        "claim_met": ok,
        "chained": chained.to_json(per_example=False),
        "per_point": {"clean": clean.tolist(), "chained_robust": chained.robust.tolist(),
                      **{f"robustopt_{k}_robust": ours[k]["robust"].tolist() for k in TA_NAMES},
                      **{f"torchattacks_{k}_robust": theirs[k]["robust"].tolist()
                         for k in TA_NAMES}},
    }
    finish(report, meta, payload, args.out, t_start)
    return 0


if __name__ == "__main__":
    sys.exit(main())
