"""``robustopt challenge``: verify, submit and rank adversarial examples against a release
bundle (``verify``, ``submit``, ``board``)."""

from __future__ import annotations

import argparse

from ..challenge import (
    DEFAULT_LEDGER,
    append_entry,
    check_names,
    make_entry,
    read_ledger,
    render_board,
    verify_submission,
)
from ..train.loop import pick_device
from .common import add_data_flags, add_device_flag, positive_int


def _submission_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, metavar="BUNDLE",
                   help="release bundle directory (from 'robustopt export')")
    p.add_argument("--adv", required=True, metavar="FILE",
                   help=".npy float32 [N, C, H, W] in [0, 1] (or .npz with x_adv), aligned "
                   "with the first N test points")
    p.add_argument("--batch-size", type=positive_int, default=500)
    add_data_flags(p)
    add_device_flag(p)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("challenge", help="verify, submit and rank attacks on a released model",
                       description="The open attack challenge on a release bundle.")
    inner = p.add_subparsers(dest="challenge_command", metavar="{verify,submit,board}",
                             required=True, parser_class=type(p))
    v = inner.add_parser("verify", help="check a submission and print the model's accuracy",
                         description="Check a submission (format, shape, [0, 1], eps-ball) "
                         "before any model pass, then print the model's accuracy on it.")
    _submission_flags(v)
    v.set_defaults(run=run_verify)
    s = inner.add_parser("submit", help="verify a submission and add it to the ledger",
                         description="Verify a submission and append it to the JSON ledger "
                         "(locked, atomic; a duplicate submission is refused).")
    _submission_flags(s)
    s.add_argument("--name", required=True, help="who attacked")
    s.add_argument("--attack", required=True, help="what the attack was, e.g. 'PGD-100, 50 "
                   "restarts'")
    s.add_argument("--ledger", default=DEFAULT_LEDGER,
                   help=f"ledger file (default: {DEFAULT_LEDGER})")
    s.set_defaults(run=run_submit)
    b = inner.add_parser("board", help="print the leaderboard as Markdown",
                         description="Render the ledger as Markdown tables, lowest accuracy "
                         "first.")
    b.add_argument("--ledger", default=DEFAULT_LEDGER,
                   help=f"ledger file (default: {DEFAULT_LEDGER})")
    b.set_defaults(run=run_board)


def _verify(args: argparse.Namespace):
    device = pick_device(args.device)
    result = verify_submission(args.model, args.adv, data_dir=args.data_dir,
                               batch_size=args.batch_size, device=device)
    t = result.threat
    print(f"accepted {args.adv}: {result.n} examples of {result.dataset}/{result.split}, "
          f"{t['norm']} eps {t['eps']:.4g} (largest distance {result.max_distance:.6g})")
    print(f"accuracy {result.accuracy:.2%} ({result.correct}/{result.n}); clean accuracy on the "
          f"same points {result.clean_accuracy:.2%}")
    print(f"sha256 {result.sha256}")
    return result


def run_verify(args: argparse.Namespace) -> int:
    _verify(args)
    return 0


def run_submit(args: argparse.Namespace) -> int:
    check_names(args.name, args.attack)  # refuse a bad name before the model runs
    result = _verify(args)
    entry = make_entry(result, args.name, args.attack, args.model, args.adv)
    count = append_entry(args.ledger, entry)
    print(f"recorded in {args.ledger} ({count} entries)")
    return 0


def run_board(args: argparse.Namespace) -> int:
    print(render_board(read_ledger(args.ledger)), end="")
    return 0
