"""Projected gradient descent (Madry et al. 2018), the workhorse first-order attack."""

from __future__ import annotations

import torch
from torch import nn

from ..errors import InputError
from ..losses import LossFn, get_loss
from ..threat import ThreatModel
from .core import AttackResult, default_step_size, eval_mode, finalize, perturb, prepare


def pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel, *,
        steps: int = 40, step_size: float | None = None, restarts: int = 1,
        loss: str | LossFn = "ce", target: torch.Tensor | None = None,
        random_start: bool = True, stop_on_success: bool = False,
        generator: torch.Generator | None = None, autocast: torch.dtype | None = None,
        max_batch: int = 8192) -> AttackResult:
    """PGD from ``restarts`` random starts, keeping each example's best point.

    ``loss`` is ``"ce"`` (cross-entropy), ``"margin"`` (Carlini–Wagner) or ``"dlr"``;
    give ``target`` (class per example) for a targeted attack. ``step_size`` defaults to
    ``2.5 * eps / steps``. Every iterate is a candidate (best-point tracking), so more
    steps or restarts never give a weaker result. ``autocast`` (e.g. ``torch.bfloat16``)
    speeds up the search only; the returned verdict always comes from a float32 pass.
    """
    if steps < 1:
        raise InputError(f"PGD needs at least 1 step, got steps={steps}")
    if step_size is None:
        step_size = default_step_size(threat, steps)
    if step_size < 0:
        raise InputError(f"step size must be >= 0, got {step_size}")
    loss_fn = get_loss(loss)
    with eval_mode(model):
        prepare(model, x, y, target)
        found = perturb(model, x, y, threat, loss_fn, target, steps=steps, step_size=step_size,
                        restarts=restarts, random_start=random_start,
                        stop_on_success=stop_on_success, generator=generator,
                        autocast=autocast, max_batch=max_batch)
        return finalize(model, x, y, found.x_adv, threat, loss_fn, target, found.logits)
