"""Transfer attack: craft on a source model, score on the target.

Needs no gradient of the target at all, so it sees through gradient masking that
a white-box attack on the target would be fooled by.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ..losses import get_loss
from ..threat import ThreatModel
from .core import AttackResult, eval_mode, finalize, prepare
from .pgd import pgd


def transfer(source: nn.Module, target_model: nn.Module, x: torch.Tensor, y: torch.Tensor,
             threat: ThreatModel, *, attack: Callable[..., AttackResult] = pgd,
             **attack_kwargs) -> AttackResult:
    """Run ``attack`` on ``source`` and report how its points fare on ``target_model``."""
    crafted = attack(source, x, y, threat, **attack_kwargs)
    target = attack_kwargs.get("target")
    with eval_mode(target_model):
        prepare(target_model, x, y, target)
        return finalize(target_model, x, y, crafted.x_adv, threat,
                        get_loss(attack_kwargs.get("loss", "ce")), target)
