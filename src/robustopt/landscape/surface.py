"""Experiment 3: the loss on the plane through a clean point and two PGD maxima.

Two PGD runs from different random starts give ``adv1`` and ``adv2`` around the same
test point ``x``. With ``d1 = adv1 - x`` and ``d2 = adv2 - x`` the experiment measures

* the angle between ``d1`` and ``d2`` (the seed paper finds the maxima far apart,
  at nearly orthogonal directions);
* ``L(x + l1 d1 + l2 d2)`` on a grid of ``(l1, l2)``: ``(0, 0)`` is ``x``, ``(1, 0)`` is
  ``adv1``, ``(0, 1)`` is ``adv2``;
* the loss on the segment ``(1 - s) adv1 + s adv2`` between the maxima (the grid's
  anti-diagonal ``l1 + l2 = 1``): the seed finds it clearly lower in the middle than at
  either end, so the maxima are distinct and the loss is not concave in the ball.

Grid points with ``l1 + l2 <= 1`` and ``l1, l2 >= 0`` are convex combinations of points
of the threat set, hence in it; others may leave the ball (``arrays["inside"]`` says
which) and, with ``clip``, are clipped to the [0, 1] image box before the model sees them.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..attacks.core import eval_mode
from ..attacks.pgd import pgd
from ..losses import get_loss
from ..threat import ThreatModel
from .common import Result, angle_degrees, batched_loss, check_points, make_generator


def plane_points(x: torch.Tensor, d1: torch.Tensor, d2: torch.Tensor, lam1: torch.Tensor,
                 lam2: torch.Tensor, *, clip: bool = True) -> torch.Tensor:
    """``x + lam1[j] d1 + lam2[i] d2`` for one point: shape ``[len(lam2), len(lam1), C, H, W]``.

    ``x``, ``d1``, ``d2`` are ``[C, H, W]``; row ``i`` varies ``lam2``, column ``j`` ``lam1``
    (the layout of an image with ``lam1`` on the horizontal axis).
    """
    a = lam1.to(x.dtype).view(1, -1, 1, 1, 1)
    b = lam2.to(x.dtype).view(-1, 1, 1, 1, 1)
    pts = x[None, None] + a * d1[None, None] + b * d2[None, None]
    return pts.clamp(0.0, 1.0) if clip else pts


def chord_gap(seg: np.ndarray, s: np.ndarray) -> np.ndarray:
    """How far each segment curve falls below the straight line joining its two ends.

    ``seg`` is ``[N, S]`` (loss at ``s``); returns ``[N]`` = ``max_s (chord(s) - seg(s))``.
    A concave function never falls below its chord, so a positive gap proves that the
    loss is not concave along the segment.
    """
    chord = seg[:, :1] * (1 - s)[None] + seg[:, -1:] * s[None]
    return (chord - seg).max(axis=1)


def loss_surface(model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel, *,
                 grid: int = 41, lam_min: float = 0.0, lam_max: float = 1.0,
                 segment: int = 51, steps: int = 40, step_size: float | None = None,
                 loss: str = "ce", seed: int = 0, clip: bool = True,
                 batch_size: int = 2048) -> Result:
    """Two PGD maxima per point (random starts from seeds ``seed`` and ``seed + 1``).

    Arrays: ``lam`` [G] (both axes), ``loss`` [N, G, G] (row = ``l2``, column = ``l1``),
    ``inside`` [N, G, G] bool (the grid point is in the threat set), ``s`` [S],
    ``segment_loss`` [N, S], ``angle_deg`` [N], ``labels`` [N], ``adv_loss`` [N, 2],
    ``delta_norm`` [N, 2] (the threat model's norm of ``d1``, ``d2``), ``random_angle_deg``
    [N] (the angle between two uniform random points of the set, minus ``x``: the baseline
    that the box alone produces).
    ``meta["summary"]`` per point: angle, end losses, the lowest and middle segment
    losses, and the chord gap (see :func:`chord_gap`).
    """
    check_points(x, y)
    if grid < 2 or segment < 3:
        raise ValueError(f"need grid >= 2 and segment >= 3 points, got {grid}, {segment}")
    if not lam_max > lam_min:
        raise ValueError(f"need lam_max > lam_min, got {lam_min}, {lam_max}")
    loss_fn = get_loss(loss)
    lam = torch.linspace(lam_min, lam_max, grid, device=x.device)
    s = torch.linspace(0.0, 1.0, segment, device=x.device)
    surfaces, insides, segs, adv_losses = [], [], [], []
    with eval_mode(model):
        a1 = pgd(model, x, y, threat, steps=steps, step_size=step_size, loss=loss,
                 generator=make_generator(seed, x.device))
        a2 = pgd(model, x, y, threat, steps=steps, step_size=step_size, loss=loss,
                 generator=make_generator(seed + 1, x.device))
        d1, d2 = a1.x_adv - x, a2.x_adv - x
        for i in range(x.shape[0]):
            pts = plane_points(x[i], d1[i], d2[i], lam, lam, clip=clip)
            flat = pts.reshape(grid * grid, *x.shape[1:])
            li, _ = batched_loss(model, flat, y[i].expand(grid * grid), loss_fn,
                                 batch_size=batch_size)
            inside = threat.contains(flat, x[i:i + 1].expand_as(flat))
            surfaces.append(li.view(grid, grid))
            insides.append(inside.view(grid, grid))
            seg_pts = x[i][None] + (1 - s).view(-1, 1, 1, 1) * d1[i] + s.view(-1, 1, 1, 1) * d2[i]
            sl, _ = batched_loss(model, seg_pts, y[i].expand(segment), loss_fn,
                                 batch_size=batch_size)
            segs.append(sl)
        adv_losses = torch.stack([a1.loss, a2.loss], dim=1)
    angle = angle_degrees(d1, d2)
    # baseline: two uniform random points of the set. On images with many pixels at 0 or 1
    # the box cuts the ball to one side there, so even random deltas are far from 90 deg.
    r1 = threat.random_start(x, make_generator(seed + 1000, x.device)) - x
    r2 = threat.random_start(x, make_generator(seed + 1001, x.device)) - x
    random_angle = angle_degrees(r1, r2)
    norms = torch.stack([threat.distance(a1.x_adv, x), threat.distance(a2.x_adv, x)], dim=1)
    arrays = {"lam": lam.cpu().numpy(), "loss": torch.stack(surfaces).cpu().numpy(),
              "inside": torch.stack(insides).cpu().numpy(), "s": s.cpu().numpy(),
              "segment_loss": torch.stack(segs).cpu().numpy(),
              "angle_deg": angle.cpu().numpy(), "random_angle_deg": random_angle.cpu().numpy(),
              "labels": y.cpu().numpy(),
              "adv_loss": adv_losses.cpu().numpy(), "delta_norm": norms.cpu().numpy()}
    seg = arrays["segment_loss"]
    gaps = chord_gap(seg, arrays["s"])
    points = [{"angle_deg": float(arrays["angle_deg"][i]),
               "random_angle_deg": float(arrays["random_angle_deg"][i]),
               "end_losses": [float(seg[i, 0]), float(seg[i, -1])],
               "middle_loss": float(seg[i, segment // 2]),
               "min_segment_loss": float(seg[i].min()),
               "chord_gap": float(gaps[i]),
               "middle_below_both_ends": bool(seg[i, segment // 2] < min(seg[i, 0], seg[i, -1]))}
              for i in range(x.shape[0])]
    meta = {"settings": {"threat": threat.to_dict(), "grid": grid, "lam_min": lam_min,
                         "lam_max": lam_max, "segment": segment, "steps": steps,
                         "step_size": step_size, "loss": loss, "seeds": [seed, seed + 1],
                         "clip": clip},
            "summary": {"angle_deg_mean": float(np.nanmean(arrays["angle_deg"])),
                        "middle_below_both_ends": int(sum(p["middle_below_both_ends"]
                                                          for p in points)),
                        "n": int(x.shape[0])},
            "points": points}
    return Result("surface", meta, arrays)
