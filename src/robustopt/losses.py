"""Per-example attack objectives, all to be *maximised* by an attack.

Untargeted losses grow as the true class loses; targeted ones grow as the
target class wins. Keeping one sign convention lets every attack use the same
ascent code. Losses are computed in float32 even when logits come from a
reduced-precision forward pass.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from .errors import InputError

LossFn = Callable[[torch.Tensor, torch.Tensor, "torch.Tensor | None"], torch.Tensor]


def _other_max(logits: torch.Tensor, cls: torch.Tensor) -> torch.Tensor:
    """Largest logit among the classes other than ``cls``."""
    masked = logits.masked_fill(F.one_hot(cls, logits.shape[1]).bool(), float("-inf"))
    return masked.amax(dim=1)


def cross_entropy(logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None = None
                  ) -> torch.Tensor:
    """CE(y) untargeted; -CE(target) targeted."""
    logits = logits.float()
    if target is None:
        return F.cross_entropy(logits, y, reduction="none")
    return -F.cross_entropy(logits, target, reduction="none")


def margin(logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None = None
           ) -> torch.Tensor:
    """Carlini–Wagner margin: ``max_{j!=y} z_j - z_y``; positive means misclassified.

    Targeted: ``z_t - max_{j!=t} z_j``; positive means the target wins. Unlike
    cross-entropy it does not vanish when the softmax saturates.
    """
    logits = logits.float()
    if target is None:
        return _other_max(logits, y) - logits.gather(1, y[:, None]).squeeze(1)
    return logits.gather(1, target[:, None]).squeeze(1) - _other_max(logits, target)


def dlr(logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None = None
        ) -> torch.Tensor:
    """Difference-of-logits-ratio loss of Croce & Hein (2020), invariant to logit scale.

    Untargeted: ``-(z_y - max_{j!=y} z_j) / (z_pi1 - z_pi3)``. Targeted:
    ``-(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2)``; needs >= 4 classes.
    """
    logits = logits.float()
    if logits.shape[1] < (4 if target is not None else 3):
        raise InputError("the DLR loss needs at least 3 classes (4 targeted): use loss='margin'")
    top = logits.sort(dim=1, descending=True).values
    z_y = logits.gather(1, y[:, None]).squeeze(1)
    if target is None:
        return -(z_y - _other_max(logits, y)) / (top[:, 0] - top[:, 2] + 1e-12)
    z_t = logits.gather(1, target[:, None]).squeeze(1)
    return -(z_y - z_t) / (top[:, 0] - 0.5 * (top[:, 2] + top[:, 3]) + 1e-12)


LOSSES: dict[str, LossFn] = {"ce": cross_entropy, "margin": margin, "cw": margin, "dlr": dlr}


def get_loss(loss: str | LossFn) -> LossFn:
    """Resolve a loss by name (``ce``, ``margin``/``cw``, ``dlr``) or pass a callable through."""
    if callable(loss):
        return loss
    try:
        return LOSSES[loss.lower()]
    except KeyError:
        raise InputError(f"unknown loss {loss!r}: choose one of ce, margin, dlr") from None
