"""Time versus robustness of the mnist-quick recipe trials (results/trials/*).

For each trial: its settings (what differs from the old preset), the time its optimisation
steps took (metrics' wall_time_s; a run's run_time_s adds the held-out checks and checkpoints),
held-out PGD-20 accuracy at the end of training, the standard suite's clean and
worst-case robust accuracy on the first 1,000 MNIST test images (eval.json), and, for
trials screened with ``EVAL=screen``, clean and APGD-CE accuracy on all 10,000 test
images (screen.json), for trials attacked with ``EVAL=smoothed``, the worst case over the
standard suite and smoothed APGD-CE x5 at eps 0.3 on the first 1,000 (trial-eval.json),
and, for trials re-attacked with ``EVAL=blackbox``, the worst case
over the headline chain and Square at AutoAttack-plus's budget together (eval.json and
blackbox.json per example). Missing evaluations print as "-". Prints a table
and draws robust accuracy against training time.

    python experiments/trials_table.py [--plot docs/figures/mnist_quick_trials.png]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

BASE = {"model": "small-mnist", "adversary": "pgd", "model_kwargs": {}, "epochs": 4,
        "lr": 1e-3, "attack_steps": 7, "attack_step_size": 0.1, "eps": 0.3, "trades_beta": 6.0,
        "ema_decay": 0.0, "attack_smooth": 0.0, "attack_smooth_share": 1.0, "train_eps": None}


def trial(path: Path) -> dict:
    config = json.loads((path / "config.json").read_text())
    metrics = [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines()
               if line.strip()]
    # a setting missing from an older config.json had the default it now has
    changed = {k: config[k] for k, v in BASE.items() if config.get(k, v) != v}
    out = {"name": path.name, "dataset": config.get("dataset"), "changed": changed,
           "train_s": metrics[-1]["wall_time_s"],
           "heldout_pgd": metrics[-1]["heldout_pgd_acc"], "eval": None, "screen": None,
           "smoothed": None}
    smoothed = path / "trial-eval.json"
    if smoothed.is_file():
        doc = json.loads(smoothed.read_text())
        out["smoothed"] = {"robust": doc["robust_accuracy"]}
    screen = path / "screen.json"
    if screen.is_file():
        doc = json.loads(screen.read_text())
        out["screen"] = {"n": doc["n"], "clean": doc["clean_accuracy"],
                         "apgd_ce": doc["robust_accuracy"]}
    ev = path / "eval.json"
    if ev.is_file():
        doc = json.loads(ev.read_text())
        names = [a["name"] for a in doc["attacks"]]
        out["eval"] = {"n": doc["n"], "clean": doc["clean_accuracy"],
                       "robust": doc["robust_accuracy"], "attacks": names,
                       "standard": names[:3] == ["apgd-ce", "apgd-t", "square-5000"]}
        bb = path / "blackbox.json"
        if bb.is_file():
            other = json.loads(bb.read_text())
            if other.get("test_indices") != doc.get("test_indices"):
                raise SystemExit(f"{bb} and {ev} cover different test images: "
                                 f"{other.get('test_indices')} vs {doc.get('test_indices')}")
            extra = other["per_example"]["robust"]
            both = [a and b for a, b in zip(doc["per_example"]["robust"], extra, strict=True)]
            out["eval"]["with_blackbox"] = sum(both) / len(both)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dir", type=Path, default=Path("results/trials"))
    p.add_argument("--plot", type=Path, default=Path("docs/figures/mnist_quick_trials.png"))
    p.add_argument("--headline", type=Path, nargs="*",
                   default=sorted(Path("results/runs").glob("mnist-quick-seed*")),
                   help="headline runs to draw beside the trials (default: mnist-quick seeds)")
    args = p.parse_args()
    rows = [r for r in (trial(d) for d in sorted(args.dir.iterdir())
                        if (d / "config.json").is_file()) if r["dataset"] == "mnist"]
    if not rows:
        raise SystemExit(f"no MNIST trials (a directory with config.json) under {args.dir}")
    rows.sort(key=lambda r: r["train_s"])
    width = max(10, *(len(r["name"]) + 1 for r in rows))
    print(f"{'trial':<{width}}{'steps':>8}{'held-out PGD-20':>17}{'clean':>8}{'robust':>8}"
          f"{'+Square x5':>11}{'std+smooth':>11}{'clean 10k':>11}{'APGD-CE 10k':>13}"
          "  changed from the old preset")

    def pct(doc: dict | None, key: str, digits: int) -> str:
        return f"{doc[key]:.{digits}%}" if doc else "-"

    for r in rows:
        ev, sc = r["eval"], r["screen"]
        print(f"{r['name']:<{width}}{r['train_s']:>7.0f}s{r['heldout_pgd']:>17.1%}"
              f"{pct(ev, 'clean', 1):>8}{pct(ev, 'robust', 1):>8}"
              f"{pct(ev if ev and 'with_blackbox' in ev else None, 'with_blackbox', 1):>11}"
              f"{pct(r['smoothed'], 'robust', 1):>11}{pct(sc, 'clean', 2):>11}"
              f"{pct(sc, 'apgd_ce', 2):>13}  {json.dumps(r['changed'])}")
    print("robust: worst case over " + ", ".join(rows[0]["eval"]["attacks"] if rows[0]["eval"]
                                                else ["the standard suite"])
          + " on the first 1,000 test points (per trial: see its eval.json); clean 10k /"
          " APGD-CE 10k: screen.json (APGD-CE alone: an upper bound on robust accuracy);"
          " +Square x5: robust under that chain and Square 5 x 5,000 queries (blackbox.json);"
          " std+smooth: the standard suite and smoothed APGD-CE x5 (beta 15) at eps 0.3 on"
          " the first 1,000 (trial-eval.json)")
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    done = [r for r in rows if r["eval"]]
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    ax.scatter([r["train_s"] for r in done], [100 * r["eval"]["robust"] for r in done])
    for r in done:
        ax.annotate(r["name"], (r["train_s"], 100 * r["eval"]["robust"]), fontsize=8,
                    xytext=(4, 3), textcoords="offset points")
    seeds = [trial(d) for d in args.headline if (d / "eval.json").is_file()]
    if seeds:
        ax.scatter([r["train_s"] for r in seeds], [100 * r["eval"]["robust"] for r in seeds],
                   marker="x", color="C3", label="mnist-quick preset, 3 seeds (quiet machine)")
        ax.legend(loc="lower left", fontsize=8)
    ax.axhline(89, color="grey", lw=0.8, ls="--")
    ax.axvline(180, color="grey", lw=0.8, ls=":")
    ax.set_xscale("log")  # the baseline ran beside other jobs: its time is 10x the rest
    ax.set_xlabel("training time in optimisation steps (s, 2 CPU cores; log scale)")
    ax.set_ylabel("robust accuracy (%), standard suite, 1,000 pts")
    ax.set_title("mnist-quick recipe trials, L-inf eps 0.3")
    fig.tight_layout()
    args.plot.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.plot, dpi=120)
    print(f"plot written to {args.plot}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
