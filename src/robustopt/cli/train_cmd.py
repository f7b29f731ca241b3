"""``robustopt train``: one flag per TrainConfig field, on top of an optional preset."""

from __future__ import annotations

import argparse
import dataclasses
import json
import typing

from ..errors import RobustOptError
from ..train import PRESETS, TrainConfig, preset, train
from ..train.restore import restore_weights
from .common import eps_arg
from .progress import Progress

_HELP = {
    "eps": "perturbation radius in pixel units, e.g. 0.3 or 8/255",
    "train_eps": "radius of the training adversary, if not eps (e.g. 0.33 to train a "
                 "margin beyond a tested 0.3); eps stays the threat of the held-out checks "
                 "and the saved model",
    "adversary": "none | fgsm | fgsm-rs | pgd | trades",
    "trades_beta": "trades: weight of the KL term (6.0, as Zhang et al.)",
    "model_kwargs": "model arguments as JSON, e.g. '{\"width\": 2}'",
    "milestones": "comma-separated fractions of training where the lr drops",
    "precision": "fp32 | bf16 (autocast; the verdicts of evaluation stay float32)",
    "attack_smooth": "take the adversary's gradients through ReLUs whose backward is "
                     "sigmoid(beta z) with this beta (e.g. 15), so ReLU thresholds cannot "
                     "hide the worst case from it; 0: off",
    "attack_smooth_share": "with --attack-smooth: the fraction of each batch searched "
                           "through smoothed gradients, the rest through the model's own "
                           "(1: all)",
    "ema_decay": "keep an exponential moving average of the weights with this decay per "
                 "step (e.g. 0.999) and save and check it instead of the raw weights; 0: off",
}


def _kwargs_arg(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        raise argparse.ArgumentTypeError(f"--model-kwargs must be JSON, got {text!r}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("--model-kwargs must be a JSON object")
    return value


def _fractions(text: str) -> tuple:
    try:
        return tuple(float(t) for t in text.split(",") if t.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers like 0.5,0.75, got {text!r}") from None


def _field_type(f: dataclasses.Field) -> dict:
    hint = typing.get_type_hints(TrainConfig)[f.name]
    args = set(typing.get_args(hint)) or {hint}
    if f.name in ("eps", "train_eps", "attack_step_size"):
        return {"type": eps_arg}
    if f.name == "model_kwargs":
        return {"type": _kwargs_arg}
    if f.name == "milestones":
        return {"type": _fractions}
    if bool in args:
        return {"action": argparse.BooleanOptionalAction}
    for t in (int, float, str):
        if t in args:
            return {"type": t}
    return {"type": str}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a model (standard or adversarial)",
                       description="Train into a run directory. Start from --preset and "
                       "override any field with its flag.")
    p.add_argument("--out", help="run directory to create (required unless --resume)")
    p.add_argument("--preset", choices=sorted(PRESETS), help="a named recipe")
    p.add_argument("--resume", metavar="RUN", help="continue the run in RUN from its checkpoint")
    p.add_argument("--force", action="store_true", help="replace an existing run directory")
    p.add_argument("--restore", metavar="RUN",
                   help="regenerate the weight files a kept run lacks: retrain it from its "
                   "config.json and move the weights in only if the retrain reproduces its "
                   "metrics (and any recorded weights digests) exactly")
    for f in dataclasses.fields(TrainConfig):
        p.add_argument("--" + f.name.replace("_", "-"), dest=f.name, default=None,
                       help=_HELP.get(f.name), **_field_type(f))
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    progress = Progress()
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)
             if getattr(args, f.name) is not None}
    if args.restore:
        if given or args.preset or args.resume or args.out or args.force:
            raise RobustOptError("--restore retrains a run with its saved settings: "
                                 "drop the other training flags")
        restored = restore_weights(args.restore, progress=progress)
        print(f"restored the weights of {restored.run_dir}: the retrain matched all "
              f"{restored.epochs_checked} epoch(s) of its metrics and "
              f"{restored.digests_checked} recorded weights digest(s)"
              + ("" if restored.digests_checked else
                 " (the run recorded none: matched by its metrics alone)"))
        return 0
    if args.resume:
        if given or args.preset:
            raise RobustOptError("--resume continues a run with its saved settings: "
                                 "drop the other training flags")
        result = train(None, args.resume, resume=True, progress=progress)
    else:
        if not args.out:
            raise RobustOptError("say where to write the run: --out runs/NAME")
        cfg = preset(args.preset, **given) if args.preset else TrainConfig.from_dict(given)
        result = train(cfg, args.out, force=args.force, progress=progress)
    last = result.metrics[-1] if result.metrics else {}
    print(f"run {result.run_dir}: {result.stopped} after {len(result.metrics)} epoch(s)"
          + (f", held-out PGD accuracy {last['heldout_pgd_acc']:.2%}"
             if "heldout_pgd_acc" in last else ""))
    print(f"load_model('{result.run_dir}') returns the {result.default_weights} weights "
          "(by held-out PGD accuracy; clean accuracy for standard training)")
    return 0
