"""Exponential moving average of a model's weights, the model a run hands out when asked.

Averaging the iterates of adversarial training smooths the noise of the last steps and
raises held-out robust accuracy (Gowal et al. 2020, "Uncovering the limits of adversarial
training"; every top RobustBench entry uses it). The average is a second copy of the
model: the adversary still attacks the weights being trained.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class WeightAverage:
    """``avg <- d * avg + (1 - d) * w`` after every optimiser step, with a warm-up on d.

    The decay at update ``t`` (counted from 1) is ``min(decay, (1 + t) / (10 + t))`` so
    that the first updates are not dominated by the random initialisation; it depends on
    ``t`` alone, so a resumed run averages exactly as an uninterrupted one. Floating-point
    buffers (BatchNorm statistics) are averaged too, integer ones copied.
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.model = copy.deepcopy(model).requires_grad_(False).eval()

    @torch.no_grad()
    def update(self, model: nn.Module, t: int) -> None:
        d = min(self.decay, (1 + t) / (10 + t))
        for avg, cur in zip(self.model.parameters(), model.parameters(), strict=True):
            avg.lerp_(cur.detach(), 1 - d)
        for avg, cur in zip(self.model.buffers(), model.buffers(), strict=True):
            if avg.is_floating_point():
                avg.lerp_(cur, 1 - d)
            else:
                avg.copy_(cur)
