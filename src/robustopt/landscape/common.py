"""Shared plumbing of the landscape experiments: the result value, batched losses, files.

Every experiment returns a :class:`Result`: a JSON-able ``meta`` dict (settings and the
summary numbers a reader wants) plus named NumPy ``arrays``. :meth:`Result.save` writes
``STEM.json`` and ``STEM.npz`` (no pickle) atomically; the figures in :mod:`.plots` are
drawn from a (possibly re-loaded) ``Result``, never from live tensors.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .. import __version__
from ..atomic import write_atomic, write_json_atomic
from ..errors import InputError, RobustOptError
from ..losses import LossFn

Progress = Callable[[str, dict], None]


@dataclass
class Result:
    """Numbers of one landscape experiment: ``meta`` (JSON) and ``arrays`` (NPZ)."""

    kind: str
    meta: dict
    arrays: dict[str, np.ndarray] = field(default_factory=dict)

    def to_json(self) -> dict:
        """``meta`` plus the array shapes, as written to ``STEM.json``."""
        return {"robustopt_version": __version__, "kind": self.kind, **self.meta,
                "arrays": {k: list(np.shape(v)) for k, v in self.arrays.items()}}

    def save(self, stem: str | Path) -> list[Path]:
        """Write ``STEM.json`` (and ``STEM.npz`` if there are arrays); return the paths."""
        stem = Path(stem)
        stem.parent.mkdir(parents=True, exist_ok=True)
        json_path = stem.with_name(stem.name + ".json")
        write_json_atomic(json_path, self.to_json())
        paths = [json_path]
        if self.arrays:
            npz_path = stem.with_name(stem.name + ".npz")
            write_npz_atomic(npz_path, self.arrays)
            paths.append(npz_path)
        return paths

    @classmethod
    def load(cls, stem: str | Path) -> Result:
        """Read a result written by :meth:`save` (``STEM`` without the suffix)."""
        stem = Path(stem)
        json_path = stem.with_name(stem.name + ".json")
        try:
            meta = json.loads(json_path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise RobustOptError(f"cannot read {json_path} ({err}); re-run the experiment"
                                 ) from None
        meta.pop("robustopt_version", None)
        meta.pop("arrays", None)
        kind = meta.pop("kind", "unknown")
        arrays: dict[str, np.ndarray] = {}
        npz_path = stem.with_name(stem.name + ".npz")
        if npz_path.is_file():
            with np.load(npz_path, allow_pickle=False) as data:
                arrays = {k: data[k] for k in data.files}
        return cls(kind, meta, arrays)


def write_npz_atomic(path: str | Path, arrays: dict[str, np.ndarray]) -> None:
    """Save arrays as an uncompressed ``.npz`` (no object arrays, so no pickle)."""
    clean = {k: np.asarray(v) for k, v in arrays.items()}
    for k, v in clean.items():
        if v.dtype == object:
            raise TypeError(f"array {k!r} has dtype object; it would need pickle")

    def _write(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            np.savez(fh, **clean)

    write_atomic(path, _write)


def batched_loss(model: nn.Module, points: torch.Tensor, y: torch.Tensor, loss_fn: LossFn,
                 *, batch_size: int = 2048) -> tuple[torch.Tensor, torch.Tensor]:
    """Float32 per-point loss and correctness (argmax == y) in batches, without gradients.

    The caller decides the model's mode (use :func:`robustopt.attacks.core.eval_mode`).
    """
    losses, correct = [], []
    with torch.no_grad():
        for i in range(0, points.shape[0], batch_size):
            logits = model(points[i:i + batch_size]).float()
            yi = y[i:i + batch_size]
            losses.append(loss_fn(logits, yi, None).float())
            correct.append(logits.argmax(1) == yi)
    return torch.cat(losses), torch.cat(correct)


def angle_degrees(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-row angle in degrees between ``a[i]`` and ``b[i]`` (flattened); NaN for a zero row."""
    a = a.flatten(1).double()
    b = b.flatten(1).double()
    denom = a.norm(dim=1) * b.norm(dim=1)
    cos = (a * b).sum(dim=1) / denom
    cos = torch.where(denom > 0, cos.clamp(-1.0, 1.0), torch.full_like(cos, math.nan))
    return torch.rad2deg(torch.arccos(cos))


def make_generator(seed: int, device: torch.device | str) -> torch.Generator:
    return torch.Generator(device=torch.device(device)).manual_seed(int(seed))


def check_points(x: torch.Tensor, y: torch.Tensor) -> None:
    """The test points of an experiment: a non-empty NCHW batch with one label each."""
    if x.dim() != 4 or x.shape[0] == 0:
        raise InputError(f"need a non-empty [N, C, H, W] batch of points, got {tuple(x.shape)}")
    if y.shape != (x.shape[0],):
        raise InputError(f"need one label per point: {x.shape[0]} points, labels "
                         f"{tuple(y.shape)}")


def summary_stats(values: np.ndarray) -> dict:
    """min / quartiles / max / mean / std of a 1-D array as plain floats."""
    v = np.asarray(values, dtype=np.float64)
    q = np.quantile(v, [0.0, 0.01, 0.25, 0.5, 0.75, 0.99, 1.0])
    return {"min": float(q[0]), "q01": float(q[1]), "q25": float(q[2]), "median": float(q[3]),
            "q75": float(q[4]), "q99": float(q[5]), "max": float(q[6]),
            "mean": float(v.mean()), "std": float(v.std())}


def as_list(values: Sequence | np.ndarray | torch.Tensor) -> list:
    if isinstance(values, torch.Tensor):
        return values.detach().cpu().tolist()
    return np.asarray(values).tolist()
