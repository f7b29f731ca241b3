"""``robustopt evaluate``: the worst-case robust accuracy of a saved model under an attack suite.

Writes ``eval.json`` into the run directory (through :class:`RunDir`), prints the
table, and optionally saves the strongest adversarial point per example and an eps
sweep (data in eval.json, figure in ``plots/eval_sweep.png``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from .. import __version__
from ..atomic import write_json_atomic, write_npy_atomic
from ..data import load_dataset
from ..errors import RobustOptError
from ..evaluate import SUITE_NAMES, evaluate, plot_sweep, sweep
from ..evaluate.suites import read_suite_file
from ..modelfile import build_from_record, read_model_file, weights_sha256
from ..rundir import RunDir
from ..threat import make_threat, parse_eps
from ..train.loop import pick_device
from .common import add_data_flags, add_device_flag, dataset_and_threat, eps_arg, positive_int
from .progress import Progress


def _eps_list(text: str) -> list[float]:
    try:
        values = [parse_eps(t) for t in text.split(",") if t.strip()]
    except RobustOptError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    if not values:
        raise argparse.ArgumentTypeError(f"expected radii like 0.1,0.2,8/255, got {text!r}")
    return values


def _suite(text: str) -> str:
    """A suite name, or a .json file listing attack specs (checked by :func:`run`)."""
    if text.strip().lower() in SUITE_NAMES:
        return text.strip().lower()
    if text.lower().endswith(".json"):
        return text
    raise argparse.ArgumentTypeError(f"unknown suite {text!r}: choose one of "
                                     f"{', '.join(SUITE_NAMES)} or give a .json file that "
                                     "lists attack specs")


def _nonnegative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got {value}")
    return value


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="worst-case robust accuracy under an attack suite",
                       description="Evaluate a run directory or model file on N test "
                       "images (the first N, or N from --start) with a suite of attacks "
                       "(survivor-only chaining), sanity checks and an optional eps sweep; "
                       "writes eval.json.")
    p.add_argument("model", help="run directory or .safetensors model file")
    p.add_argument("--eps", type=eps_arg, help="radius, e.g. 0.3 or 8/255 (default: the model's)")
    p.add_argument("--norm", help="linf or l2 (default: the model's threat model, else linf)")
    p.add_argument("--dataset", help="dataset name (default: the one the model was trained on)")
    p.add_argument("--n", type=positive_int, default=1000,
                   help="number of test images, the first N unless --start (1000)")
    p.add_argument("--start", type=_nonnegative_int, default=0, metavar="I",
                   help="attack test images I .. I+N-1 instead of the first N: a shard of one "
                   "evaluation, to run apart and merge (experiments/merge_eval_shards.py); "
                   "needs --out for a run directory, whose eval.json holds the first N")
    p.add_argument("--suite", default="standard", type=_suite,
                   help="quick, standard (default: AutoAttack's attacks and budgets), "
                   "strong, or a .json file listing attack specs and suite names, e.g. "
                   '["standard", {"attack": "pgd", "loss": "margin", "restarts": 5}]')
    p.add_argument("--steps", type=positive_int, help="override every attack's steps")
    p.add_argument("--restarts", type=positive_int, help="override every attack's restarts")
    p.add_argument("--queries", type=positive_int, help="override Square's query budget")
    p.add_argument("--transfer-from", metavar="MODEL",
                   help="also run a transfer attack crafted on this model")
    p.add_argument("--no-sanity", dest="sanity", action="store_false",
                   help="skip the sanity FGSM and probes (the chain-based checks still run)")
    p.add_argument("--save-adv", metavar="FILE",
                   help="write the strongest adversarial point per example as float32 .npy")
    p.add_argument("--sweep", type=_eps_list, metavar="EPS,EPS,...",
                   help="also measure robust accuracy at these radii (e.g. 0.1,0.2,0.3)")
    p.add_argument("--sweep-suite", default="quick", choices=SUITE_NAMES,
                   help="suite of the sweep (default: quick)")
    p.add_argument("--out", metavar="FILE",
                   help="where to write the JSON (default: eval.json in the run directory; "
                   "required to save it for a bare model file)")
    p.add_argument("--seed", type=_nonnegative_int, default=0)
    p.add_argument("--batch-size", type=positive_int, default=500)
    add_data_flags(p)
    add_device_flag(p)
    p.set_defaults(run=run)


def _source_model(path: str, dataset: str, record: dict, device):
    src_record, src_tensors = read_model_file(path)
    src_dataset = src_record.get("dataset")
    if src_dataset and src_dataset.lower() != dataset.lower():
        raise RobustOptError(f"--transfer-from {path} was trained on {src_dataset}, not "
                             f"{dataset}: give a source model for the same dataset")
    shape, src_shape = record.get("input_shape"), src_record.get("input_shape")
    if shape and src_shape and list(shape) != list(src_shape):
        raise RobustOptError(f"--transfer-from {path} takes inputs of shape {src_shape}, the "
                             f"model {shape}: give a source model for the same input shape")
    return build_from_record(src_record, src_tensors, path, device)


def run(args: argparse.Namespace) -> int:
    device = pick_device(args.device)
    suite = read_suite_file(args.suite) if args.suite not in SUITE_NAMES else args.suite
    path = Path(args.model)
    if args.start and path.is_dir() and not args.out:
        raise RobustOptError(f"--start {args.start} evaluates a shard, but {path}/eval.json holds "
                             "the first N test images: pass --out FILE.json for the shard")
    if path.is_dir() and not args.out:
        RunDir(path).refuse_bundle()  # before attacking, not after
    record, tensors = read_model_file(path)
    digest = weights_sha256(tensors)  # names the weights attacked, wherever they were copied
    dataset, threat = dataset_and_threat(args, record)
    norm = threat.norm
    if args.sweep:
        for e in args.sweep:
            make_threat(norm, e)
    model = build_from_record(record, tensors, path, device)
    del tensors
    source = (_source_model(args.transfer_from, dataset, record, device)
              if args.transfer_from else None)
    data = load_dataset(dataset, "test", args.data_dir)
    total = len(data.labels)
    if args.start + args.n > total:
        raise RobustOptError(f"--start {args.start} --n {args.n} runs past the {total} test "
                             f"examples of {dataset}: use --start + --n <= {total}")
    x, y = data.tensors(device=device, n=args.start + args.n)
    x, y = x[args.start:], y[args.start:]
    budget = {k: getattr(args, k) for k in ("steps", "restarts", "queries")
              if getattr(args, k) is not None}
    progress = Progress()
    result = evaluate(model, x, y, threat, suite, transfer_from=source, seed=args.seed,
                      batch_size=args.batch_size, progress=progress, sanity=args.sanity,
                      budget=budget or None, index_offset=args.start)
    sweep_data = None
    plot = None
    if args.sweep:
        sweep_data = sweep(model, x, y, norm, args.sweep, args.sweep_suite,
                           transfer_from=source, seed=args.seed, batch_size=args.batch_size,
                           budget=budget or None, progress=progress)
        result.attach_sweep(sweep_data, warn=False)  # sweep() has already warned
    report = result.to_json()
    settings = {**report.pop("settings"), "model": str(path), "weights_sha256": digest,
                "dataset": dataset, "split": "test", "n": args.n, "start": args.start,
                "norm": threat.norm, "eps": threat.eps,
                "suite": args.suite if args.suite in SUITE_NAMES else suite,
                "suite_file": None if args.suite in SUITE_NAMES else args.suite,
                "budget": budget or None,
                "transfer_from": args.transfer_from, "sanity": args.sanity,
                "batch_size": args.batch_size, "device": str(device), "sweep": args.sweep,
                "sweep_suite": args.sweep_suite if args.sweep else None}
    doc = {
        "robustopt_version": __version__,
        "settings": settings,
        "seed": args.seed,
        "test_indices": {"split": "test", "start": args.start, "stop": args.start + args.n},
        **{k: v for k, v in report.items() if k != "robustopt_version"},
        "sweep": sweep_data,
    }
    is_run = path.is_dir()
    plot = None  # drawn from the numbers once they are saved (data first)
    if is_run and sweep_data is not None:
        plot = RunDir(path).plots_dir() / "eval_sweep.png"
        doc["sweep"]["plot"] = str(plot.relative_to(path))
    elif sweep_data is not None and args.out:
        plot = Path(args.out).with_suffix(".sweep.png")
        doc["sweep"]["plot"] = str(plot)
    if args.out:
        write_json_atomic(args.out, doc)
        where = args.out
    elif is_run:
        RunDir(path).write_eval(doc)
        where = str(path / "eval.json")
    else:
        where = None
    if plot is not None:
        plot_sweep(sweep_data, plot)
    if args.save_adv:
        write_npy_atomic(args.save_adv, result.x_adv.float().numpy().astype(np.float32))
    span = (f"first {args.n} examples" if args.start == 0
            else f"examples {args.start}..{args.start + args.n - 1}")
    print(f"model {args.model} on {dataset}/test, {span}")
    print(result.table())
    if sweep_data is not None:
        print("eps sweep (" + args.sweep_suite + "): " + ", ".join(
            f"{e:.4g}: {a:.2%}" for e, a in zip(sweep_data["eps"],
                                                 sweep_data["robust_accuracy"], strict=True)))
    if where:
        print(f"results written to {where}" + (f", sweep plot {plot}" if plot else ""))
    else:
        print("results not saved: pass --out FILE.json to keep them for a bare model file")
    if args.save_adv:
        print(f"adversarial examples written to {args.save_adv}")
    return 0
