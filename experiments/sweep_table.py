"""Table of a recipe sweep (experiments/recipe_sweep_device.sh): one row per trial.

Per trial: its flags (from the sweep script's table, which reproduces each config.json),
epochs, the training wall time *on the device that ran the sweep* (not the CPU budget),
the last epoch's held-out clean and PGD accuracy and, where the trial's eval.json
exists, clean accuracy, the first attack's cumulative accuracy (PGD-20 x5 for CIFAR-10)
and the worst case over the whole chain on the evaluated test points.

    python experiments/sweep_table.py results/sweep_device [more dirs ...]
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

SCRIPT = Path(__file__).with_name("recipe_sweep_device.sh")


def trial_flags() -> dict[str, str]:
    """Each trial's flags, as the sweep script's table gives them (the record of what ran)."""
    table = re.findall(r'^\s*\[([\w.-]+)\]="(.*)"\s*$', SCRIPT.read_text(), re.MULTILINE)
    return {name: flags.replace('\\"', '"') for name, flags in table}


def row(path: Path, flags: dict[str, str]) -> dict:
    metrics = [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines()
               if line.strip()]
    out = {"name": path.name, "flags": flags.get(path.name, "?"),
           "epochs": metrics[-1]["epoch"], "train_s": metrics[-1]["wall_time_s"],
           "heldout_clean": metrics[-1]["heldout_clean_acc"],
           "heldout_pgd": metrics[-1]["heldout_pgd_acc"], "eval": None}
    ev = path / "eval.json"
    if ev.is_file():
        doc = json.loads(ev.read_text())
        out["eval"] = {"n": doc["n"], "clean": doc["clean_accuracy"],
                       "first": doc["attacks"][0]["name"],
                       "first_acc": doc["attacks"][0]["cumulative_accuracy"],
                       "worst": doc["robust_accuracy"],
                       "chain": [a["name"] for a in doc["attacks"]]}
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("dirs", type=Path, nargs="+")
    args = p.parse_args()
    flags = trial_flags()
    rows = [row(d, flags) for top in args.dirs for d in sorted(top.iterdir())
            if (d / "metrics.jsonl").is_file()]
    print(f"{'trial':<20}{'ep':>4}{'dev s':>7}{'held clean':>11}{'held PGD':>9}"
          f"{'n':>6}{'clean':>8}{'first':>8}{'worst':>8}  flags")
    for r in rows:
        ev = r["eval"]
        tail = (f"{ev['n']:>6}{ev['clean']:>8.1%}{ev['first_acc']:>8.1%}{ev['worst']:>8.1%}"
                if ev else f"{'-':>6}{'-':>8}{'-':>8}{'-':>8}")
        print(f"{r['name']:<20}{r['epochs']:>4}{r['train_s']:>7.0f}{r['heldout_clean']:>11.1%}"
              f"{r['heldout_pgd']:>9.1%}{tail}  {r['flags']}")
    chains = {tuple(r["eval"]["chain"]) for r in rows if r["eval"]}
    for chain in sorted(chains):
        print("chain: " + " -> ".join(chain))
    print("first: the chain's first attack alone; worst: per-example worst case over the "
          "chain; dev s: training wall time on the sweep's device, trials sharing it")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
