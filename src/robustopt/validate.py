"""Checks on what callers hand to attacks and models, with one-line errors.

Attacks are judged by the points they return, so garbage in (NaN pixels, a
0-255 image, labels past the last class) must be refused rather than turned
into a silently wrong accuracy.
"""

from __future__ import annotations

import torch
from torch import nn

from .errors import InputError


def check_images(x: torch.Tensor, name: str = "images") -> None:
    """``x`` must be a finite float NCHW batch with values in [0, 1]."""
    if not isinstance(x, torch.Tensor):
        raise InputError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    x = x.detach()  # only values are read; no autograd warning for inputs that require grad
    if x.dim() != 4:
        raise InputError(
            f"{name} must be a 4-D batch [N, C, H, W], got shape {tuple(x.shape)}: "
            "add a batch dimension with x[None] or reshape"
        )
    if not x.is_floating_point():
        raise InputError(
            f"{name} have dtype {x.dtype}; convert to float in [0, 1] (e.g. x.float() / 255)"
        )
    if x.numel() == 0:
        raise InputError(f"{name} are empty (shape {tuple(x.shape)})")
    # amin/amax propagate NaN and see inf, so one pass each clears a valid batch; the
    # finiteness scan (several passes) runs only to name the problem of an invalid one.
    lo, hi = float(x.amin()), float(x.amax())
    if lo >= 0 and hi <= 1:
        return
    if not torch.isfinite(x).all():
        bad = int((~torch.isfinite(x.flatten(1))).any(dim=1).nonzero()[0])
        raise InputError(f"{name} contain NaN or inf (first at example {bad}): clean the data")
    if lo < 0 or hi > 1:
        raise InputError(
            f"{name} have values in [{lo:g}, {hi:g}], outside [0, 1]: scale pixels to [0, 1] "
            "and keep normalisation inside the model"
        )


def check_labels(y: torch.Tensor, n: int, num_classes: int | None = None,
                 name: str = "labels") -> None:
    """``y`` must be ``n`` integer class indices in ``[0, num_classes)``."""
    if not isinstance(y, torch.Tensor):
        raise InputError(f"{name} must be a torch.Tensor, got {type(y).__name__}")
    if y.dim() != 1 or y.shape[0] != n:
        raise InputError(f"{name} must have shape [{n}] to match the images, got {tuple(y.shape)}")
    if y.is_floating_point() or y.dtype == torch.bool:
        raise InputError(f"{name} have dtype {y.dtype}; pass integer class indices (y.long())")
    if n and int(y.min()) < 0:
        raise InputError(f"{name} contain {int(y.min())}; class indices start at 0")
    if num_classes is not None and n and int(y.max()) >= num_classes:
        raise InputError(
            f"{name} contain class {int(y.max())} but the model has {num_classes} outputs: "
            "check the dataset matches the model"
        )


def check_logits(logits: object, n: int, where: str = "on clean inputs") -> torch.Tensor:
    """The model must return a finite [n, classes] tensor."""
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2 or logits.shape[0] != n:
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise InputError(
            f"the model must return logits of shape [{n}, classes], got {shape}: "
            "wrap it so that forward returns one [batch, classes] tensor"
        )
    if not torch.isfinite(logits).all():
        raise InputError(f"the model returned NaN or inf logits {where}: check the model")
    return logits


def forward_checked(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Run the model once on a batch, turning shape mismatches into one-line errors."""
    try:
        out = model(x)
    except (RuntimeError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise InputError(
            f"the model rejected input of shape {tuple(x.shape)} ({first[:160]}): "
            "check the channel count and image size match the model"
        ) from None
    return check_logits(out, x.shape[0])


def check_batch(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Validate images, labels and the model's output on them; return the clean logits."""
    check_images(x)
    check_labels(y, x.shape[0])
    with torch.no_grad():
        logits = forward_checked(model, x)
    check_labels(y, x.shape[0], logits.shape[1])
    return logits
