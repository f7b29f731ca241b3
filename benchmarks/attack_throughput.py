"""PGD throughput: ``robustopt.pgd`` vs a hand-written PGD loop (and ``torchattacks.PGD``).

Measures PGD example-steps per second (batch * steps / wall seconds per attack call) on
the same model and batch for

* ``hand``: the textbook L-inf PGD with a random start (uniform delta in [-eps, eps],
  clamp to the box, then ``steps`` times: forward, mean cross-entropy,
  ``torch.autograd.grad`` w.r.t. the input, ``x + alpha * sign(g)``, project onto
  ball ∩ box); model in eval mode; no best-point tracking; then one no-grad forward for
  the per-example verdict (``model(x_adv).argmax(1) == y``);
* ``robustopt``: ``robustopt.pgd`` with the same eps / steps / step size, which returns the
  points *and* the verdict. Its extra work per call: input validation (a finiteness/range
  scan and a one-example forward), best-point tracking over every iterate (its one no-grad
  forward of the last iterate doubles as the verdict, reused after the points are
  re-projected and checked against the threat set);
* ``robustopt_search``: the same search through ``robustopt.attacks.core.perturb`` alone,
  its verdict read from the logits it tracked: ``robustopt`` without input validation and
  without the final re-projection and membership check, so ``robustopt/robustopt_search``
  is what those two cost per call;
* ``torchattacks``: ``torchattacks.PGD`` plus the same verdict forward as the hand loop
  (optional; skipped with a one-line note when it is not importable);
* ``robustopt_bf16``: ``robustopt.pgd(..., autocast=torch.bfloat16)`` on a channels_last
  copy of the model and a channels_last input. Only the search runs in bfloat16; the
  verdict it returns still comes from a float32 forward pass.

Repetitions are interleaved in one process (each repetition runs every method once, the
order rotated by one each repetition) so that machine noise hits all methods alike;
ratios are medians of per-repetition ratios. Raw per-repetition timings go to a JSON file.

    python benchmarks/attack_throughput.py            # full run (ResNet dominates)
    python benchmarks/attack_throughput.py --quick    # fewer repetitions, to check it works
    python benchmarks/attack_throughput.py --models small-mnist --reps 40 --processes 6
    python benchmarks/attack_throughput.py --report results/attack_throughput_small_reps200.json
    python benchmarks/attack_throughput.py --report RUN1.json RUN2.json   # pooled
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime as dt
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from _torchattacks import import_torchattacks
from torch import nn

import robustopt
from robustopt.attacks import eval_mode
from robustopt.attacks.core import perturb
from robustopt.losses import cross_entropy
from robustopt.models.normalize import DATASET_STATS
from robustopt.threat import LinfBall

METHODS = ("hand", "robustopt", "robustopt_search", "torchattacks", "robustopt_bf16")


@dataclass(frozen=True)
class Case:
    """One benchmarked model: architecture, dataset statistics, input shape, radius, reps."""

    arch: str
    dataset: str
    shape: tuple[int, int, int]
    eps: float
    reps: int        # default repetitions
    quick_reps: int  # repetitions with --quick


# Defaults for 2 CPU cores (AMD EPYC, torch 2.13 CPU), per attack call: small-mnist ~0.2 s,
# madry-mnist ~3 s, preact-resnet18 at batch 256 ~1-2.5 minutes (bf16 about half), so the
# MNIST models take ~2 minutes in all and the ResNet ~10 (--quick: ~30 s and ~5).
CASES: dict[str, Case] = {
    "madry-mnist": Case("madry-mnist", "mnist", (1, 28, 28), 0.3, reps=10, quick_reps=2),
    "small-mnist": Case("small-mnist", "mnist", (1, 28, 28), 0.3, reps=80, quick_reps=3),
    "preact-resnet18": Case("preact-resnet18", "cifar10", (3, 32, 32), 8 / 255,
                            reps=2, quick_reps=1),
}


# --------------------------------------------------------------------------- the attacks

def verdict(model: nn.Module, x_adv: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Which points the model still classifies correctly: what an evaluation needs from an
    attack, and what ``robustopt.pgd`` returns with its points (``result.correct``)."""
    with torch.no_grad():
        return model(x_adv).argmax(1) == y


def hand_pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, alpha: float,
             steps: int) -> torch.Tensor:
    """Textbook L-inf PGD with a random start; the model is already in eval mode."""
    x_adv = (x + torch.empty_like(x).uniform_(-eps, eps)).clamp(0.0, 1.0)
    for _ in range(steps):
        x_adv.requires_grad_(True)
        loss = F.cross_entropy(model(x_adv), y)
        (grad,) = torch.autograd.grad(loss, x_adv)
        x_adv = x_adv.detach() + alpha * grad.sign()
        x_adv = (x + (x_adv - x).clamp(-eps, eps)).clamp(0.0, 1.0)
    return x_adv


# --------------------------------------------------------------------------- measuring

@contextlib.contextmanager
def count_forwards(model: nn.Module) -> Iterator[list[int]]:
    """Record the batch size of every top-level forward of ``model``."""
    rows: list[int] = []
    handle = model.register_forward_pre_hook(lambda _m, args: rows.append(args[0].shape[0]))
    try:
        yield rows
    finally:
        handle.remove()


def _with_verdict(model: nn.Module, x_adv: torch.Tensor, y: torch.Tensor
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    return x_adv, verdict(model, x_adv, y)


def _as_tensor(out: object) -> torch.Tensor:
    if isinstance(out, robustopt.AttackResult):
        return out.x_adv
    return out[0] if isinstance(out, tuple) else out


def _feasible(x_adv: torch.Tensor, x: torch.Tensor, eps: float) -> bool:
    x_adv, x = x_adv.detach().float(), x.float()
    return bool(((x_adv - x).abs().amax() <= eps + 1e-6) & (x_adv.min() >= 0)
                & (x_adv.max() <= 1))


def build_calls(case: Case, batch: int, steps: int, torchattacks: types.ModuleType | None,
                seed: int) -> tuple[dict[str, Callable[[int], object]], dict, torch.Tensor]:
    """One callable per method (its argument: the number of steps), the model each one
    runs (to count its forwards) and the clean batch."""
    torch.manual_seed(seed)
    mean, std = DATASET_STATS[case.dataset]
    model = robustopt.build_model(case.arch, mean=mean, std=std).eval()
    x = torch.rand(batch, *case.shape)
    y = torch.randint(0, 10, (batch,))
    model_cl = copy.deepcopy(model).to(memory_format=torch.channels_last).eval()
    x_cl = x.contiguous(memory_format=torch.channels_last)
    threat = LinfBall(case.eps)
    eps = case.eps

    def alpha(k: int) -> float:
        return 2.5 * eps / k

    def search_only(k: int) -> tuple[torch.Tensor, torch.Tensor]:
        with eval_mode(model):
            found = perturb(model, x, y, threat, cross_entropy, steps=k, step_size=alpha(k))
        return found.x_adv, found.logits.argmax(1) == y

    calls: dict[str, Callable[[int], object]] = {
        "hand": lambda k: _with_verdict(model, hand_pgd(model, x, y, eps, alpha(k), k), y),
        "robustopt_search": search_only,
        "robustopt": lambda k: robustopt.pgd(model, x, y, threat, steps=k,
                                             step_size=alpha(k)),
        "robustopt_bf16": lambda k: robustopt.pgd(model_cl, x_cl, y, threat, steps=k,
                                                  step_size=alpha(k),
                                                  autocast=torch.bfloat16),
    }
    if torchattacks is not None:
        atks = {}

        def ta(k: int) -> torch.Tensor:
            if k not in atks:
                atks[k] = torchattacks.PGD(model, eps=eps, alpha=alpha(k), steps=k,
                                           random_start=True)
            return _with_verdict(model, atks[k](x, y), y)

        calls["torchattacks"] = ta
    models = {"hand": model, "robustopt": model, "robustopt_search": model, "torchattacks": model,
              "robustopt_bf16": model_cl}
    return calls, models, x


def bench_case(name: str, case: Case, *, batch: int, steps: int, reps: int, warmup_steps: int,
               torchattacks: types.ModuleType | None, seed: int,
               only: tuple[str, ...] = METHODS) -> dict:
    calls, models, x = build_calls(case, batch, steps, torchattacks, seed)
    methods = [m for m in METHODS if m in calls and m in only]
    log(f"[{name}] warm-up ({warmup_steps} step(s), full batch) and feasibility check")
    forwards: dict[str, list[int]] = {}
    for m in methods:
        with count_forwards(models[m]) as rows:
            out = _as_tensor(calls[m](warmup_steps))
        forwards[m] = rows
        if not _feasible(out, x, case.eps):
            raise SystemExit(f"{name}/{m}: returned a point outside the eps ball or the box")
    # Forwarded rows beyond the hand loop's, per call; independent of the step count.
    extra_rows = {m: sum(forwards[m]) - sum(forwards["hand"]) for m in methods}

    timings: dict[str, list[float]] = {m: [] for m in methods}
    orders: list[list[str]] = []
    for r in range(reps):
        order = methods[r % len(methods):] + methods[:r % len(methods)]
        orders.append(order)
        for m in order:
            t0 = time.perf_counter()
            calls[m](steps)
            timings[m].append(time.perf_counter() - t0)
        log(f"[{name}] rep {r + 1}/{reps}: " + "  ".join(
            f"{m} {timings[m][-1]:.3f}s" for m in methods))

    result = {
        "arch": case.arch, "dataset": case.dataset, "input_shape": [batch, *case.shape],
        "eps": case.eps, "steps": steps, "step_size": 2.5 * case.eps / steps,
        "reps": reps, "warmup_steps": warmup_steps,
        "forward_rows_at_warmup": forwards,
        "extra_forward_rows_per_call_vs_hand": extra_rows,
        "order_per_rep": orders,
        "seconds_per_call": timings,
        "process_per_rep": [0] * reps,
    }
    return add_summaries(result)


RATIOS = {  # name -> (method timed in the numerator of speed, method in the denominator)
    "robustopt/hand": ("robustopt", "hand"),
    "robustopt/torchattacks": ("robustopt", "torchattacks"),
    "robustopt_bf16/robustopt": ("robustopt_bf16", "robustopt"),
    "robustopt_bf16/hand": ("robustopt_bf16", "hand"),
    "robustopt/robustopt_search": ("robustopt", "robustopt_search"),
}


def add_summaries(result: dict) -> dict:
    """Rates and speed ratios (median of per-repetition ratios, with a 95% interval) from
    the raw ``seconds_per_call``; with several processes the interval resamples processes."""
    timings, groups = result["seconds_per_call"], result["process_per_rep"]
    work = result["input_shape"][0] * result["steps"]
    rate = {m: [work / t for t in ts] for m, ts in timings.items()}
    result["example_steps_per_s"] = rate
    result["median_example_steps_per_s"] = {m: statistics.median(v) for m, v in rate.items()}
    ratios: dict[str, dict | None] = {}
    for key, (a, b) in RATIOS.items():
        if a not in timings or b not in timings:
            ratios[key] = None
            continue
        per_rep = [tb / ta for ta, tb in zip(timings[a], timings[b], strict=True)]
        ratios[key] = {"median": statistics.median(per_rep),
                       "ci95": median_ci95(per_rep, groups),
                       "min": min(per_rep), "max": max(per_rep), "per_rep": per_rep,
                       "per_process_median": [statistics.median(v)
                                              for v in by_group(per_rep, groups)]}
    result["ratios"] = ratios
    return result


def by_group(values: list[float], groups: list[int] | None) -> list[list[float]]:
    """``values`` split by their group (process), in group order; one group if None."""
    split: dict[int, list[float]] = {}
    for g, v in zip(groups or [0] * len(values), values, strict=True):
        split.setdefault(g, []).append(v)
    return [split[g] for g in sorted(split)]


def median_ci95(values: list[float], groups: list[int] | None = None, resamples: int = 2000,
                seed: int = 0) -> tuple[float, float]:
    """Percentile-bootstrap 95% interval of the median: how far a verdict is from noise.

    Per-repetition ratios on a shared 2-core machine spread over +-25%, so a median a
    point or two from its target says little without it. Repetitions of one process share
    its memory layout, and whole processes differ by a few percent in the same ratio
    (robustopt/hand 0.936-1.006 over six, ``results/attack_throughput_small_6proc.txt``),
    so with ``groups`` (the process of each value) whole processes are resampled, then
    their repetitions. Seeded: the same timings give the same interval."""
    rng = random.Random(seed)
    members = by_group(values, groups)
    meds = []
    for _ in range(resamples):
        picked = members if len(members) == 1 else rng.choices(members, k=len(members))
        pooled = [v for c in picked for v in rng.choices(c, k=len(c))]
        meds.append(statistics.median(pooled))
    meds.sort()
    return meds[int(0.025 * resamples)], meds[min(resamples - 1, int(0.975 * resamples))]


# --------------------------------------------------------------------------- reporting

def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def header() -> dict:
    return {
        "date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "robustopt": robustopt.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "loadavg_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }


def _fmt_rate(v: float | None) -> str:
    return "-" if v is None else f"{v:,.0f}"


def _fmt_ratio(r: dict | None) -> str:
    return "-" if r is None else f"{r['median']:.3f}"


def table(results: dict[str, dict]) -> str:
    cols = ("model", "hand ex-st/s", "robustopt ex-st/s", "ro/hand", "torchattacks ex-st/s",
            "ro/ta", "ro bf16 ex-st/s", "bf16/fp32")
    rows = []
    for name, res in results.items():
        med, rat = res["median_example_steps_per_s"], res["ratios"]
        rows.append((name, _fmt_rate(med.get("hand")), _fmt_rate(med.get("robustopt")),
                     _fmt_ratio(rat["robustopt/hand"]), _fmt_rate(med.get("torchattacks")),
                     _fmt_ratio(rat["robustopt/torchattacks"]),
                     _fmt_rate(med.get("robustopt_bf16")),
                     _fmt_ratio(rat["robustopt_bf16/robustopt"])))
    widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(cols)]
    line = "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(cols, widths,
                                                                                 strict=True)))
    out = [line, "-" * len(line)]
    for r in rows:
        out.append("  ".join(v.rjust(w) if i else v.ljust(w)
                             for i, (v, w) in enumerate(zip(r, widths, strict=True))))
    return "\n".join(out)


def verdicts(results: dict[str, dict]) -> list[str]:
    lines = []
    for name, res in results.items():
        rat = res["ratios"]
        parts = []
        for key, target in (("robustopt/hand", 0.95), ("robustopt/torchattacks", 1.0)):
            r = rat[key]
            if r is None:
                parts.append(f"{key}: not measured")
                continue
            ok = "met" if r["median"] >= target else "MISSED"
            lo, hi = r["ci95"]
            procs = r.get("per_process_median", [])
            per_proc = ("; per process " + " ".join(f"{v:.3f}" for v in procs)
                        if len(procs) > 1 else "")
            parts.append(f"{key} {r['median']:.3f} (95% CI {lo:.3f}-{hi:.3f}; per rep "
                         f"{r['min']:.3f}-{r['max']:.3f}{per_proc}) (target >= {target:.2f}: "
                         f"{ok})")
        lines.append(f"{name}: " + "; ".join(parts))
        own = rat.get("robustopt/robustopt_search")
        if own is not None:
            lo, hi = own["ci95"]
            lines.append(f"  input validation + final check of the points: robustopt runs at "
                         f"{own['median']:.3f} (95% CI {lo:.3f}-{hi:.3f}) of its bare search's "
                         f"speed")
        extra = res["extra_forward_rows_per_call_vs_hand"].get("robustopt")
        if extra is not None:
            n = res["input_shape"][0]
            lines.append(f"  robustopt forwards {extra} more example-rows per call than the hand "
                         f"loop (= {extra / n:.2f} batch forwards; the hand loop does "
                         f"{res['steps']} forward+backward and 1 verdict forward)")
    return lines


# --------------------------------------------------------------------------- main

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    # allow_abbrev=False: run_in_processes strips --processes by its full name, and a child
    # that still saw an abbreviation of it would start processes of its own, without end
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="few repetitions (checks that everything runs; timings are rough)")
    p.add_argument("--reps", type=int, default=None,
                   help="timed repetitions per model (default: " + ", ".join(
                       f"{k} {c.reps}" for k, c in CASES.items()) + "; --quick: " + ", ".join(
                       f"{c.quick_reps}" for c in CASES.values()) + ")")
    p.add_argument("--models", nargs="+", choices=list(CASES), default=list(CASES),
                   help="models to benchmark (default: all)")
    p.add_argument("--batch", type=int, default=256, help="batch size (default 256)")
    p.add_argument("--steps", type=int, default=20, help="PGD steps (default 20)")
    p.add_argument("--warmup-steps", type=int, default=1,
                   help="steps of the untimed full-batch warm-up call per method (default 1)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch.set_num_threads (default: leave torch's default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--malloc", choices=("tuned", "default"), default="tuned",
                   help="tuned (default): robustopt.keep_freed_memory(), as the robustopt "
                   "command does, for every method alike; default: glibc's own settings")
    p.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS),
                   help="methods to time (default: all; 'hand' is always timed, as every "
                   "ratio's reference); fewer makes a slow model's repetition cheaper")
    p.add_argument("--processes", type=int, default=1,
                   help="run the repetitions in this many fresh processes, one after another "
                   "(--reps each), and pool them: a process's memory layout can favour one "
                   "method by a few percent for all its repetitions (default 1)")
    p.add_argument("--report", type=Path, nargs="+", metavar="JSON",
                   help="measure nothing: re-print the table and verdicts (with confidence "
                   "intervals) from JSON files this script wrote, pooled if several")
    p.add_argument("--out", type=Path, default=Path("results/attack_throughput.json"),
                   help="JSON file for all raw timings (default results/attack_throughput.json)")
    args = p.parse_args(argv)
    if "hand" not in args.methods:
        args.methods = ["hand", *args.methods]  # extra_forward_rows compares with it
    if args.batch < 1 or args.steps < 1 or args.warmup_steps < 1 or (
            args.reps is not None and args.reps < 1) or args.processes < 1:
        p.error("--batch, --steps, --warmup-steps, --reps and --processes must be >= 1")
    return args


def report(paths: list[Path]) -> int:
    """Re-derive the table and the verdicts from saved raw timings; several files (runs of
    the same code and settings) are pooled, each of their processes kept apart."""
    results = pool([json.loads(path.read_text())["results"] for path in paths])
    reps = ", ".join(f"{name}: {res['reps']} reps in {len(set(res['process_per_rep']))} "
                     f"process(es)" for name, res in results.items())
    print(f"from {', '.join(map(str, paths))} ({reps})")
    print(table(results))
    print()
    for line in verdicts(results):
        print(line)
    return 0


def pool(runs: list[dict[str, dict]]) -> dict[str, dict]:
    """One result per model from several runs' ``results``, every repetition tagged with a
    process number unique across the runs (files from before ``--processes`` count as one
    process)."""
    pooled: dict[str, dict] = {}
    next_process = 0
    for results in runs:
        first = next_process
        for name, res in results.items():
            n = len(next(iter(res["seconds_per_call"].values())))
            procs = [first + g for g in res.get("process_per_rep", [0] * n)]
            next_process = max(next_process, max(procs) + 1)
            if name not in pooled:
                pooled[name] = {**res, "reps": 0, "order_per_rep": [], "process_per_rep": [],
                                "seconds_per_call": {m: [] for m in res["seconds_per_call"]}}
            dst = pooled[name]
            if (dst["input_shape"], dst["steps"]) != (res["input_shape"], res["steps"]) or set(
                    dst["seconds_per_call"]) != set(res["seconds_per_call"]):
                raise SystemExit(f"{name}: the runs differ in batch, steps or methods; pool "
                                 "only runs of the same settings")
            dst["reps"] += res["reps"]
            dst["order_per_rep"] += res["order_per_rep"]
            dst["process_per_rep"] += procs
            for m, ts in res["seconds_per_call"].items():
                dst["seconds_per_call"][m] += ts
    return {name: add_summaries(res) for name, res in pooled.items()}


def _without(argv: list[str], flag: str) -> list[str]:
    """``argv`` without ``flag`` and its value (``--flag V`` or ``--flag=V``)."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == flag:
            skip = True
        elif not a.startswith(flag + "="):
            out.append(a)
    return out


def run_in_processes(args: argparse.Namespace, argv: list[str]) -> dict[str, dict]:
    """Run this benchmark in ``args.processes`` fresh processes, one after another, and
    pool their repetitions per model (each tagged with its process)."""
    base = _without(_without(argv, "--processes"), "--out")
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for k in range(args.processes):
            out = Path(tmp) / f"process{k}.json"
            log(f"process {k + 1}/{args.processes}")
            cmd = [sys.executable, str(Path(__file__).resolve()), *base, "--out", str(out)]
            done = subprocess.run(cmd, stdout=subprocess.DEVNULL, check=False)
            if done.returncode != 0:
                raise SystemExit(f"process {k + 1} of the benchmark failed (exit code "
                                 f"{done.returncode}); its messages are above")
            runs.append(json.loads(out.read_text())["results"])
    return pool(runs)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.report:
        return report(args.report)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    tuned = args.malloc == "tuned" and robustopt.keep_freed_memory()
    torchattacks, ta_note = import_torchattacks()
    meta = header()
    meta["torchattacks"] = ta_note
    meta["malloc"] = ("tuned (robustopt.keep_freed_memory: glibc mmap threshold 32 MiB, trim "
                      "threshold 1 GiB), for every method" if tuned else "glibc defaults")
    print("PGD throughput: robustopt.pgd vs hand-written PGD loop vs torchattacks.PGD")
    for key in ("date", "torch", "robustopt", "python", "cpu", "cpu_count", "torch_threads",
                "loadavg_start"):
        print(f"  {key:<14}{meta[key]}")
    print(f"  {'torchattacks':<14}{ta_note}")
    print(f"  {'malloc':<14}{meta['malloc']}")
    print(f"  {'settings':<14}L-inf, batch {args.batch}, {args.steps} steps, step size "
          f"2.5*eps/{args.steps}, random start, untrained models, torch.rand inputs"
          + (", --quick" if args.quick else ""))
    print(flush=True)

    t_start = time.perf_counter()
    if args.processes > 1:
        results = run_in_processes(args, argv if argv is not None else sys.argv[1:])
    else:
        results = {}
        for name in args.models:
            case = CASES[name]
            reps = args.reps or (case.quick_reps if args.quick else case.reps)
            results[name] = bench_case(name, case, batch=args.batch, steps=args.steps,
                                       reps=reps, warmup_steps=args.warmup_steps,
                                       torchattacks=torchattacks, seed=args.seed,
                                       only=tuple(args.methods))
    meta["wall_seconds"] = time.perf_counter() - t_start
    meta["processes"] = args.processes
    meta["loadavg_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None

    print(table(results))
    print()
    print("ex-st/s: examples x PGD steps per second, median over repetitions; ratios: median "
          "of per-repetition ratios (ro = robustopt, ta = torchattacks)"
          + (f", pooled over {args.processes} processes run one after another."
             if args.processes > 1 else "."))
    print("every method returns the points and the per-example verdict (hand and torchattacks "
          "end with one no-grad forward for it); robustopt also validates its input, tracks "
          "the best iterate and checks every point against the threat set.")
    print("bf16: search under torch.autocast(bfloat16), channels_last model and input; the "
          "verdict is still a float32 forward pass. bf16/fp32 = its speed-up over robustopt.")
    print()
    for line in verdicts(results):
        print(line)
    print(f"\nwall time {meta['wall_seconds']:.0f} s; load average at start "
          f"{meta['loadavg_start']}, at end {meta['loadavg_end']}")

    args.out.parent.mkdir(parents=True, exist_ok=True)
    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    args.out.write_text(json.dumps({"meta": meta, "config": config, "results": results},
                                   indent=1) + "\n")
    print(f"raw timings written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
