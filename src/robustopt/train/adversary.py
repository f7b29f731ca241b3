"""The interchangeable inner maximisation of the training loop.

Each adversary maps a clean batch to the points the outer minimisation trains on,
through the shared attack core (no separate attack code for training). Points are
not best-tracked: the training path wants the cheapest faithful maximiser.
:func:`training_loss` is the matching outer objective: cross-entropy on the adversarial
points (Madry et al.), or TRADES (Zhang et al. 2019): cross-entropy on the clean points
plus ``beta`` times KL(f(x) || f(x_adv)), with x_adv maximising that KL (as the
authors' code: ``KLDivLoss(log_softmax(f(x_adv)), softmax(f(x)))``); the search starts
uniformly in the ball like every PGD here, where the authors start at x + 0.001 N(0, 1).
"""

from __future__ import annotations

from contextlib import nullcontext

import torch
import torch.nn.functional as F
from torch import nn

from ..attacks.core import _autocast, eval_mode, perturb
from ..attacks.smooth import smooth_backward
from ..losses import cross_entropy
from ..threat import make_threat
from .config import ITERATIVE_ADVERSARIES, TrainConfig


def search_model(cfg: TrainConfig, model: nn.Module) -> nn.Module:
    """The network the adversary takes gradients through: ``model`` itself, or (with
    ``attack_smooth``) its backward-smoothed copy sharing the same weights, so the
    training attack is not stopped by the ReLU thresholds that mask gradients."""
    return smooth_backward(model, cfg.attack_smooth) if cfg.attack_smooth > 0 else model


def adversarial_batch(cfg: TrainConfig, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                      eps: float, generator: torch.Generator,
                      autocast: torch.dtype | None, search: nn.Module | None = None
                      ) -> torch.Tensor:
    """The training input for this step: ``x`` itself or its approximate worst case.

    ``search``: the :func:`search_model` of ``model`` (default ``model``). With a smoothed
    search, the first ``attack_smooth_share`` of the batch is searched through it and the
    rest through ``model`` itself."""
    if cfg.adversary == "none" or eps == 0:
        return x
    search = model if search is None else search
    threat = make_threat(cfg.norm, eps)
    step = cfg.step_size() * eps / cfg.train_radius()  # it shrinks during a ramp
    steps = cfg.attack_steps if cfg.adversary in ITERATIVE_ADVERSARIES else 1
    n = x.shape[0]
    k = n if search is model else round(cfg.attack_smooth_share * n)
    found = []
    with eval_mode(model), (eval_mode(search) if search is not model else nullcontext()):
        for net, rows in ((search, slice(0, k)), (model, slice(k, n))):
            xs, ys = x[rows], y[rows]
            if xs.shape[0] == 0:
                continue
            loss_fn = (_kl_from(model, xs, autocast) if cfg.adversary == "trades"
                       else cross_entropy)
            found.append(perturb(net, xs, ys, threat, loss_fn, steps=steps, step_size=step,
                                 random_start=cfg.adversary != "fgsm", track_best=False,
                                 generator=generator, autocast=autocast).x_adv.detach())
    return found[0] if len(found) == 1 else torch.cat(found)


def _kl(log_p: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """Per-example KL(p || softmax(logits)) for log-probabilities ``log_p``."""
    return (log_p.exp() * (log_p - F.log_softmax(logits.float(), dim=1))).sum(dim=1)


def _kl_from(model: nn.Module, x: torch.Tensor, autocast: torch.dtype | None):
    """Per-example KL(f(x) || f(x')) as a loss of the logits at x' (TRADES' inner objective)."""
    with torch.no_grad(), _autocast(x, autocast):
        log_p = F.log_softmax(model(x).float(), dim=1)

    def kl(logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None = None
           ) -> torch.Tensor:
        return _kl(log_p, logits)

    return kl


def training_loss(cfg: TrainConfig, model: nn.Module, x: torch.Tensor, x_adv: torch.Tensor,
                  y: torch.Tensor, autocast: torch.dtype | None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """The outer objective on this batch (model in train mode) and the logits at ``x_adv``."""
    with _autocast(x, autocast):
        logits_adv = model(x_adv)
        logits_clean = model(x) if cfg.adversary == "trades" else None
    if logits_clean is None:
        return F.cross_entropy(logits_adv.float(), y), logits_adv
    kl = _kl(F.log_softmax(logits_clean.float(), dim=1), logits_adv).mean()
    return F.cross_entropy(logits_clean.float(), y) + cfg.trades_beta * kl, logits_adv
