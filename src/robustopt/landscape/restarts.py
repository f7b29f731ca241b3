"""Experiment 2: the final PGD loss from many random starts on single test points.

The seed paper runs PGD from 10^5 uniformly random starts in the eps-ball of single
MNIST/CIFAR-10 test points and finds the final losses *concentrated*: the many local
maxima PGD reaches have similar loss values, with no outliers far above the rest, on
both standard and adversarially trained models (the loss is much lower on the latter).

The restarts of a point run as a stacked batch through the attack core's
:func:`~robustopt.attacks.core.perturb` (each restart is one row, ``track_best=False``:
the final iterate, as in the paper), in chunks of ``chunk`` rows (small chunks keep a
CPU's working set in cache: 256 rows ran 1.7x faster than 4,096 on the small CNN); the
final loss of every restart is then measured with one float32 forward pass. The loss
trajectories of the first ``trace`` restarts are recorded step by step as well (the
paper's Figure 1).
"""

from __future__ import annotations

import time

import numpy as np
import torch
from torch import nn

from ..attacks.core import default_step_size, eval_mode, loss_and_grad, perturb, prepare
from ..losses import LossFn, get_loss
from ..threat import ThreatModel
from .common import Progress, Result, check_points, make_generator, summary_stats


def final_losses(model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel,
                 loss_fn: LossFn, *, restarts: int, steps: int, step_size: float,
                 chunk: int = 256, generator: torch.Generator | None = None,
                 autocast: torch.dtype | None = None, progress: Progress | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Final PGD loss and correctness of ``restarts`` random starts around one point.

    ``x`` is ``[1, C, H, W]`` and ``y`` ``[1]``. Returns float32 ``[restarts]`` losses and
    bool ``[restarts]`` "still classified correctly". The model's mode is the caller's.
    """
    losses, correct = [], []
    done = 0
    t0 = time.monotonic()
    while done < restarts:
        r = min(chunk, restarts - done)
        xr = x.expand(r, *x.shape[1:])
        yr = y.expand(r)
        found = perturb(model, xr, yr, threat, loss_fn, steps=steps, step_size=step_size,
                        restarts=1, random_start=True, track_best=False, generator=generator,
                        autocast=autocast)
        loss, logits, _ = loss_and_grad(model, found.x_adv, yr, loss_fn, need_grad=False)
        losses.append(loss.float())
        correct.append(logits.argmax(1) == yr)
        done += r
        if progress is not None:
            elapsed = time.monotonic() - t0
            progress("message", {"message": f"restarts: {done}/{restarts} "
                                 f"({done / max(elapsed, 1e-9):.0f} restarts/s)",
                                 "event": "restarts", "done": done, "total": restarts})
    return torch.cat(losses), torch.cat(correct)


def loss_traces(model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel,
                loss_fn: LossFn, *, restarts: int, steps: int, step_size: float,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """The loss at every PGD iterate (start included) of ``restarts`` random starts.

    Returns ``[restarts, steps + 1]`` float32 for the single point ``x`` ``[1, C, H, W]``.
    """
    xr = x.expand(restarts, *x.shape[1:])
    yr = y.expand(restarts)
    cur = threat.random_start(xr, generator)
    out = torch.empty(restarts, steps + 1, device=x.device)
    for k in range(steps + 1):
        need = k < steps
        loss, _, grad = loss_and_grad(model, cur, yr, loss_fn, need_grad=need)
        out[:, k] = loss
        if need:
            cur = threat.step_(cur, xr, grad, step_size)
    return out


def restart_losses(model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel,
                   *, restarts: int = 1000, steps: int = 40, step_size: float | None = None,
                   loss: str = "ce", seed: int = 0, chunk: int = 256, trace: int = 20,
                   autocast: torch.dtype | None = None, progress: Progress | None = None
                   ) -> Result:
    """PGD-``steps`` from ``restarts`` random starts on each point of ``x`` (a few points).

    Arrays: ``final_loss`` [N, R] float32, ``final_correct`` [N, R] bool, ``clean_loss``
    [N], ``clean_correct`` [N], ``labels`` [N], ``trace`` [N, trace, steps + 1] (the loss
    along the first ``trace`` restarts; omitted when ``trace`` is 0). ``meta["points"]``
    holds per-point statistics of the final losses and the time spent; ``autocast``
    speeds up the search only, final losses are float32.
    """
    check_points(x, y)
    if restarts < 1 or steps < 1:
        raise ValueError(f"need restarts >= 1 and steps >= 1, got {restarts}, {steps}")
    loss_fn = get_loss(loss)
    if step_size is None:
        step_size = default_step_size(threat, steps)
    gen = make_generator(seed, x.device)
    finals, oks, traces, per_point = [], [], [], []
    with eval_mode(model):
        prepare(model, x, y)
        clean_loss, clean_logits, _ = loss_and_grad(model, x, y, loss_fn, need_grad=False)
        for i in range(x.shape[0]):
            xi, yi = x[i:i + 1].detach(), y[i:i + 1]
            t0 = time.monotonic()
            fl, ok = final_losses(model, xi, yi, threat, loss_fn, restarts=restarts,
                                  steps=steps, step_size=step_size, chunk=chunk,
                                  generator=gen, autocast=autocast, progress=progress)
            elapsed = time.monotonic() - t0
            if trace > 0:
                traces.append(loss_traces(model, xi, yi, threat, loss_fn,
                                          restarts=min(trace, restarts), steps=steps,
                                          step_size=step_size, generator=gen))
            finals.append(fl)
            oks.append(ok)
            f = fl.cpu().numpy()
            per_point.append({"clean_loss": float(clean_loss[i]),
                              "clean_correct": bool(clean_logits[i].argmax() == yi[0]),
                              "final_loss": summary_stats(f),
                              "misclassified_fraction": float((~ok).float().mean()),
                              "time_s": elapsed,
                              "restarts_per_s": restarts / max(elapsed, 1e-9)})
    arrays = {"final_loss": torch.stack(finals).cpu().numpy().astype(np.float32),
              "final_correct": torch.stack(oks).cpu().numpy(),
              "clean_loss": clean_loss.cpu().numpy(),
              "clean_correct": (clean_logits.argmax(1) == y).cpu().numpy(),
              "labels": y.cpu().numpy()}
    if traces:
        arrays["trace"] = torch.stack(traces).cpu().numpy()
    meta = {"settings": {"threat": threat.to_dict(), "restarts": restarts, "steps": steps,
                         "step_size": step_size, "loss": loss, "seed": seed, "chunk": chunk,
                         "trace": trace, "autocast": None if autocast is None else str(autocast)},
            "points": per_point}
    return Result("restarts", meta, arrays)
