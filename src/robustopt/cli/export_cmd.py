"""``robustopt export``: package a run as a release bundle (weights, model.json, a
torch.export program for third parties, README and a SHA-256 manifest)."""

from __future__ import annotations

import argparse

from ..release import MANIFEST, export_bundle


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="write a release bundle of a trained model",
                       description="Write a release bundle: model.safetensors, model.json "
                       "(architecture, dataset, normalisation, threat model, accuracy from "
                       "eval.json), model.pt2 (torch.export, for plain PyTorch), README.md and "
                       f"{MANIFEST}. robustopt.load_model(DIR) checks the manifest and never "
                       "reads model.pt2.")
    p.add_argument("model", help="run directory (or .safetensors model file)")
    p.add_argument("--out", required=True, metavar="DIR", help="bundle directory to write")
    p.add_argument("--which", choices=("last", "best"), default=None,
                   help="weights of a run directory (default: the run's default, usually best)")
    p.add_argument("--no-program", action="store_true",
                   help="skip model.pt2 (for models torch.export cannot trace)")
    p.add_argument("--force", action="store_true", help="replace an existing --out directory")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    info = export_bundle(args.model, args.out, which=args.which, force=args.force,
                         program=not args.no_program)
    threat = info.get("threat") or {}
    acc = info.get("accuracy") or {}
    print(f"exported {args.model} ({info['arch']}, {info['dataset']}, {threat.get('norm')} "
          f"eps {threat.get('eps')}) to {args.out}")
    if acc:
        print(f"accuracy from eval.json: clean {acc.get('clean_accuracy')}, robust "
              f"{acc.get('robust_accuracy')} on {acc.get('n')} points")
    else:
        print("no eval.json in the run: model.json records no accuracy "
              "(run 'robustopt evaluate' first to include it)")
    print(f"check it with: sha256sum -c {MANIFEST} (in {args.out})")
    return 0
