"""Flags shared by several sub-commands and the small helpers behind them."""

from __future__ import annotations

import argparse

import torch

from ..errors import RobustOptError
from ..threat import ThreatModel, make_threat, parse_eps


def eps_arg(text: str) -> float:
    """argparse type for eps: a number or a fraction such as 8/255."""
    try:
        return parse_eps(text)
    except RobustOptError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def add_data_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", default=None,
                   help="dataset directory (default: $ROBUSTOPT_DATA or the user cache)")


def add_device_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a number >= 1, got {value}")
    return value


def seeded_generator(seed: int, device: torch.device) -> torch.Generator:
    return torch.Generator(device).manual_seed(seed)


def dataset_and_threat(args: argparse.Namespace, record: dict) -> tuple[str, ThreatModel]:
    """The dataset and threat model to attack with: flags first, else the model file's."""
    dataset = args.dataset or record.get("dataset")
    if not dataset:
        raise RobustOptError(f"{args.model} does not say its dataset: pass --dataset")
    saved = record.get("threat") or {}
    eps = args.eps if args.eps is not None else saved.get("eps")
    if eps is None:
        raise RobustOptError("no eps given and the model file has no threat model: pass --eps")
    return dataset, make_threat(args.norm or saved.get("norm", "linf"), eps)
