"""``robustopt attack``: attack a saved model on a dataset split; print clean and adv. accuracy."""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from ..atomic import write_npy_atomic
from ..attacks import fgsm, pgd, transfer
from ..data import load_dataset
from ..errors import RobustOptError
from ..modelfile import build_from_record, load_model, read_model_file
from ..train.loop import pick_device
from .common import (
    add_data_flags,
    add_device_flag,
    dataset_and_threat,
    eps_arg,
    positive_int,
    seeded_generator,
)

ATTACKS = ("pgd", "fgsm", "fgsm-rs")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("attack", help="attack a saved model and print its accuracy",
                       description="Attack a model file or run directory on a dataset split.")
    p.add_argument("model", help="run directory or .safetensors model file")
    p.add_argument("--dataset", help="dataset name (default: the one the model was trained on)")
    p.add_argument("--split", default="test", choices=("train", "test"))
    p.add_argument("--n", type=positive_int, default=1000, help="first N examples (default 1000)")
    p.add_argument("--eps", type=eps_arg, help="radius, e.g. 0.3 or 8/255 (default: the model's)")
    p.add_argument("--norm", help="linf or l2 (default: the model's threat model, else linf)")
    p.add_argument("--attack", default="pgd", choices=ATTACKS)
    p.add_argument("--steps", type=positive_int, default=40)
    p.add_argument("--step-size", type=eps_arg, default=None, help="default 2.5*eps/steps")
    p.add_argument("--restarts", type=positive_int, default=1)
    p.add_argument("--loss", default="ce", choices=("ce", "margin", "dlr"))
    p.add_argument("--target", type=int, default=None,
                   help="targeted attack towards this class (default: untargeted)")
    p.add_argument("--transfer-from", metavar="MODEL",
                   help="craft the attack on this model, score it on MODEL")
    p.add_argument("--batch-size", type=positive_int, default=500)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--save-adv", metavar="FILE", help="write the adversarial batch as .npy")
    add_data_flags(p)
    add_device_flag(p)
    p.set_defaults(run=run)


def _run_attack(args: argparse.Namespace, model, source, x, y, threat, gen):
    target = None if args.target is None else torch.full_like(y, args.target)
    if args.attack == "pgd":
        fn, kw = pgd, dict(steps=args.steps, step_size=args.step_size, restarts=args.restarts,
                           loss=args.loss, target=target, generator=gen)
    else:
        fn, kw = fgsm, dict(random_start=args.attack == "fgsm-rs", step_size=args.step_size,
                            loss=args.loss, target=target, generator=gen)
    if source is not None:
        return transfer(source, model, x, y, threat, attack=fn, **kw)
    return fn(model, x, y, threat, **kw)


def run(args: argparse.Namespace) -> int:
    device = pick_device(args.device)
    record, tensors = read_model_file(args.model)
    model = build_from_record(record, tensors, args.model, device)
    del tensors
    source = load_model(args.transfer_from, device=device) if args.transfer_from else None
    dataset, threat = dataset_and_threat(args, record)
    data = load_dataset(dataset, args.split, args.data_dir)
    if args.n > len(data.labels):
        raise RobustOptError(f"--n {args.n} exceeds the {len(data.labels)} examples of "
                             f"{dataset}/{args.split}: use --n {len(data.labels)} or less")
    if args.target is not None and not 0 <= args.target < len(data.classes):
        raise RobustOptError(f"--target {args.target} is not a class of {dataset} "
                             f"(0..{len(data.classes) - 1})")
    x_all, y_all = data.tensors(device=device, n=args.n)
    gen = seeded_generator(args.seed, device)
    clean = correct = 0
    advs = []
    start = time.perf_counter()
    for i in range(0, args.n, args.batch_size):
        x, y = x_all[i: i + args.batch_size], y_all[i: i + args.batch_size]
        with torch.no_grad():
            clean += int((model(x).argmax(1) == y).sum())
        result = _run_attack(args, model, source, x, y, threat, gen)
        correct += int(result.correct.sum())
        if args.save_adv:
            advs.append(result.x_adv.cpu().numpy().astype(np.float32))
    elapsed = time.perf_counter() - start
    how = (f"{args.attack.upper()}" + (f"-{args.steps}" if args.attack == "pgd" else "")
           + f" ({args.loss}" + (f", {args.restarts} restarts" if args.restarts > 1 else "")
           + (f", targeted at class {args.target}" if args.target is not None else "")
           + (f", transferred from {args.transfer_from}" if source is not None else "") + ")")
    print(f"model {args.model} on {dataset}/{args.split}, first {args.n} examples, "
          f"{threat.norm} eps {threat.eps:.4g}")
    print(f"clean accuracy      {clean / args.n:.2%}")
    print(f"adversarial accuracy {correct / args.n:.2%} under {how} in {elapsed:.1f} s")
    if args.save_adv:
        write_npy_atomic(args.save_adv, np.concatenate(advs))
        print(f"wrote the adversarial examples to {args.save_adv}")
    return 0
