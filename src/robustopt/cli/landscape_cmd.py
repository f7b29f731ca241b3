"""``robustopt landscape``: the seed paper's loss-landscape experiments (numbers, then figures).

Sub-commands: ``direction``, ``restarts``, ``surface``, ``curves``, ``fgsm-vs-pgd``. Each
writes ``STEM.json`` (settings + summary), ``STEM.npz`` (the arrays) and ``STEM.png``.
Without ``--out`` the files go to the model's run directory, ``plots/landscape_<name>.*``
(where ``robustopt report`` finds them); with ``--out DIR`` to ``DIR/<label>_<name>.*``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from .. import landscape as L
from ..data import load_dataset
from ..errors import RobustOptError
from ..modelfile import load_model, read_model_file
from ..rundir import RunDir
from ..threat import make_threat
from ..train import TrainConfig, preset, train
from ..train.loop import pick_device
from .common import add_data_flags, add_device_flag, eps_arg, positive_int
from .progress import Progress

EXPERIMENTS = ("direction", "restarts", "surface", "curves", "fgsm-vs-pgd")


# ----------------------------------------------------------------------------- flags


def _indices(text: str) -> list[int]:
    try:
        values = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected indices like 0,7,42, got {text!r}") from None
    if not values or min(values) < 0:
        raise argparse.ArgumentTypeError(f"expected indices >= 0 like 0,7,42, got {text!r}")
    return values


def _labels(text: str) -> list[str]:
    values = [t.strip() for t in text.split(",")]
    if not all(values):
        raise argparse.ArgumentTypeError(f"expected labels like standard,pgd, got {text!r}")
    return values


def _nonneg_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {value}")
    return value


def _weights_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--weights", choices=("best", "last"),
                   help="which weights of a run directory: best (by held-out PGD accuracy) "
                   "or last (the final epoch's); default: the run's model.json choice. "
                   "Use last for standard or FGSM-trained runs, whose held-out PGD accuracy "
                   "is ~0 at every epoch")


def _common(p: argparse.ArgumentParser, *, points: int, models: bool = True) -> None:
    if models:
        p.add_argument("models", nargs="+", metavar="MODEL",
                       help="run directories or .safetensors model files")
        p.add_argument("--labels", type=_labels,
                       help="comma-separated names of the models (default: directory/file name)")
        p.add_argument("--dataset", help="dataset (default: the one the first model was "
                       "trained on)")
        p.add_argument("--n", type=positive_int, default=points,
                       help=f"use the first N test images (default {points})")
        p.add_argument("--indices", type=_indices, metavar="I,J,...",
                       help="use these test images instead of the first N")
        p.add_argument("--eps", type=eps_arg, help="radius (default: the model's)")
        p.add_argument("--norm", help="linf or l2 (default: the model's threat model)")
        p.add_argument("--seed", type=_nonneg_int, default=0)
        _weights_flag(p)
        add_data_flags(p)
        add_device_flag(p)
    p.add_argument("--out", metavar="DIR",
                   help="write the files here (default: the run directory's plots/)")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("landscape", help="the seed paper's loss-landscape experiments",
                       description="Loss-landscape experiments of Madry et al.: data as "
                       "JSON/NPZ first, then a PNG drawn from it.")
    exp = p.add_subparsers(dest="experiment", required=True, metavar="EXPERIMENT")

    d = exp.add_parser("direction", help="loss along x + t (x_adv - x) for FGSM and PGD",
                       description="Loss on the segment from each test point to its FGSM "
                       "point and to its PGD point; one figure per model.")
    _common(d, points=20)
    d.add_argument("--points", type=positive_int, default=51, help="values of t (51)")
    d.add_argument("--steps", type=positive_int, default=40, help="PGD steps (40)")
    d.add_argument("--step-size", type=eps_arg, help="PGD step (default 2.5*eps/steps)")
    d.add_argument("--restarts", type=positive_int, default=1, help="PGD restarts (1)")
    d.add_argument("--loss", default="ce", choices=("ce", "margin"))
    d.set_defaults(run=run_direction)

    r = exp.add_parser("restarts", help="final PGD loss over many random restarts",
                       description="Histogram of the final PGD loss from N random starts "
                       "on single test points (the seed used 10^5).")
    _common(r, points=1)
    r.add_argument("--restarts", type=positive_int, default=1000, help="random starts (1000)")
    r.add_argument("--steps", type=positive_int, default=40, help="PGD steps (40)")
    r.add_argument("--step-size", type=eps_arg, help="PGD step (default 2.5*eps/steps)")
    r.add_argument("--chunk", type=positive_int, default=256,
                   help="restarts per stacked batch (256: on a 2-core CPU 256-row chunks ran "
                   "10^4 restarts of the small CNN 1.7x faster than 4096-row ones)")
    r.add_argument("--trace", type=_nonneg_int, default=20,
                   help="record the loss at every step for this many restarts (20)")
    r.add_argument("--precision", default="fp32", choices=("fp32", "bf16"),
                   help="bf16: autocast the search (final losses stay float32)")
    r.set_defaults(run=run_restarts)

    s = exp.add_parser("surface", help="loss on the plane through two PGD maxima",
                       description="Two PGD maxima from different random starts: their angle, "
                       "the loss on the plane they span with x, and on the segment between "
                       "them.")
    _common(s, points=1)
    s.add_argument("--grid", type=positive_int, default=41, help="grid points per axis (41)")
    s.add_argument("--lam-min", type=float, default=0.0)
    s.add_argument("--lam-max", type=float, default=1.0)
    s.add_argument("--segment", type=positive_int, default=51,
                   help="points on the segment between the maxima (51)")
    s.add_argument("--steps", type=positive_int, default=40, help="PGD steps (40)")
    s.add_argument("--step-size", type=eps_arg, help="PGD step (default 2.5*eps/steps)")
    s.add_argument("--loss", default="ce", choices=("ce", "margin"))
    s.set_defaults(run=run_surface)

    c = exp.add_parser("curves", help="training curves of one or several runs",
                       description="Robust loss and robust/clean accuracy against training "
                       "iterations from metrics.jsonl; several runs share one figure.")
    c.add_argument("runs", nargs="+", metavar="RUN", help="run directories")
    c.add_argument("--labels", type=_labels, help="comma-separated names of the runs")
    _common(c, points=0, models=False)
    c.set_defaults(run=run_curves)

    f = exp.add_parser("fgsm-vs-pgd", help="FGSM- vs PGD-trained models under FGSM and PGD",
                       description="Tabulate accuracy under FGSM and PGD for the given models "
                       "and/or models trained into --train-dir (fgsm/ and pgd/, standard/ "
                       "with --standard; existing runs there are reused).")
    f.add_argument("models", nargs="*", metavar="MODEL",
                   help="run directories or model files (optional with --train-dir)")
    f.add_argument("--labels", type=_labels, help="names of the MODELs")
    f.add_argument("--train-dir", metavar="DIR",
                   help="train (or reuse) DIR/fgsm and DIR/pgd with the preset")
    f.add_argument("--standard", action="store_true",
                   help="with --train-dir, also train a standard model DIR/standard")
    f.add_argument("--preset", default="mnist-quick", help="training preset (mnist-quick)")
    f.add_argument("--epochs", type=positive_int, help="training epochs (preset's)")
    f.add_argument("--train-n", type=positive_int,
                   help="train on the first N images only (a tenth of them held out)")
    f.add_argument("--dataset", help="dataset (default: the first model's / the preset's)")
    f.add_argument("--n", type=positive_int, default=1000, help="first N test images (1000)")
    f.add_argument("--eps", type=eps_arg, help="radius (default: the model's)")
    f.add_argument("--norm", help="linf or l2 (default: the model's threat model)")
    f.add_argument("--steps", type=positive_int, default=40, help="PGD steps (40)")
    f.add_argument("--restarts", type=positive_int, default=1, help="PGD restarts (1)")
    f.add_argument("--seed", type=_nonneg_int, default=0)
    _weights_flag(f)
    f.add_argument("--out", metavar="DIR",
                   help="write the files here (default: plots/ of the first run directory)")
    add_data_flags(f)
    add_device_flag(f)
    f.set_defaults(run=run_fgsm_vs_pgd)


# ----------------------------------------------------------------------------- helpers


def _label_list(paths: list[str], labels: list[str] | None) -> list[str]:
    if labels is not None:
        if len(labels) != len(paths):
            raise RobustOptError(f"{len(labels)} labels for {len(paths)} models: give one "
                                 "label per model")
        return labels
    names = [L.curves.run_label(p) if Path(p).is_dir() else Path(p).stem for p in paths]
    if len(set(names)) != len(names):  # e.g. runs/a/fgsm and runs/b/fgsm
        names = [f"{n}{i}" for i, n in enumerate(names)]
    return names


def _stem(out: str | None, model_path: str | Path | None, label: str, name: str) -> Path:
    """Where one model's files go: ``--out``/label_name, else the run's plots/landscape_name."""
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        return Path(out) / f"{label}_{name}"
    if model_path is not None and Path(model_path).is_dir():
        return RunDir(model_path).plots_dir() / f"landscape_{name}"
    raise RobustOptError(f"{model_path} is a model file, not a run directory: pass --out DIR "
                         "to say where to write the results")


def _shared_stem(out: str | None, paths: list[str], name: str) -> Path:
    """Where a multi-model file goes: ``--out``/name, else the first run's plots/."""
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        return Path(out) / name
    for p in paths:
        if Path(p).is_dir():
            return RunDir(p).plots_dir() / f"landscape_{name}"
    raise RobustOptError("none of the models is a run directory: pass --out DIR")


class _Setup:
    """Models, threat model and test points shared by the per-model experiments."""

    def __init__(self, args: argparse.Namespace, paths: list[str]) -> None:
        self.device = pick_device(args.device)
        records = [read_model_file(p)[0] for p in paths]
        dataset = getattr(args, "dataset", None) or records[0].get("dataset")
        if not dataset:
            raise RobustOptError(f"{paths[0]} does not say its dataset: pass --dataset")
        saved = records[0].get("threat") or {}
        norm = args.norm or saved.get("norm", "linf")
        eps = args.eps if args.eps is not None else saved.get("eps")
        if eps is None:
            raise RobustOptError("no eps given and the model file has no threat model: "
                                 "pass --eps")
        self.threat = make_threat(norm, eps)
        self.dataset = dataset
        data = load_dataset(dataset, "test", args.data_dir)
        total = len(data.labels)
        idx = getattr(args, "indices", None) or list(range(args.n))
        if max(idx) >= total:
            raise RobustOptError(f"test index {max(idx)} is past the {total} test images of "
                                 f"{dataset}: use smaller --indices / --n")
        self.indices = idx
        x, y = data.tensors(device=self.device, n=max(idx) + 1)
        sel = torch.tensor(idx, device=self.device)
        self.x, self.y = x[sel], y[sel]
        which = getattr(args, "weights", None)
        self.weights = which
        self.models = [load_model(p, device=self.device,
                                  which=which if Path(p).is_dir() else None) for p in paths]

    def describe(self, label: str, path: str) -> dict:
        return {"model": str(path), "label": label, "weights": self.weights,
                "dataset": self.dataset, "split": "test", "indices": self.indices}


def _written(paths: list[Path]) -> str:
    return ", ".join(str(p) for p in paths)


# ----------------------------------------------------------------------------- experiments


def run_direction(args: argparse.Namespace) -> int:
    labels = _label_list(args.models, args.labels)
    setup = _Setup(args, args.models)
    for path, label, model in zip(args.models, labels, setup.models, strict=True):
        stem = _stem(args.out, path, label, "direction")
        res = L.loss_along_direction(model, setup.x, setup.y, setup.threat, points=args.points,
                                     steps=args.steps, step_size=args.step_size,
                                     restarts=args.restarts, loss=args.loss, seed=args.seed)
        res.meta.update(setup.describe(label, path))
        files = res.save(stem)
        files.append(L.plot_direction(res, stem.with_name(stem.name + ".png"), title=label))
        s = res.meta["summary"]
        print(f"{label}: {s['n']} points; mean loss clean {s['clean_loss_mean']:.3g}, "
              f"at the FGSM point {s['fgsm_end_loss_mean']:.3g}, at the PGD point "
              f"{s['pgd_end_loss_mean']:.3g}; accuracy clean {s['clean_accuracy']:.0%}, "
              f"FGSM {s['fgsm_accuracy']:.0%}, PGD {s['pgd_accuracy']:.0%}; PGD ends higher "
              f"than FGSM on {s['pgd_end_above_fgsm_end']:.0%}; FGSM curves with a bump: "
              f"{s['fgsm_bumps']}")
        print(f"  written: {_written(files)}")
    return 0


def run_restarts(args: argparse.Namespace) -> int:
    labels = _label_list(args.models, args.labels)
    setup = _Setup(args, args.models)
    progress = Progress()
    autocast = torch.bfloat16 if args.precision == "bf16" else None
    if autocast is not None:  # oneDNN's fast bf16 convolutions want channels_last
        setup.models = [m.to(memory_format=torch.channels_last) for m in setup.models]
    done = []
    for path, label, model in zip(args.models, labels, setup.models, strict=True):
        stem = _stem(args.out, path, label, "restarts")
        t0 = time.monotonic()
        res = L.restart_losses(model, setup.x, setup.y, setup.threat, restarts=args.restarts,
                               steps=args.steps, step_size=args.step_size, seed=args.seed,
                               chunk=args.chunk, trace=args.trace, autocast=autocast,
                               progress=progress)
        res.meta.update(setup.describe(label, path))
        res.meta["time_s"] = time.monotonic() - t0
        files = res.save(stem)
        files.append(L.plot_restarts([(label, res)], stem.with_name(stem.name + ".png")))
        if "trace" in res.arrays:
            files.append(L.plot_traces([(label, res)],
                                       stem.with_name(stem.name + "_traces.png")))
        for i, pt in zip(setup.indices, res.meta["points"], strict=True):
            q = pt["final_loss"]
            print(f"{label} test #{i}: clean loss {pt['clean_loss']:.3g}; final loss over "
                  f"{args.restarts:,} restarts min {q['min']:.3g} median {q['median']:.3g} "
                  f"q99 {q['q99']:.3g} max {q['max']:.3g}; misclassified "
                  f"{pt['misclassified_fraction']:.1%}; {pt['time_s']:.1f} s "
                  f"({pt['restarts_per_s']:.0f} restarts/s)")
        print(f"  written: {_written(files)}")
        done.append((label, res))
    if len(done) > 1:
        stem = _shared_stem(args.out, args.models, "restarts_compare")
        files = [L.plot_restarts(done, stem.with_name(stem.name + ".png"))]
        if any("trace" in r.arrays for _, r in done):
            files.append(L.plot_traces(done, stem.with_name(stem.name + "_traces.png")))
        print(f"comparison: {_written(files)}")
    return 0


def run_surface(args: argparse.Namespace) -> int:
    labels = _label_list(args.models, args.labels)
    setup = _Setup(args, args.models)
    for path, label, model in zip(args.models, labels, setup.models, strict=True):
        stem = _stem(args.out, path, label, "surface")
        res = L.loss_surface(model, setup.x, setup.y, setup.threat, grid=args.grid,
                             lam_min=args.lam_min, lam_max=args.lam_max, segment=args.segment,
                             steps=args.steps, step_size=args.step_size, loss=args.loss,
                             seed=args.seed)
        res.meta.update(setup.describe(label, path))
        files = res.save(stem)
        files.append(L.plot_surface(res, stem.with_name(stem.name + ".png"), title=label))
        for i, pt in zip(setup.indices, res.meta["points"], strict=True):
            lo, hi = pt["end_losses"]
            print(f"{label} test #{i}: angle between the two PGD directions "
                  f"{pt['angle_deg']:.1f} deg (two random points of the ball: "
                  f"{pt['random_angle_deg']:.1f} deg); loss at the maxima {lo:.3g} / "
                  f"{hi:.3g}, in the middle of the segment {pt['middle_loss']:.3g} "
                  f"(lowest {pt['min_segment_loss']:.3g}, up to {pt['chord_gap']:.3g} below "
                  "the chord)")
        print(f"  written: {_written(files)}")
    return 0


def run_curves(args: argparse.Namespace) -> int:
    res = L.training_curves(args.runs, args.labels)
    stem = _shared_stem(args.out, args.runs, "curves")
    files = res.save(stem)
    files.append(L.plot_curves(res, stem.with_name(stem.name + ".png")))
    for s in res.meta["summary"]:
        last = ", ".join(f"{k} {v:.3g}" for k, v in s["last"].items() if v is not None)
        print(f"{s['label']}: {s['epochs']} epoch(s)"
              + (f", {s['iterations']:,} iterations" if s["iterations"] else "")
              + f"; last epoch: {last}")
    print(f"  written: {_written(files)}")
    return 0


def _train_or_reuse(out: Path, cfg: TrainConfig, progress: Progress) -> Path:
    if (out / "model.json").is_file() and (out / "metrics.jsonl").is_file():
        done = len(RunDir(out).read_metrics())
        if done >= cfg.epochs:
            print(f"reusing {out} ({done} epoch(s))")
            return out
        print(f"resuming {out} from its checkpoint")
        train(None, out, resume=True, progress=progress)
        return out
    print(f"training {out} (adversary {cfg.adversary}, {cfg.epochs} epoch(s))")
    train(cfg, out, force=out.exists(), progress=progress)
    return out


def run_fgsm_vs_pgd(args: argparse.Namespace) -> int:
    paths = list(args.models)
    labels = _label_list(paths, args.labels) if paths else []
    progress = Progress()
    if args.train_dir:
        root = Path(args.train_dir)
        base = {"data_dir": args.data_dir}
        if args.epochs:
            base["epochs"] = args.epochs
        if args.train_n:  # a small training set keeps a tenth of itself held out
            base["train_n"] = args.train_n
            base["heldout_n"] = min(1000, max(1, args.train_n // 10))
        if args.dataset:
            base["dataset"] = args.dataset
        if args.device != "auto":
            base["device"] = args.device
        recipes = {"fgsm": {"adversary": "fgsm", "attack_step_size": None,
                            "overfit_guard": False},
                   "pgd": {"adversary": "pgd"}}
        if args.standard:
            recipes = {"standard": {"adversary": "none"}, **recipes}
        for name, over in recipes.items():
            cfg = preset(args.preset, **base, **over)
            paths.append(str(_train_or_reuse(root / name, cfg, progress)))
            labels.append(f"{name}-trained" if name != "standard" else name)
    if not paths:
        raise RobustOptError("give models to compare, or --train-dir DIR to train them")
    if len(set(labels)) != len(labels):
        raise RobustOptError(f"labels must differ, got {', '.join(labels)}: pass --labels")
    args.indices = None
    setup = _Setup(args, paths)
    info = {}
    for label, path in zip(labels, paths, strict=True):
        entry = {"model": path, "weights": args.weights}
        if Path(path, "config.json").is_file():
            cfg = RunDir(path).read_config()
            entry.update({k: cfg.get(k) for k in ("adversary", "model", "epochs", "eps",
                                                  "attack_steps", "attack_step_size")})
        info[label] = entry
    res = L.fgsm_vs_pgd(dict(zip(labels, setup.models, strict=True)), setup.x, setup.y,
                        setup.threat, steps=args.steps, restarts=args.restarts,
                        seed=args.seed, info=info)
    res.meta.update({"dataset": setup.dataset,
                     "test_indices": {"split": "test", "start": 0, "stop": args.n}})
    out = args.out or (str(Path(args.train_dir)) if args.train_dir else None)
    stem = _shared_stem(out, paths, "fgsm_vs_pgd")
    files = res.save(stem)
    files.append(L.plot_fgsm_vs_pgd(res, stem.with_name(stem.name + ".png")))
    print(L.format_table(res))
    print(f"  written: {_written(files)}")
    return 0
