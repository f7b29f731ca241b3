"""Experiment 1: the loss along the segment from a clean point to an adversarial point.

For each test point ``x`` and each attack's point ``x_adv`` (FGSM's one step and the
point PGD returns), the loss ``L(x + t (x_adv - x))`` for ``t`` in ``[0, 1]``. Every
point of the segment lies in the threat set (the set is convex and holds both ends).

What the seed paper (and Tramèr et al.'s gradient-masking analysis) lead one to expect:
on a standard model the PGD end point reaches a much higher loss than FGSM's; on an
FGSM-trained model the FGSM segment stays low (sometimes with an early "bump": the
loss first rises and then falls along the gradient-sign direction, the signature of
gradient masking), while PGD still climbs to a high loss.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..attacks.core import eval_mode
from ..attacks.fgsm import fgsm
from ..attacks.pgd import pgd
from ..losses import LossFn, get_loss
from ..threat import ThreatModel
from .common import Result, batched_loss, check_points, make_generator

#: an interior maximum above both ends by max(BUMP_ABS, BUMP_REL * |higher end|) is a "bump"
BUMP_ABS = 0.01
BUMP_REL = 0.25


def segment_points(x: torch.Tensor, x_end: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """``x + t_k (x_end - x)`` for every ``t_k``: shape ``[T, N, C, H, W]``."""
    d = (x_end - x)[None]
    return x[None] + t.to(x.dtype).view(-1, 1, 1, 1, 1) * d


def losses_along(model: nn.Module, x: torch.Tensor, x_end: torch.Tensor, y: torch.Tensor,
                 t: torch.Tensor, loss_fn: LossFn, *, batch_size: int = 2048
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Loss and correctness at ``x + t (x_end - x)``, each ``[N, T]``; the model's mode as is."""
    pts = segment_points(x, x_end, t)  # [T, N, ...]
    k, n = pts.shape[:2]
    loss, correct = batched_loss(model, pts.reshape(k * n, *x.shape[1:]), y.repeat(k), loss_fn,
                                 batch_size=batch_size)
    return loss.view(k, n).T.contiguous(), correct.view(k, n).T.contiguous()


def _bumps(curves: np.ndarray) -> np.ndarray:
    """Per curve: an interior maximum clearly above both ends (rises, then falls)."""
    inner = curves[:, 1:-1].max(axis=1) if curves.shape[1] > 2 else curves[:, 0]
    ends = np.maximum(curves[:, 0], curves[:, -1])
    return inner > ends + np.maximum(BUMP_ABS, BUMP_REL * np.abs(ends))


def loss_along_direction(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                         threat: ThreatModel, *, points: int = 51, steps: int = 40,
                         step_size: float | None = None, restarts: int = 1,
                         loss: str = "ce", seed: int = 0, batch_size: int = 2048) -> Result:
    """Loss along ``x -> FGSM(x)`` and ``x -> PGD(x)`` at ``points`` values of ``t`` in [0, 1].

    Arrays: ``t`` [T]; ``fgsm_loss``, ``pgd_loss`` [N, T]; ``fgsm_correct``, ``pgd_correct``
    [N, T] (bool); ``labels`` [N]. ``meta["summary"]`` holds the mean end losses, the
    accuracies at the end points, how often PGD's end loss beats FGSM's, and how many
    FGSM curves have a bump (an interior maximum clearly above both ends: by
    ``max(BUMP_ABS, BUMP_REL * |higher end|)``).
    """
    check_points(x, y)
    if points < 2:
        raise ValueError(f"need at least 2 points along the segment, got {points}")
    loss_fn = get_loss(loss)
    t = torch.linspace(0.0, 1.0, points, device=x.device)
    with eval_mode(model):
        fg = fgsm(model, x, y, threat, loss=loss)
        pg = pgd(model, x, y, threat, steps=steps, step_size=step_size, restarts=restarts,
                 loss=loss, generator=make_generator(seed, x.device))
        f_loss, f_ok = losses_along(model, x, fg.x_adv, y, t, loss_fn, batch_size=batch_size)
        p_loss, p_ok = losses_along(model, x, pg.x_adv, y, t, loss_fn, batch_size=batch_size)
    arrays = {"t": t.cpu().numpy(), "fgsm_loss": f_loss.cpu().numpy(),
              "pgd_loss": p_loss.cpu().numpy(), "fgsm_correct": f_ok.cpu().numpy(),
              "pgd_correct": p_ok.cpu().numpy(), "labels": y.cpu().numpy()}
    fl, pl = arrays["fgsm_loss"], arrays["pgd_loss"]
    summary = {
        "n": int(x.shape[0]),
        "clean_loss_mean": float(fl[:, 0].mean()),
        "fgsm_end_loss_mean": float(fl[:, -1].mean()),
        "pgd_end_loss_mean": float(pl[:, -1].mean()),
        "clean_accuracy": float(arrays["fgsm_correct"][:, 0].mean()),
        "fgsm_accuracy": float(arrays["fgsm_correct"][:, -1].mean()),
        "pgd_accuracy": float(arrays["pgd_correct"][:, -1].mean()),
        "pgd_end_above_fgsm_end": float((pl[:, -1] > fl[:, -1]).mean()),
        "fgsm_max_loss_mean": float(fl.max(axis=1).mean()),
        "fgsm_bumps": int(_bumps(fl).sum()),
        "pgd_bumps": int(_bumps(pl).sum()),
    }
    meta = {"settings": {"threat": threat.to_dict(), "points": points, "steps": steps,
                         "step_size": step_size, "restarts": restarts, "loss": loss,
                         "seed": seed, "bump_abs": BUMP_ABS, "bump_rel": BUMP_REL},
            "summary": summary}
    return Result("direction", meta, arrays)
