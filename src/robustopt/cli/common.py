"""Flags shared by several sub-commands and the small helpers behind them."""

from __future__ import annotations

import argparse

import torch

from ..errors import RobustOptError
from ..threat import parse_eps


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
