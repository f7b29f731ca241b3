"""Gradient masking: the ``standard`` suite breaks models built to mask gradients, and the
sanity checks name the masking.

Models (MNIST, L-inf eps 0.3, the first ``--n`` test points, default 1000):

* ``standard``: small-mnist trained by ``robustopt.train`` without an adversary (2 epochs,
  fp32, seed 0) into ``results/runs/mnist-standard`` (reused when its config matches;
  ``--retrain`` to redo). Claim: robust accuracy ~0%, reached with a small fraction of the
  full budget's model passes.
* ``saturated``: the standard model's logits times ``--scale`` (1e4). The argmax, hence the
  decision function, is the standard model's; cross-entropy gradients underflow to 0.
  Unmasked counterpart: ``standard``.
* ``quantized``: the standard model behind an input quantisation to ``--levels`` (8) grey
  levels with ``torch.round``, whose gradient is 0 everywhere. Unmasked counterpart:
  ``quantized-ste``, the same function with a straight-through (identity) backward pass
  (BPDA), i.e. honest gradients.
* ``fgsm-trained``: small-mnist trained by ``robustopt.train`` with adversary ``fgsm`` (no
  random start, step ``--fgsm-step`` = eps), eps 0.3 from the first step, ``--fgsm-epochs``
  epochs, ``overfit_guard`` off, into ``results/runs/mnist-fgsm``; its *last* weights (the
  run's ``best.safetensors`` is picked by held-out PGD accuracy and may predate the
  overfitting). No model with the same function and honest gradients exists, so the
  reference is the undefended ``standard`` model, plus the ``strong`` suite run on the
  points the standard suite left standing.

For every model: clean accuracy, accuracy under one FGSM step (what "looks robust"),
the standard suite's table (per-attack share, passes spent vs the full budget), its failed
sanity verdicts with their likely causes, and the ``strong`` suite on the standard suite's
survivors (an extra break there means the standard suite stopped short).

    python benchmarks/eval_masking.py                 # ~1.5 min + ~1 min training, 2 quiet cores
    python benchmarks/eval_masking.py --n 500         # fewer points

Prints its tables to stdout (progress to stderr), writes the raw numbers to
``results/eval_masking.json`` and the printed output to ``results/eval_masking.txt``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

import torch
from attack_throughput import header, log
from torch import nn

import robustopt
from robustopt.evaluate import EvalResult, evaluate
from robustopt.threat import LinfBall
from robustopt.train import TrainConfig

REPO = Path(__file__).resolve().parents[1]
RUN_FILES = ("model.json", "model.safetensors", "best.safetensors", "config.json",
             "metrics.jsonl")
STANDARD_RUN = Path("results/runs/mnist-standard")
FGSM_RUN = Path("results/runs/mnist-fgsm")


# --------------------------------------------------------------------------- shared helpers
# (eval_crosscheck.py and eval_speed.py import these)


def default_data_dir() -> str | None:
    """``$ROBUSTOPT_DATA``, else the offline copy ``<repo>/../shared/data`` if present."""
    env = os.environ.get("ROBUSTOPT_DATA", "").strip()
    if env:
        return env
    shared = REPO.parent / "shared" / "data"
    return str(shared) if shared.is_dir() else None


def mnist_test(n: int, data_dir: str | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``n`` MNIST test images (float32 in [0, 1]) and labels."""
    return robustopt.load_dataset("mnist", "test", data_dir).tensors(n=n)


class Report:
    """Print to stdout and keep every line for the .txt copy."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def __call__(self, text: str = "") -> None:
        print(text, flush=True)
        self.lines.extend(text.split("\n"))

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("\n".join(self.lines) + "\n")


def start(title: str, threads: int | None, extra: dict[str, str]) -> tuple[Report, dict]:
    """Set threads, print the header (date, versions, threads, CPU); return it as data."""
    if threads is not None:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    meta = header()
    # as the robustopt command does; the same process runs every method compared
    meta["malloc"] = ("tuned (robustopt.keep_freed_memory)" if robustopt.keep_freed_memory()
                      else "glibc defaults")
    report = Report()
    report(title)
    for key in ("date", "torch", "robustopt", "python", "cpu", "cpu_count", "torch_threads",
                "loadavg_start", "malloc"):
        report(f"  {key:<14}{meta[key]}")
    for key, value in extra.items():
        report(f"  {key:<14}{value}")
    report()
    return report, meta


def finish(report: Report, meta: dict, payload: dict, out: Path, t_start: float) -> None:
    meta["wall_seconds"] = time.perf_counter() - t_start
    meta["loadavg_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    report(f"\nwall time {meta['wall_seconds']:.0f} s; load average at start "
           f"{meta['loadavg_start']}, at end {meta['loadavg_end']}")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"meta": meta, **payload}, indent=1, default=str) + "\n")
    txt = out.with_suffix(".txt")
    report(f"raw numbers written to {out}, this output to {txt}")
    report.save(txt)


def progress(tag: str):
    """An ``evaluate`` progress callback that logs to stderr with the elapsed time."""
    t0 = time.perf_counter()

    def callback(kind: str, info: dict) -> None:
        log(f"[{tag} {time.perf_counter() - t0:6.1f}s] {kind}: {info.get('message', info)}")

    return callback


def pct(v: float | None) -> str:
    return "-" if v is None else f"{v:.1%}"


def failed_lines(ev: EvalResult) -> list[str]:
    return [f"    FAIL {v.name}: {v.detail}\n         likely cause: {v.likely_cause}"
            for v in ev.failed_checks()]


def standard_config(data_dir: str | None, epochs: int, seed: int) -> TrainConfig:
    """small-mnist, no adversary, Adam 1e-3 one-cycle, batch 100, fp32, CPU."""
    return TrainConfig(dataset="mnist", data_dir=data_dir, model="small-mnist", eps=0.3,
                       adversary="none", epochs=epochs, batch_size=100, optimizer="adam",
                       lr=1e-3, schedule="onecycle", precision="fp32", seed=seed,
                       device="cpu")


def _same_config(run: Path, cfg: TrainConfig) -> bool:
    try:
        stored = json.loads((run / "config.json").read_text())
    except (OSError, ValueError):
        return False
    want = cfg.to_dict()
    for d in (stored, want):
        d.pop("robustopt_version", None)
        d.pop("data_dir", None)
    return stored == want


def ensure_run(run: Path, cfg: TrainConfig, retrain: bool = False) -> dict:
    """Train ``cfg`` into ``run`` unless a run with the same config is already there; keep
    only the files in RUN_FILES (the checkpoint/ folder is deleted)."""
    metrics_path = run / "metrics.jsonl"
    if (not retrain and _same_config(run, cfg) and (run / "model.safetensors").is_file()
            and metrics_path.is_file()):
        metrics = [json.loads(line) for line in metrics_path.read_text().splitlines() if line]
        log(f"reusing {run} (same config); --retrain to train again")
        return {"run": str(run), "trained_now": False, "metrics": metrics,
                "train_wall_s": None, "stopped": None}

    def prog(kind: str, info: dict) -> None:
        if kind == "epoch":
            log(f"[train {run.name}] epoch {info['epoch']}: train loss "
                f"{info['train_loss']:.3f}, held-out clean {info.get('heldout_clean_acc', 0):.3f}"
                f", PGD-20 {info.get('heldout_pgd_acc', 0):.3f}, {info['epoch_time_s']:.0f} s")
        elif kind == "warning":
            log(f"[train {run.name}] warning: {info.get('message')}")

    log(f"training {run} ({cfg.adversary}, {cfg.epochs} epochs)")
    t0 = time.perf_counter()
    res = robustopt.train(cfg, run, force=True, progress=prog)
    wall = time.perf_counter() - t0
    for item in run.iterdir():
        if item.name not in RUN_FILES:
            shutil.rmtree(item) if item.is_dir() else item.unlink()
    return {"run": str(run), "trained_now": True, "metrics": res.metrics, "train_wall_s": wall,
            "stopped": res.stopped}


# --------------------------------------------------------------------------- masked models


class ScaledLogits(nn.Module):
    """``inner``'s logits times ``scale``: same argmax, saturated softmax."""

    def __init__(self, inner: nn.Module, scale: float) -> None:
        super().__init__()
        self.inner, self.scale = inner, float(scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x) * self.scale


class Quantized(nn.Module):
    """``inner`` behind ``round(x * (levels - 1)) / (levels - 1)``.

    ``torch.round`` has a zero derivative, so no input gradient reaches the attacker;
    ``straight_through`` gives the same forward with an identity backward (BPDA)."""

    def __init__(self, inner: nn.Module, levels: int, straight_through: bool = False) -> None:
        super().__init__()
        self.inner, self.levels, self.ste = inner, int(levels), straight_through

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = self.levels - 1
        q = torch.round(x * k) / k
        if self.ste:
            q = x + (q - x).detach()
        return self.inner(q)


# which failed checks count as "naming" each kind of masking
EXPECTED = {
    "saturated": ("softmax saturation", ("gradients", "ce-vs-margin")),
    "quantized": ("zero / non-differentiable gradients",
                  ("gradients", "black-box-vs-white-box", "huge-eps")),
    "fgsm-trained": ("gradient masking from FGSM training",
                     ("single-step-gap", "black-box-vs-white-box", "fgsm-vs-iterative",
                      "more-steps", "restart-spread", "huge-eps")),
}


def measure(name: str, model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float,
            args: argparse.Namespace, strong: bool = True) -> dict:
    threat = LinfBall(eps)
    model.eval()
    with torch.no_grad():
        clean = float((model(x).argmax(1) == y).float().mean())
    fg = robustopt.fgsm(model, x, y, threat, random_start=False)
    ev = evaluate(model, x, y, threat, "standard", seed=args.seed, batch_size=args.batch_size,
                  progress=progress(name))
    out = {"name": name, "clean_accuracy": clean, "fgsm_accuracy": fg.accuracy,
           "eval": ev.to_json(per_example=False), "_ev": ev}
    first = ev.attacks[0]
    out["apgd_ce_accuracy"] = first.cumulative_accuracy
    survivors = ev.robust.nonzero().squeeze(1)
    out["strong_on_survivors"] = None
    if strong and survivors.numel():
        t0 = time.perf_counter()
        st = evaluate(model, x[survivors], y[survivors], threat, "strong", seed=args.seed,
                      batch_size=args.batch_size, sanity=False, progress=progress(name + "/strong"))
        out["strong_on_survivors"] = {"attacked": int(survivors.numel()),
                                      "still_robust": int(st.robust.sum()),
                                      "broke": int(survivors.numel() - st.robust.sum()),
                                      "passes": st.passes_spent,
                                      "time_s": time.perf_counter() - t0}
    return out


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=1000,
                   help="first N MNIST test points (default 1000)")
    p.add_argument("--eps", type=float, default=0.3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=500, help="evaluate()'s batch size")
    p.add_argument("--scale", type=float, default=1e4, help="logit scale of 'saturated'")
    p.add_argument("--levels", type=int, default=8, help="grey levels of 'quantized'")
    p.add_argument("--std-epochs", type=int, default=2, help="epochs of the standard model")
    p.add_argument("--fgsm-epochs", type=int, default=3, help="epochs of the FGSM model")
    p.add_argument("--fgsm-step", type=float, default=None,
                   help="FGSM training step (default: eps)")
    p.add_argument("--fgsm-lr", type=float, default=1e-3, help="FGSM training learning rate")
    p.add_argument("--standard-run", type=Path, default=STANDARD_RUN)
    p.add_argument("--fgsm-run", type=Path, default=FGSM_RUN)
    p.add_argument("--retrain", action="store_true", help="train both models again")
    p.add_argument("--no-strong", action="store_true",
                   help="skip the strong suite on the standard suite's survivors")
    p.add_argument("--data-dir", default=None,
                   help="MNIST directory (default $ROBUSTOPT_DATA, else ../shared/data)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", type=Path, default=Path("results/eval_masking.json"))
    args = p.parse_args(argv)
    if args.n < 1 or args.levels < 2 or args.scale <= 0:
        p.error("need --n >= 1, --levels >= 2, --scale > 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    t_start = time.perf_counter()
    data_dir = args.data_dir or default_data_dir()
    report, meta = start(
        "Gradient masking: robustopt's standard suite vs models that mask gradients",
        args.threads,
        {"data": f"MNIST test points 0..{args.n - 1} (the first {args.n}), L-inf eps "
                 f"{args.eps:g}, seed {args.seed}, evaluate() batch {args.batch_size}"})

    # -- the two trained models
    std_cfg = standard_config(data_dir, args.std_epochs, args.seed)
    fgsm_cfg = TrainConfig.from_dict({**std_cfg.to_dict(), "adversary": "fgsm",
                                      "epochs": args.fgsm_epochs, "eps": args.eps,
                                      "attack_step_size": args.fgsm_step,
                                      "lr": args.fgsm_lr, "eps_ramp_epochs": 0.0,
                                      "overfit_guard": False})
    training = {"standard": ensure_run(args.standard_run, std_cfg, args.retrain),
                "fgsm-trained": ensure_run(args.fgsm_run, fgsm_cfg, args.retrain)}
    report("Training (robustopt.train, small-mnist, Adam 1e-3 one-cycle, batch 100, fp32, "
           "seed 0; weights loaded: 'last')")
    for key, tr in training.items():
        m = tr["metrics"][-1] if tr["metrics"] else {}
        epochs_s = sum(r.get("epoch_time_s", 0.0) for r in tr["metrics"])
        how = (f"trained now in {tr['train_wall_s']:.0f} s (stopped: {tr['stopped']})"
               if tr["trained_now"] else f"reused (same config; its epochs took {epochs_s:.0f} s "
               "when trained)")
        report(f"  {key:<13}{tr['run']}: {len(tr['metrics'])} epochs, {how}; last epoch: "
               f"held-out clean {pct(m.get('heldout_clean_acc'))}, held-out PGD-20 "
               f"{pct(m.get('heldout_pgd_acc'))}")
        for rec in tr["metrics"]:
            log(f"  {key} epoch {rec['epoch']}: {rec}")
    report()

    x, y = mnist_test(args.n, data_dir)
    standard = robustopt.load_model(args.standard_run, which="last")
    fgsm_model = robustopt.load_model(args.fgsm_run, which="last")
    models = {
        "standard": (standard, None),
        "saturated": (ScaledLogits(standard, args.scale), "standard"),
        "quantized": (Quantized(standard, args.levels), "quantized-ste"),
        "quantized-ste": (Quantized(standard, args.levels, straight_through=True), None),
        "fgsm-trained": (fgsm_model, "standard"),
    }
    descr = {
        "standard": "undefended small-mnist",
        "saturated": f"standard logits x {args.scale:g}",
        "quantized": f"round to {args.levels} grey levels (zero gradient) -> standard",
        "quantized-ste": "same forward, straight-through gradient (BPDA)",
        "fgsm-trained": f"FGSM-trained (step {fgsm_cfg.step_size():g}, "
                        f"{args.fgsm_epochs} epochs, no overfit guard)",
    }
    results: dict[str, dict] = {}
    for name, (model, _) in models.items():
        log(f"== {name}")
        results[name] = measure(name, model, x, y, args.eps, args,
                                strong=not args.no_strong and name != "quantized-ste")

    # -- per-model detail
    for name, res in results.items():
        ev: EvalResult = res["_ev"]
        report(f"=== {name}: {descr[name]}")
        report(f"clean {pct(res['clean_accuracy'])}, one FGSM step (eps {args.eps:g}, no random "
               f"start) {pct(res['fgsm_accuracy'])}")
        report(ev.table())
        so = res["strong_on_survivors"]
        if so:
            report(f"strong suite on the {so['attacked']} standard-suite survivors: broke "
                   f"{so['broke']}, {so['still_robust']} still robust ({so['passes']:,} passes, "
                   f"{so['time_s']:.0f} s)")
        report()

    # -- summary
    report(f"=== Summary (accuracies on the first {args.n} test points, L-inf eps {args.eps:g})")
    cols = ("model", "clean", "FGSM", "APGD-CE", "standard", "+strong", "counterpart",
            "passes spent/full", "time")
    rows = []
    for name, res in results.items():
        ev = res["_ev"]
        cp = models[name][1]
        so = res["strong_on_survivors"]
        strong = "-" if so is None else (f"{(ev.robust.sum() - so['broke']).item() / ev.n:.1%}")
        rows.append((name, pct(res["clean_accuracy"]), pct(res["fgsm_accuracy"]),
                     pct(res["apgd_ce_accuracy"]), pct(ev.robust_accuracy), strong,
                     "-" if cp is None else f"{cp} {pct(results[cp]['_ev'].robust_accuracy)}",
                     f"{ev.passes_spent:,}/{ev.passes_full:,} "
                     f"({ev.passes_spent / ev.passes_full:.1%})", f"{ev.time_s:.0f}s"))
    widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(cols)]
    line = "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(
        cols, widths, strict=True)))
    report(line)
    report("-" * len(line))
    for r in rows:
        report("  ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(
            r, widths, strict=True))))
    report("FGSM: one FGSM step alone; APGD-CE: accuracy after the suite's first attack (run on "
           "every clean-correct point); standard: the suite's worst case; +strong: after also "
           "running the strong suite on the standard suite's survivors; counterpart: the "
           "unmasked model's standard-suite accuracy; passes exclude the sanity probes.")
    report()

    # -- claims
    claims = []
    std_ev = results["standard"]["_ev"]
    frac = std_ev.passes_spent / std_ev.passes_full
    claims.append(("standard model: robust accuracy ~0% with a small fraction of the full "
                   "budget's passes",
                   std_ev.robust_accuracy <= 0.01,
                   f"robust {pct(std_ev.robust_accuracy)}; passes {std_ev.passes_spent:,} of "
                   f"{std_ev.passes_full:,} = {frac:.2%} ({1 / frac:.0f}x fewer); sanity "
                   f"probes {std_ev.sanity_passes:,} more"))
    tol = max(1, round(0.005 * args.n))
    for name in ("saturated", "quantized", "fgsm-trained"):
        ev, cp = results[name]["_ev"], models[name][1]
        cp_ev = results[cp]["_ev"]
        diff = int(ev.robust.sum()) - int(cp_ev.robust.sum())
        claims.append((f"{name}: broken to its counterpart's ({cp}) accuracy "
                       f"(within {tol} point(s))", diff <= tol,
                       f"{pct(ev.robust_accuracy)} vs {pct(cp_ev.robust_accuracy)} "
                       f"({diff:+d} points); FGSM alone {pct(results[name]['fgsm_accuracy'])}, "
                       f"APGD-CE alone {pct(results[name]['apgd_ce_accuracy'])}"))
        what, names = EXPECTED[name]
        failed = [v.name for v in ev.failed_checks()]
        hit = [f for f in failed if f in names]
        claims.append((f"{name}: the sanity checks name the masking ({what})", bool(hit),
                       "failed: " + (", ".join(failed) or "none")))
    fg = results["fgsm-trained"]
    claims.append(("fgsm-trained: looks robust to FGSM (FGSM accuracy >= 50% and >= 20 points "
                   "above the standard suite's)",
                   fg["fgsm_accuracy"] >= 0.5
                   and fg["fgsm_accuracy"] - fg["_ev"].robust_accuracy >= 0.2,
                   f"FGSM {pct(fg['fgsm_accuracy'])} vs standard suite "
                   f"{pct(fg['_ev'].robust_accuracy)}"))
    report("=== Claims")
    for text, ok, detail in claims:
        report(f"[{'met' if ok else 'NOT MET'}] {text}: {detail}")
    report()
    report("=== Failed sanity checks per model (and their likely cause)")
    for name, res in results.items():
        lines = failed_lines(res["_ev"])
        report(f"  {name}: " + ("none" if not lines else ""))
        for ln in lines:
            report(ln)

    payload = {
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "points": {"dataset": "mnist", "split": "test", "first": args.n},
        "training": training,
        "models": {k: {kk: vv for kk, vv in v.items() if kk != "_ev"}
                   for k, v in results.items()},
        "counterparts": {k: v[1] for k, v in models.items()},
        "descriptions": descr,
        "claims": [{"claim": c, "met": ok, "detail": d} for c, ok, d in claims],
    }
    finish(report, meta, payload, args.out, t_start)
    return 0


if __name__ == "__main__":
    sys.exit(main())
