"""Per-channel input normalisation as the model's first layer, and dataset statistics.

Normalisation lives inside the model so that every epsilon, clip and projection in
robustopt is in pixel units of [0, 1]; a bound-propagation verifier sees it as a
fixed per-channel affine map (``mean`` and ``std`` buffers shaped [1, C, 1, 1]).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from types import MappingProxyType

import torch
from torch import Tensor, nn

from robustopt.errors import InputError, RobustOptError

__all__ = ["DATASET_STATS", "Normalize", "check_stats", "dataset_stats"]

# Train-split pixel mean/std of x/255. MNIST and Fashion-MNIST were recomputed from the
# canonical files; CIFAR-10 uses the original dataset's values (the 0.2023/0.1994/0.2010
# std often seen in code is the mean per-image std, not the dataset std).
DATASET_STATS: Mapping[str, tuple[tuple[float, ...], tuple[float, ...]]] = MappingProxyType(
    {
        "mnist": ((0.1307,), (0.3081,)),
        "fashion-mnist": ((0.2860,), (0.3530,)),
        "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    }
)


def dataset_stats(name: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Return ``(mean, std)`` for a known dataset, so callers never retype the numbers."""
    try:
        return DATASET_STATS[name]
    except (KeyError, TypeError):
        known = ", ".join(DATASET_STATS)
        raise RobustOptError(
            f"no normalisation statistics for dataset {name!r}; use one of {known} "
            "or pass mean=/std= explicitly"
        ) from None


def check_stats(
    mean: Sequence[float], std: Sequence[float]
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Validate mean/std (same non-zero length, finite, std > 0) and return them as floats."""
    out = []
    for label, values in (("mean", mean), ("std", std)):
        if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__"):
            raise RobustOptError(
                f"{label} must be a sequence of per-channel floats, got {values!r}; "
                "pass e.g. mean=(0.1307,), std=(0.3081,)"
            )
        try:
            floats = tuple(float(v) for v in values)
        except (TypeError, ValueError):
            raise RobustOptError(
                f"{label} must contain only numbers, got {values!r}; pass per-channel floats"
            ) from None
        if not floats or not all(math.isfinite(v) for v in floats):
            raise RobustOptError(
                f"{label} must be a non-empty sequence of finite floats, got {values!r}"
            )
        out.append(floats)
    m, s = out
    if len(m) != len(s):
        raise RobustOptError(
            f"mean has {len(m)} channel(s) but std has {len(s)}; give one value per channel to both"
        )
    if any(v <= 0 for v in s):
        raise RobustOptError(f"std must be positive in every channel, got {s}; fix the std values")
    return m, s


class Normalize(nn.Module):
    """``(x - mean) / std`` per channel: keeps epsilons in pixel units of [0, 1].

    The statistics are non-persistent buffers: they follow ``.to(device)`` but are not
    part of the state dict, because the model spec (``robustopt_spec``) is their single
    source of truth in a saved file.
    """

    mean: Tensor
    std: Tensor

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        m, s = check_stats(mean, std)
        self.register_buffer(
            "mean", torch.tensor(m, dtype=torch.float32).view(1, -1, 1, 1), persistent=False
        )
        self.register_buffer(
            "std", torch.tensor(s, dtype=torch.float32).view(1, -1, 1, 1), persistent=False
        )

    def forward(self, x: Tensor) -> Tensor:
        # Skipped for non-tensors (torch.fx proxies) so the module stays symbolically traceable.
        channels = self.mean.shape[1]
        if isinstance(x, Tensor) and (x.dim() != 4 or (channels != 1 and x.shape[1] != channels)):
            raise InputError(
                f"model expects NCHW images with {channels} channel(s), got shape "
                f"{tuple(x.shape)}; pass a float batch shaped [N, {channels}, H, W] in [0, 1]"
            )
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)

    def extra_repr(self) -> str:
        m = ", ".join(f"{v:.4g}" for v in self.mean.flatten().tolist())
        s = ", ".join(f"{v:.4g}" for v in self.std.flatten().tolist())
        return f"mean=({m}), std=({s})"
