"""Tabulate the headline runs under results/runs: training time, clean and robust accuracy.

Reads each run's metrics.jsonl (training wall time) and eval.json (the attack chain) and
prints one row per run plus, per preset, the mean and the spread (min-max) over seeds.

    python experiments/headline_table.py [--evals DIR | --screen] [RUN ...]
                                                    # default: results/runs/*-seed*

``--evals DIR`` reads each run's evaluation from ``DIR/<run name>.eval.json`` instead of the
run's own eval.json (e.g. the 10,000-point evaluations of experiments/mnist_headline_device.sh).
``--screen`` reads each run's screen.json (``EVAL=screen bash experiments/mnist_headline.sh``:
APGD-CE alone on all 10,000 test images, so "robust" there is an upper bound).
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

_NOT_RECIPE = ("seed", "robustopt_version", "data_dir", "device")


def row(run: Path, evals: Path | None = None, name: str = "eval.json") -> dict | None:
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()
               if line.strip()]
    config = json.loads((run / "config.json").read_text())
    evaluation = evals / f"{run.name}.eval.json" if evals else run / name
    if not metrics or not evaluation.is_file():
        return None
    ev = json.loads(evaluation.read_text())
    return {
        "run": run.name,
        "preset": run.name.rsplit("-seed", 1)[0],
        # runs group by what they trained, so a trial that is a preset's seed joins it
        "recipe": json.dumps({k: v for k, v in config.items() if k not in _NOT_RECIPE},
                             sort_keys=True),
        "seed": config.get("seed"),
        "epochs": len(metrics),
        "train_s": metrics[-1]["wall_time_s"],
        "run_s": metrics[-1].get("run_time_s", float("nan")),
        "n": ev["n"],
        "clean": ev["clean_accuracy"],
        "robust": ev["robust_accuracy"],
        "attacks": [(a["name"], a["cumulative_accuracy"]) for a in ev["attacks"]],
        "eval_s": ev["time_s"],
    }


def _secs(value: float) -> str:
    """Seconds, or "-" for runs older than the metric (NaN)."""
    return "-" if value != value else f"{value:.0f}s"


def main(argv: list[str]) -> int:
    evals, name = None, "eval.json"
    if argv[:1] == ["--evals"] and len(argv) > 1:
        evals, argv = Path(argv[1]), argv[2:]
    elif argv[:1] == ["--screen"]:
        name, argv = "screen.json", argv[1:]
    runs = [Path(a) for a in argv] or sorted(Path("results/runs").glob("*-seed*"))
    rows = [r for r in (row(run, evals, name) for run in runs) if r is not None]
    if not rows:
        print("no evaluated runs found")
        return 1
    if name == "screen.json":
        print("screen.json: APGD-CE alone on all test points, so 'robust' is an upper bound")
    w = max(24, *(len(r["run"]) + 1 for r in rows))
    print(f"{'run':<{w}}{'epochs':>7}{'train':>9}{'whole run':>10}{'points':>8}{'clean':>9}"
          f"{'robust':>9}{'eval':>8}")
    for r in rows:
        print(f"{r['run']:<{w}}{r['epochs']:>7}{r['train_s']:>8.0f}s{_secs(r['run_s']):>10}{r['n']:>8}"
              f"{r['clean']:>9.2%}{r['robust']:>9.2%}{r['eval_s']:>7.0f}s")
        print("    after each attack: " + ", ".join(f"{name} {acc:.2%}"
                                                  for name, acc in r["attacks"]))
    print()
    for recipe in sorted({r["recipe"] for r in rows}, key=lambda k: min(
            r["preset"] for r in rows if r["recipe"] == k)):
        group = [r for r in rows if r["recipe"] == recipe]
        preset = " = ".join(sorted({r["preset"] for r in group}))
        for key, unit in (("robust", "%"), ("clean", "%"), ("train_s", "s"), ("run_s", "s")):
            vals = [r[key] * (100 if unit == "%" else 1) for r in group]
            if any(v != v for v in vals):  # run_time_s is missing from older runs
                continue
            print(f"{preset}: {key} mean {statistics.mean(vals):.2f}{unit}, "
                  f"min {min(vals):.2f}{unit}, max {max(vals):.2f}{unit} "
                  f"over {len(vals)} seed(s) (test points per run: "
                  f"{sorted({r['n'] for r in group})})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
