"""The interchangeable inner maximisation of the training loop.

Each adversary maps a clean batch to the points the outer minimisation trains on,
through the shared attack core (no separate attack code for training). Points are
not best-tracked: the training path wants the cheapest faithful maximiser.
"""

from __future__ import annotations

import torch
from torch import nn

from ..attacks.core import eval_mode, perturb
from ..losses import cross_entropy
from ..threat import make_threat
from .config import TrainConfig


def adversarial_batch(cfg: TrainConfig, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                      eps: float, generator: torch.Generator,
                      autocast: torch.dtype | None) -> torch.Tensor:
    """The training input for this step: ``x`` itself or its approximate worst case."""
    if cfg.adversary == "none" or eps == 0:
        return x
    threat = make_threat(cfg.norm, eps)
    step = cfg.step_size() * eps / cfg.eps  # the step shrinks with eps during a ramp
    steps = cfg.attack_steps if cfg.adversary == "pgd" else 1
    with eval_mode(model):
        found = perturb(model, x, y, threat, cross_entropy, steps=steps, step_size=step,
                        random_start=cfg.adversary != "fgsm", track_best=False,
                        generator=generator, autocast=autocast)
    return found.x_adv.detach()
