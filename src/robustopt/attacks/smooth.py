"""Backward smoothing: gradient attacks through ReLUs whose backward pass is a sigmoid.

Adversarially trained ReLU networks, on MNIST above all, learn thresholds: a first-layer
unit stays off for every pixel change an attack tries, so its gradient is exactly zero
and first-order attacks stall while a black-box search (Square) still breaks the point.
Here the forward pass is the model's own, bit for bit, but each ``nn.ReLU`` passes back
the gradient of ``softplus(beta * z) / beta``, i.e. ``sigmoid(beta * z)``, instead of the
step function (a BPDA-style surrogate, Athalye et al. 2018). Units just below their
threshold now say which way to move. Every point found is still judged by the real
model (:func:`~robustopt.attacks.core.finalize` via :func:`transfer`), so the smoothing
can only make an attack stronger, never overstate one.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable

import torch
from torch import nn

from ..errors import InputError
from ..threat import ThreatModel
from .apgd import apgd
from .core import AttackResult
from .transfer import transfer


class _SigmoidBackwardReLU(torch.autograd.Function):
    """relu(z) forward, ``grad * sigmoid(beta * z)`` backward."""

    @staticmethod
    def forward(ctx, z: torch.Tensor, beta: float) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(z)
        ctx.beta = beta
        return z.relu()

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        (z,) = ctx.saved_tensors
        return grad * torch.sigmoid(ctx.beta * z), None


class SmoothBackwardReLU(nn.Module):
    """A ReLU whose backward pass is ``sigmoid(beta * z)``: the forward is unchanged."""

    def __init__(self, beta: float) -> None:
        super().__init__()
        self.beta = float(beta)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return _SigmoidBackwardReLU.apply(z, self.beta)

    def extra_repr(self) -> str:
        return f"beta={self.beta:g}"


def check_beta(beta: object) -> float:
    """``beta`` as a float if it is a finite number > 0; else a one-line InputError."""
    if not (isinstance(beta, (int, float)) and not isinstance(beta, bool)
            and 0 < beta < math.inf):
        raise InputError(f"backward smoothing needs a finite sharpness beta > 0 (e.g. 15), "
                         f"got {beta!r}")
    return float(beta)


def smooth_backward(model: nn.Module, beta: float) -> nn.Module:
    """A copy of ``model`` that shares its parameters and buffers, with every ``nn.ReLU``
    replaced by :class:`SmoothBackwardReLU`: same outputs, smoothed input gradients.

    Only ``nn.ReLU`` modules are replaced (``F.relu`` calls inside a ``forward`` are
    invisible to it), so a model without any raises an :class:`InputError`.
    """
    beta = check_beta(beta)
    shared = {id(t): t for t in (*model.parameters(), *model.buffers())}
    try:
        surrogate = copy.deepcopy(model, memo=shared)
    except (TypeError, RuntimeError, copy.Error) as err:
        raise InputError(f"backward smoothing cannot copy this model ({err}): attack it "
                         "without smoothing") from None
    replaced = 0
    for parent in surrogate.modules():
        for name, child in parent.named_children():
            if isinstance(child, nn.ReLU):
                setattr(parent, name, SmoothBackwardReLU(beta))
                replaced += 1
    if not replaced:
        raise InputError("backward smoothing found no nn.ReLU module in the model (F.relu "
                         "calls cannot be replaced): attack it without smoothing")
    return surrogate


def smoothed(model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel, *,
             beta: float = 15.0, attack: Callable[..., AttackResult] = apgd,
             **attack_kwargs) -> AttackResult:
    """Run the gradient ``attack`` (default APGD) through :func:`smooth_backward` of
    ``model`` and verify its points on ``model`` itself.

    On the mnist-best seed-2 model, APGD-CE with 5 restarts at ``beta`` 10 or 15 broke
    9-11 of the 17 test points that only a Square-10000 re-check had broken (plain APGD-CE
    2-3), in seconds (``benchmarks/hard_points.py``,
    ``results/recheck/mnist-best-seed2-hard-points-smooth.txt``).
    """
    return transfer(smooth_backward(model, beta), model, x, y, threat, attack=attack,
                    **attack_kwargs)
