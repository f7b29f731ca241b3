"""``robustopt demo``: the end-to-end story in a few minutes on a CPU.

Train a standard MNIST model and a robust one (the ``mnist-quick`` recipe), evaluate
both with the same attack suite as ``robustopt evaluate`` (it writes each run's
``eval.json``), and print them side by side: the attacks break the standard model and
mostly fail on the robust one.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from ..evaluate import SUITE_NAMES
from ..train import preset, train
from ..train.loop import pick_device
from . import evaluate_cmd
from .common import add_data_flags, add_device_flag, positive_int
from .progress import Progress


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="train a standard and a robust MNIST model, evaluate both")
    p.add_argument("--out", default="runs", help="parent directory of the demo runs")
    p.add_argument("--n", type=positive_int, default=500,
                   help="test points to evaluate (default 500)")
    p.add_argument("--suite", default="standard", choices=SUITE_NAMES,
                   help="attack suite (default: standard = APGD-CE, APGD-T, Square)")
    add_data_flags(p)
    add_device_flag(p)
    p.set_defaults(run=run)


def _evaluate(run_dir: Path, args: argparse.Namespace) -> dict:
    """Evaluate through the ``evaluate`` command itself, so the demo shows what it does."""
    from . import build_parser
    argv = ["evaluate", str(run_dir), "--n", str(args.n), "--suite", args.suite,
            "--device", args.device] + (["--data-dir", args.data_dir] if args.data_dir else [])
    evaluate_cmd.run(build_parser().parse_args(argv))
    return json.loads((run_dir / "eval.json").read_text())


def run(args: argparse.Namespace) -> int:
    device = pick_device(args.device)
    progress = Progress()
    recipes = {
        "standard": preset("mnist-quick", adversary="none", epochs=1),
        "robust (mnist-quick)": preset("mnist-quick"),
    }
    reports, times = {}, {}
    for name, cfg in recipes.items():
        cfg.data_dir, cfg.device = args.data_dir, str(device)
        run_dir = Path(args.out) / ("demo-standard" if name == "standard" else "demo-robust")
        print(f"\n== training the {name} model into {run_dir}", flush=True)
        start = time.perf_counter()
        train(cfg, run_dir, force=True, progress=progress)
        times[name] = time.perf_counter() - start
        print(f"== evaluating it: suite {args.suite}, first {args.n} MNIST test images, "
              "L-inf eps 0.3", flush=True)
        reports[name] = _evaluate(run_dir, args)
    _summary(reports, times)
    return 0


def _summary(reports: dict[str, dict], times: dict[str, float]) -> None:
    names = list(reports)
    first = reports[names[0]]
    rows = [("clean accuracy", {n: r["clean_accuracy"] for n, r in reports.items()})]
    for i, attack in enumerate(first["attacks"]):
        rows.append((f"after {attack['name']}",
                     {n: r["attacks"][i]["cumulative_accuracy"] for n, r in reports.items()}))
    rows.append(("robust (worst case)", {n: r["robust_accuracy"] for n, r in reports.items()}))
    print("\n" + f"{'':<30}" + "".join(f"{n:>24}" for n in names))
    for label, values in rows:
        print(f"{label:<30}" + "".join(f"{values[n]:>24.2%}" for n in names))
    print(f"{'training time':<30}" + "".join(f"{times[n]:>23.0f}s" for n in names))
    print(f"{'model passes spent / full':<30}" + "".join(
        f"{r['passes']['spent'] / max(r['passes']['full_budget'], 1):>24.1%}"
        for r in reports.values()))
    for n, r in reports.items():
        failed = [v["name"] for v in r["sanity"] if v.get("passed") is False]
        print(f"sanity checks, {n}: " + ("all passed or not applicable" if not failed
                                         else "FAILED " + ", ".join(failed)))
    print("\nThe standard model falls to the attacks; the PGD-trained one keeps most of its "
          "accuracy.\nRe-attack either model: robustopt evaluate runs/demo-robust --suite strong")
