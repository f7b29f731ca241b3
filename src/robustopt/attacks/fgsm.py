"""Fast gradient sign method (Goodfellow et al. 2015): one steepest-ascent step.

With ``random_start`` it is the "fast" variant of Wong et al. (2020), which steps
from a uniform random point; for L2 threat models the step follows the normalised
gradient (the fast gradient method).
"""

from __future__ import annotations

import torch
from torch import nn

from ..losses import LossFn, get_loss
from ..threat import ThreatModel
from .core import AttackResult, eval_mode, finalize, perturb, prepare


def fgsm(model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel, *,
         step_size: float | None = None, random_start: bool = False,
         loss: str | LossFn = "ce", target: torch.Tensor | None = None,
         generator: torch.Generator | None = None) -> AttackResult:
    """One step of size ``step_size`` (default eps; 1.25 eps from a random start)."""
    if step_size is None:
        step_size = threat.eps * (1.25 if random_start else 1.0)
    loss_fn = get_loss(loss)
    with eval_mode(model):
        prepare(model, x, y, target)
        found = perturb(model, x, y, threat, loss_fn, target, steps=1, step_size=step_size,
                        random_start=random_start, track_best=False, generator=generator)
        return finalize(model, x, y, found.x_adv, threat, loss_fn, target)
